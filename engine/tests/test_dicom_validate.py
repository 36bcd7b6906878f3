"""`medgen validate`: passes what the engine writes for every modality, and fails each broken rule.

Synthetic series are made with the engine's writer from pydicom's real test files (no diffusion,
so these run in seconds); one test validates the output of a real `medgen inpaint` run.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest

from testfiles import dicom_testfile as data_file, write_labelmap_like
from medgen.dicom.dciodvfy import is_available as dciodvfy_available
from medgen.dicom.provenance import PROVENANCE_SCHEMA
from medgen.dicom.validate import CheckStatus, validate_paths
from medgen.dicom.writer import SyntheticSeriesWriter
from medgen.imaging.read import read_volume

MASK_DILATE_MM = 2.0


def validate_main(argv: list[str]) -> int:
    """`medgen validate ARGS` exactly as a user runs it (exit codes included)."""
    from medgen.cli import main

    return main(["validate", *argv])


# ---------------------------------------------------------------------- building synthetic series


@dataclass
class SyntheticCase:
    """A source scan, its mask, and one synthetic variant written by the engine's writer."""

    source: Path
    mask_path: Path
    out: Path  # like `medgen inpaint --out`: provenance.json here, the series in variant-01/
    variant_dir: Path
    files: list[Path]
    volume: object
    masks: dict[int, np.ndarray]


def make_classic_series(folder: Path, n_slices: int = 4, *, patient_id: str | None = None,
                        study_uid: str | None = None) -> Path:
    """A classic CT series of n slices built from CT_small (new series, positions 5 mm apart)."""
    folder.mkdir(parents=True)
    template = pydicom.dcmread(data_file("CT_small.dcm"))
    series_uid = pydicom.uid.generate_uid()
    for k in range(n_slices):
        ds = template.copy()
        ds.SeriesInstanceUID = series_uid
        if study_uid:
            ds.StudyInstanceUID = study_uid
        if patient_id:
            ds.PatientID = patient_id
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(v) for v in template.ImagePositionPatient[:2]] + [float(k) * 5.0]
        ds.save_as(folder / f"slice{k}.dcm")
    return folder


def write_synthetic_case(tmp_path: Path, source: Path, slices: list[int], *, only_modified: bool = False,
                         prompt: str = "hypodense lesion") -> SyntheticCase:
    """Inpaint-like output without diffusion: the masked pixels set to the stored minimum."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    volume = read_volume(source)
    rows, cols = volume.shape2d
    rr, cc = np.mgrid[:rows, :cols]
    disk = (rr - rows // 2) ** 2 + (cc - cols // 2) ** 2 <= max(3, min(rows, cols) // 8) ** 2
    mask = np.zeros((volume.num_slices, rows, cols), bool)
    pixels = volume.pixels.copy()
    for k in slices:
        mask[k] = disk
        pixels[k][disk] = volume.pixels[k].min()
    mask_path = write_labelmap_like(volume, mask, tmp_path / "mask.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    provenance = {
        "schema": PROVENANCE_SCHEMA,
        "parameters": {"prompt": prompt, "mask": str(mask_path), "segment": None, "label": None,
                       "mask_dilate_mm": MASK_DILATE_MM, "slices_inpainted": slices},
        "variants": [{"index": 0, "seed": 7}],
    }
    (out / "provenance.json").write_text(json.dumps(provenance))
    writer = SyntheticSeriesWriter(
        volume,
        series_description=f"SYNTHETIC {prompt}",
        derivation_description=f"Synthetic inpainting; prompt: {prompt!r}; model: tiny; adapters: none; seed: 7",
        provenance=provenance,
        software_version="0.1.0",
        model_name="tiny-test-model",
    )
    files = writer.write(pixels, out / "variant-01", modified_slices=slices, only_modified=only_modified)
    return SyntheticCase(Path(source), mask_path, out, out / "variant-01", files, volume,
                         {k: mask[k] for k in slices})


# (test file or "series", slices to inpaint)
MODALITY_CASES = {
    "CT": ("CT_small.dcm", [0]),
    "CT-series": ("series", [1, 2]),
    "CT-jpeg2000": ("693_J2KR.dcm", [0]),
    "MR": ("MR_small.dcm", [0]),
    "CR-monochrome1": ("RG1_UNCI.dcm", [0]),
    "US-rgb": ("US1_UNCI.dcm", [0]),
    "US-jpeg-lossless": ("JPGLosslessP14SV1_1s_1f_8b.dcm", [0]),
    "enhanced-MR": ("emri_small.dcm", [3, 4]),
    "enhanced-CT": ("eCT_Supplemental.dcm", [1]),
}


def _source(tmp_path: Path, name: str) -> Path:
    return make_classic_series(tmp_path / "source") if name == "series" else data_file(name)


@pytest.fixture
def ct_case(tmp_path) -> SyntheticCase:
    return write_synthetic_case(tmp_path, make_classic_series(tmp_path / "source"), [1, 2])


def _statuses(report, check: str) -> set[CheckStatus]:
    return {c.status for f in report.files for c in f.checks if c.check == check}


# ---------------------------------------------------------------------- what the engine writes passes


@pytest.mark.parametrize("case", sorted(MODALITY_CASES))
def test_written_series_passes_every_rule_for_each_modality(case, tmp_path):
    name, slices = MODALITY_CASES[case]
    written = write_synthetic_case(tmp_path, _source(tmp_path, name), slices)
    report = validate_paths([written.out], written.source)
    assert report.ok, report.table()
    assert len(report.files) == len(written.files)
    for check in ("synthetic-data", "image-type", "series-description", "contributing-equipment",
                  "source-reference", "derivation", "provenance", "file-meta", "uids", "study-patient",
                  "outside-mask"):
        assert _statuses(report, check) == {CheckStatus.PASS}, (check, report.table())
    if dciodvfy_available():
        assert _statuses(report, "dciodvfy") == {CheckStatus.PASS}, report.table()
    assert [p.name for p in report.skipped] == ["provenance.json"] or "provenance.json" in {
        p.name for p in report.skipped}


def test_only_modified_series_passes(tmp_path):
    written = write_synthetic_case(tmp_path, make_classic_series(tmp_path / "source"), [2], only_modified=True)
    report = validate_paths([written.variant_dir], written.source)
    assert report.ok and len(report.files) == 1, report.table()


# ---------------------------------------------------------------------- each broken rule fails


def _remove_equipment(ds):
    del ds.ContributingEquipmentSequence


def _wrong_source_purpose(ds):
    ds.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue = "121320"


def _no_seed(ds):
    ds.DerivationDescription = "prompt: 'x'; model: m; adapters: none"


def _no_provenance(ds):
    for tag in [t for t in ds.keys() if t.group == 0x0077]:
        del ds[tag]


MUTATIONS = {
    "synthetic-data": lambda ds: setattr(ds, "SyntheticData", "NO"),
    "image-type": lambda ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "AXIAL"]),
    "series-description": lambda ds: setattr(ds, "SeriesDescription", "liver lesion"),
    "contributing-equipment": _remove_equipment,
    "source-reference": _wrong_source_purpose,
    "derivation": _no_seed,
    "provenance": _no_provenance,
    "file-meta": lambda ds: setattr(ds.file_meta, "MediaStorageSOPInstanceUID", pydicom.uid.generate_uid()),
    "study-patient": lambda ds: setattr(ds, "PatientID", "SOMEONE-ELSE"),
}


@pytest.mark.parametrize("check", sorted(MUTATIONS))
def test_each_broken_rule_fails_its_check(check, ct_case, capsys):
    target = ct_case.files[1]
    ds = pydicom.dcmread(target)
    MUTATIONS[check](ds)
    ds.save_as(target)
    report = validate_paths([ct_case.out], ct_case.source, run_dciodvfy=False)
    assert not report.ok
    broken = next(f for f in report.files if f.path == target.resolve())
    assert CheckStatus.FAIL in {c.status for c in broken.checks if c.check == check}, report.table()
    assert all(f.status is not CheckStatus.FAIL for f in report.files if f is not broken), report.table()
    assert validate_main([str(ct_case.out), "--source", str(ct_case.source), "--no-dciodvfy"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and check in out


def test_source_uids_reused_fail(ct_case):
    source_ds = pydicom.dcmread(next(ct_case.source.iterdir()))
    ds = pydicom.dcmread(ct_case.files[0])
    ds.SeriesInstanceUID = source_ds.SeriesInstanceUID
    ds.save_as(ct_case.files[0])
    report = validate_paths([ct_case.out], ct_case.source, run_dciodvfy=False)
    messages = [c.message for f in report.files for c in f.checks if c.status is CheckStatus.FAIL]
    assert any("reused from the source" in m for m in messages), report.table()


def test_a_copied_variant_fails_uniqueness(ct_case):
    shutil.copytree(ct_case.variant_dir, ct_case.out / "variant-02")
    report = validate_paths([ct_case.out], run_dciodvfy=False)
    assert not report.ok
    failed = [f for f in report.files if any(c.check == "uids" and c.status is CheckStatus.FAIL for c in f.checks)]
    assert len(failed) == 2 * len(ct_case.files), report.table()


def test_study_must_agree_within_a_series(ct_case):
    ds = pydicom.dcmread(ct_case.files[3])
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(ct_case.files[3])
    report = validate_paths([ct_case.variant_dir], run_dciodvfy=False)  # no source: the set check alone
    assert CheckStatus.FAIL in _statuses(report, "study-patient"), report.table()


# ---------------------------------------------------------------------- outside-mask identity


def _set_pixel(path: Path, row: int, col: int) -> None:
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.copy()
    pixels[row, col] = pixels[row, col] + 1 if pixels[row, col] < 1000 else pixels[row, col] - 1
    ds.PixelData = pixels.tobytes()
    ds.save_as(path)


def test_pixel_changed_outside_the_dilated_mask_fails(ct_case):
    _set_pixel(ct_case.files[1], 2, 2)  # a corner, far from the central disk
    report = validate_paths([ct_case.out], ct_case.source, run_dciodvfy=False)
    failures = [c for f in report.files for c in f.checks if c.check == "outside-mask" and c.status is CheckStatus.FAIL]
    assert len(failures) == 1 and "slice 1: 1 pixel" in failures[0].message, report.table()


def test_pixel_changed_on_an_untouched_slice_fails(ct_case):
    rows, cols = ct_case.volume.shape2d
    _set_pixel(ct_case.files[0], rows // 2, cols // 2)  # slice 0 was not inpainted: even the centre is off limits
    report = validate_paths([ct_case.out], ct_case.source, run_dciodvfy=False)
    assert CheckStatus.FAIL in _statuses(report, "outside-mask"), report.table()


def test_pixel_changed_inside_the_mask_passes(ct_case):
    rows, cols = ct_case.volume.shape2d
    _set_pixel(ct_case.files[2], rows // 2, cols // 2)
    assert validate_paths([ct_case.out], ct_case.source, run_dciodvfy=False).ok


def test_moved_mask_warns_and_can_be_given(ct_case, tmp_path):
    moved = tmp_path / "moved-mask.nii.gz"
    ct_case.mask_path.rename(moved)
    report = validate_paths([ct_case.out], ct_case.source, run_dciodvfy=False)
    assert report.ok and _statuses(report, "outside-mask") == {CheckStatus.WARN}, report.table()
    report = validate_paths([ct_case.out], ct_case.source, mask=moved, run_dciodvfy=False)
    assert _statuses(report, "outside-mask") == {CheckStatus.PASS}, report.table()


# ---------------------------------------------------------------------- dciodvfy and the command


@pytest.mark.skipif(not dciodvfy_available(), reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_new_dciodvfy_error_fails_but_inherited_ones_do_not(ct_case):
    ds = pydicom.dcmread(ct_case.files[0])
    ds.Modality = ""  # Type 1 attribute emptied: an error the source does not have
    ds.save_as(ct_case.files[0])
    report = validate_paths([ct_case.out], ct_case.source)
    broken = next(f for f in report.files if f.path == ct_case.files[0].resolve())
    assert [c.status for c in broken.checks if c.check == "dciodvfy"] == [CheckStatus.FAIL], report.table()
    others = [f for f in report.files if f is not broken]
    assert all(f.status is CheckStatus.PASS for f in others), report.table()


def test_command_prints_a_table_and_exits_zero_on_success(ct_case, capsys):
    assert validate_main([str(ct_case.out), "--source", str(ct_case.source)]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == len(ct_case.files)
    assert f"checked {len(ct_case.files)} file(s): {len(ct_case.files)} passed" in out


def test_command_refuses_a_missing_path(tmp_path, capsys):
    assert validate_main([str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_an_acquired_scan_fails(capsys):
    assert validate_main([str(data_file("CT_small.dcm")), "--no-dciodvfy"]) == 1
    assert "synthetic-data" in capsys.readouterr().out


def test_damaged_file_fails_as_unreadable(ct_case):
    ct_case.files[0].write_bytes(ct_case.files[0].read_bytes()[:200])
    report = validate_paths([ct_case.variant_dir], run_dciodvfy=False)
    assert CheckStatus.FAIL in _statuses(report, "readable"), report.table()


# ---------------------------------------------------------------------- a real inpainting run


def test_validate_passes_on_a_real_inpaint_run(tiny_model_dir, tmp_path):
    from medgen.cli import main

    source = make_classic_series(tmp_path / "source")
    volume = read_volume(source)
    rows, cols = volume.shape2d
    rr, cc = np.mgrid[:rows, :cols]
    mask = np.zeros((volume.num_slices, rows, cols), bool)
    mask[1:3] = (rr - rows // 2) ** 2 + (cc - cols // 2) ** 2 <= 12**2
    mask_path = write_labelmap_like(volume, mask, tmp_path / "mask.nii.gz")
    out = tmp_path / "out"
    assert main(["inpaint", str(source), "--mask", str(mask_path), "--all-slices", "--prompt", "cyst",
                 "--model", str(tiny_model_dir), "--variants", "2", "--seed", "1", "--steps", "2",
                 "--out", str(out)]) == 0
    report = validate_paths([out], source)
    assert report.ok, report.table()
    assert len(report.files) == 2 * volume.num_slices
    assert _statuses(report, "outside-mask") == {CheckStatus.PASS}, report.table()
