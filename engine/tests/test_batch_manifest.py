"""Manifest checks of `medgen batch`: every row is read and checked before any work, bad rows are listed
with their line numbers and reasons, and the output folder is not touched. No model is loaded."""

import json
import re
from pathlib import Path

import pytest

from testfiles import dicom_testfile
from medgen.batch.manifest import ManifestError, derived_seed, read_manifest
from medgen.batch.progress import BatchProgress
from medgen.cli import main
from medgen.errors import InputError


@pytest.fixture
def files(tmp_path) -> Path:
    """A folder with a real DICOM input and a (not necessarily matching) mask file beside the manifest."""
    (tmp_path / "ct.dcm").write_bytes(dicom_testfile("CT_small.dcm").read_bytes())
    (tmp_path / "mask.nii.gz").write_bytes(b"not read by the manifest check")
    return tmp_path


def write_csv(folder: Path, text: str) -> Path:
    path = folder / "manifest.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_rows_become_requests_with_paths_from_the_manifest_folder(files):
    manifest = write_csv(
        files,
        "id,input,mask,prompt,slice,variants,steps,guidance,seg,negative_prompt,adapter\n"
        "a,ct.dcm,mask.nii.gz,cyst,3 4,2,5,1.5,yes,artifact,\n"
        "b,ct.dcm,mask.nii.gz,\"lesion, 2 cm\",,,,,no,,\n",
    )
    checked = read_manifest(manifest)
    assert checked.problems == []
    a, b = checked.rows
    assert (a.id, a.line, b.id, b.line) == ("a", 2, "b", 3)
    assert a.options["input"] == files / "ct.dcm" and a.options["mask"] == files / "mask.nii.gz"
    assert a.options["slices"] == [3, 4] and a.options["num_variants"] == 2
    assert a.options["num_inference_steps"] == 5 and a.options["guidance_scale"] == 1.5
    assert a.options["write_seg"] is True and a.options["negative_prompt"] == "artifact"
    assert b.options["prompt"] == "lesion, 2 cm" and b.options["write_seg"] is False
    assert "adapters" not in b.options and "slices" not in b.options  # empty cells are unset
    # a row without a seed gets one fixed by its id, so every run of it makes the same images
    assert b.options["seed"] == derived_seed("b") and derived_seed("a") != derived_seed("b")


def test_modality_columns_state_a_sources_modality_or_force_it_as_the_inpaint_options_do(files):
    manifest = write_csv(
        files,
        "id,input,mask,prompt,modality,force-modality\n"
        "t1,ct.dcm,mask.nii.gz,cyst,MR,\n"
        "us,ct.dcm,mask.nii.gz,cyst,,yes\n"
        "bad,ct.dcm,mask.nii.gz,cyst,M R,\n",
    )
    checked = read_manifest(manifest)
    t1, us = checked.rows
    assert t1.options["source_modality"] == "MR" and us.options["force_modality"] is True
    assert [(p.line, "--modality" in p.reason) for p in checked.problems] == [(4, True)]


def test_every_bad_row_is_listed_with_its_line_and_all_its_reasons(files):
    manifest = write_csv(
        files,
        "input,mask,prompt,steps,variants\n"
        "ct.dcm,mask.nii.gz,ok,2,1\n"
        "missing.dcm,mask.nii.gz,,abc,1\n"
        "ct.dcm,mask.nii.gz,x,2,0\n"
        "ct.dcm,mask.nii.gz,ok,2,1\n",
    )
    checked = read_manifest(manifest)
    assert len(checked.rows) == 0  # line 5 repeats line 2: one id (the hash of the row), two rows
    by_line = {p.line: p.reason for p in checked.problems}
    assert sorted(by_line) == [2, 3, 4, 5]
    assert "no such file or folder" in by_line[3] and "'prompt' is required" in by_line[3]
    assert "steps: expected an integer, got 'abc'" in by_line[3]
    assert "--variants must be in [1, 99], got 0" in by_line[4]
    assert "also on line(s) [5]" in by_line[2] and "also on line(s) [2]" in by_line[5]
    error = ManifestError(checked.path, checked.problems, checked.total)
    lines = str(error).splitlines()
    assert lines[0].endswith("4 of 4 rows are bad (fix them, or pass --skip-bad-rows to run the rest):")
    assert lines[2].startswith(f"{manifest}:3: ")


def test_jsonl_rows_take_lists_and_name_their_line(files):
    path = files / "manifest.jsonl"
    rows = [
        {"id": "x", "input": "ct.dcm", "mask": "mask.nii.gz", "prompt": "cyst", "slice": [0], "adapters": []},
        "not an object",
        {"id": "y", "input": "ct.dcm", "mask": "mask.nii.gz", "prompt": "cyst", "label": True},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n{oops\n")
    checked = read_manifest(path)
    assert [r.id for r in checked.rows] == ["x"] and checked.rows[0].options["slices"] == [0]
    assert [(p.line, p.reason.split(":")[0]) for p in checked.problems] == [
        (2, "a row is a JSON object, got str"), (4, "label"), (5, "not JSON")
    ]


def test_row_ids_are_given_or_a_stable_hash_of_the_row(files):
    text = "input,mask,prompt\nct.dcm,mask.nii.gz,cyst\nct.dcm,mask.nii.gz,lesion\n"
    first = [r.id for r in read_manifest(write_csv(files, text)).rows]
    again = [r.id for r in read_manifest(write_csv(files, text)).rows]
    assert first == again and len(set(first)) == 2 and all(len(i) == 16 for i in first)
    bad = read_manifest(write_csv(files, "id,input,mask,prompt\n../up,ct.dcm,mask.nii.gz,cyst\n"))
    assert "id '../up' must be" in bad.problems[0].reason


@pytest.mark.parametrize(
    "header, message",
    [
        ("input,mask,prompt,model", "column 'model' is set for the whole run (medgen batch --model), not per row"),
        ("input,mask,prompt,stepz", "unknown column 'stepz'"),
        ("input,mask,prompt,steps,Steps", "column 'steps' appears twice"),
    ],
)
def test_a_bad_header_refuses_the_whole_file(files, header, message):
    with pytest.raises(InputError, match=re.escape(message)):
        read_manifest(write_csv(files, header + "\n"))


def test_cli_bad_manifest_exits_2_and_writes_nothing(files, capsys):
    manifest = write_csv(files, "input,mask,prompt,strength\nct.dcm,mask.nii.gz,cyst,1.5\n")
    out = files / "out"
    assert main(["batch", str(manifest), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1 of 1 rows are bad" in err and f"{manifest}:2: --strength must be in (0, 1], got 1.5" in err
    assert not out.exists()


def test_cli_refuses_a_folder_that_is_not_a_batch_output(files, capsys):
    manifest = write_csv(files, "input,mask,prompt\nct.dcm,mask.nii.gz,cyst\n")
    (files / "taken").mkdir()
    (files / "taken" / "notes.txt").write_text("mine")
    assert main(["batch", str(manifest), "--out", str(files / "taken")]) == 2
    assert "is not empty and holds no batch run" in capsys.readouterr().err
    assert sorted(p.name for p in (files / "taken").iterdir()) == ["notes.txt"]


def test_progress_line_counts_rows_and_estimates_time_left(capsys):
    import io

    stream = io.StringIO()
    progress = BatchProgress(total=10, already_done=4, stream=stream, every_s=0)
    progress.start -= 60  # one minute into the run
    progress.row_done()
    progress.row_failed()
    last = stream.getvalue().splitlines()[-1]
    # 2 rows finished in this run's minute: 2 rows/min; 4 left -> 2 minutes
    assert last.startswith("batch: 5/10 done, 1 failed, 4 left | 2.0 rows/min | ETA 0:02:00"), last
