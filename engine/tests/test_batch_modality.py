"""A batch row whose source the model does not cover (an ultrasound with the demo model, which covers
CT, MR and CR/DX) is refused with the other bad rows before any work, as `medgen inpaint` refuses it,
not as a failure after the other rows ran."""

import json
from pathlib import Path

import numpy as np
import pytest

from testfiles import dicom_testfile, write_labelmap_like
from medgen.batch.manifest import read_manifest
from medgen.batch.modality import modality_problems
from medgen.cli import main
from medgen.imaging.read import read_volume
from medgen.phantom.model import demo_model_path

US_FILE = "US1_UNCR.dcm"  # pydicom's ultrasound (RGB, uncompressed)


def centre_disk(volume, radius=6) -> np.ndarray:
    depth, rows, cols = volume.pixels.shape[:3]
    rr, cc = np.mgrid[:rows, :cols]
    mask = np.zeros((depth, rows, cols), np.uint8)
    mask[0] = (rr - rows // 2) ** 2 + (cc - cols // 2) ** 2 <= radius**2
    return mask


@pytest.fixture
def manifest(tmp_path) -> Path:
    """Line 2: a CT row the demo model covers; line 3: an ultrasound row; line 4: the same ultrasound,
    forced."""
    ct, us = dicom_testfile("CT_small.dcm"), dicom_testfile(US_FILE)
    for name, source in (("ct", ct), ("us", us)):
        volume = read_volume(source)
        write_labelmap_like(volume, centre_disk(volume), tmp_path / f"{name}-mask.nii.gz")
    path = tmp_path / "manifest.csv"
    path.write_text(
        "id,input,mask,prompt,seed,steps,guidance,force-modality\n"
        f"ct-1,{ct},ct-mask.nii.gz,hypodense lesion,1,1,1,\n"
        f"us-1,{us},us-mask.nii.gz,cyst,2,1,1,\n"
        f"us-forced,{us},us-mask.nii.gz,cyst,3,1,1,yes\n",
        encoding="utf-8",
    )
    return path


def test_only_the_unforced_ultrasound_row_is_refused_by_the_check(manifest):
    rows = read_manifest(manifest).rows
    assert [row.id for row in rows] == ["ct-1", "us-1", "us-forced"]  # the manifest itself is fine
    problems = modality_problems(rows, demo_model_path())
    assert [(p.line, p.row_id) for p in problems] == [(3, "us-1")]
    assert "this source is US" in problems[0].reason and "force-modality" in problems[0].reason


def test_a_modality_column_is_checked_like_the_sources_own(manifest, tmp_path):
    """A row that states its source's modality (``modality``) is checked by that statement."""
    text = manifest.read_text().splitlines()
    stated = tmp_path / "stated.csv"
    stated.write_text("\n".join([text[0] + ",modality", text[1] + ",US", text[2] + ",MR"]) + "\n")
    problems = modality_problems(read_manifest(stated).rows, demo_model_path())
    assert [(p.line, p.row_id) for p in problems] == [(2, "ct-1")]


def test_batch_refuses_the_row_before_any_weight_loads(manifest, tmp_path, capsys, monkeypatch):
    from medgen.generate import models

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the rows were checked")

    monkeypatch.setattr(models, "load_model", no_load)
    out = tmp_path / "out"
    assert main(["batch", str(manifest), "--out", str(out), "--model", "demo", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "1 of 3 rows are bad" in err
    assert f"{manifest}:3: " in err and "this source is US" in err
    assert not out.exists()


def test_skip_bad_rows_runs_the_others_and_lists_the_refused_row_as_invalid(manifest, tmp_path):
    manifest.write_text("\n".join(manifest.read_text().splitlines()[:3]) + "\n")  # ct-1 and us-1
    out = tmp_path / "out"
    code = main(["batch", str(manifest), "--out", str(out), "--model", "demo", "--device", "cpu",
                 "--skip-bad-rows"])
    assert code == 1  # a bad row was skipped
    failures = [json.loads(line) for line in (out / "failed.jsonl").open()]
    assert [(f["row_id"], f["kind"], f["manifest_line"], f["attempts"]) for f in failures] == [("us-1", "invalid", 3, 0)]
    assert "this source is US" in failures[0]["error"]
    assert sorted(p.name for p in (out / "rows").iterdir()) == ["ct-1"]
