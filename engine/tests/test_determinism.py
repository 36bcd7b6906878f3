"""The same seed and inputs write the same bytes, in every format the engine writes.

Each test runs a command twice, more than a second apart (NRRD writers and DICOM libraries like to
stamp the time), from two working folders laid out alike, and compares every file byte for byte.
With SOURCE_DATE_EPOCH set nothing may differ; without it, only the stated creation timestamps may
(medgen.reproducible). Runs use the shipped demo model with 2 steps: fast, and real weights.
"""

import json
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

from medgen.cli import main

PAUSE_S = 1.1  # longer than the one-second resolution of the clocks files used to carry
STATED_DICOM_TIMESTAMPS = {
    "InstanceCreationDate", "InstanceCreationTime", "SeriesDate", "SeriesTime", "ContentDate", "ContentTime",
    "ContributionDateTime",
}
STATED_JSON_FIELDS = {"created_utc"}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _run_twice(tmp_path: Path, monkeypatch, argv: list[str]) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Run `medgen ARGV` in tmp/a and, a moment later, in tmp/b; the outputs under each, by relative path."""
    outputs = []
    for name in ("a", "b"):
        work = tmp_path / name
        work.mkdir()
        monkeypatch.chdir(work)
        assert main(argv) == 0
        outputs.append(_files(work))
        time.sleep(PAUSE_S)
    return outputs[0], outputs[1]


def _assert_identical(first: dict[str, bytes], second: dict[str, bytes], suffixes: tuple[str, ...]) -> None:
    assert first.keys() == second.keys()
    assert any(name.endswith(suffixes) for name in first), f"no {suffixes} file written: {sorted(first)}"
    different = [name for name in first if first[name] != second[name]]
    assert not different, f"files that differ between two identical runs: {different}"


def _without_stated_fields(name: str, data: bytes):
    """What must be equal when SOURCE_DATE_EPOCH is not set: everything but the creation timestamps."""
    if name.endswith(".dcm"):
        from io import BytesIO

        ds = pydicom.dcmread(BytesIO(data))

        def strip(dataset):
            for element in list(dataset):
                if element.keyword in STATED_DICOM_TIMESTAMPS:
                    del dataset[element.tag]
                elif element.VR == "SQ":
                    for item in element.value:
                        strip(item)

        strip(ds)
        return [(e.tag, _json_without_stated_fields(e.value)) for e in ds.iterall() if e.VR != "SQ"]
    if name.endswith(".json"):
        return _json_without_stated_fields(data)
    return data


def _json_without_stated_fields(value):
    """A provenance record (a .json file, or the private block that carries it) minus its timestamp."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if not isinstance(text, str) or '"created_utc"' not in text:
        return value
    record = json.loads(text.rstrip("\x00 "))
    return {k: v for k, v in record.items() if k not in STATED_JSON_FIELDS}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A small phantom CT (healthy twin to inpaint into) with its lesion mask."""
    from medgen.phantom.cases import make_case
    from medgen.phantom.series import write_case

    case = make_case((7, 0), "cyst", case_id="case-001", num_slices=4)
    return write_case(case, tmp_path_factory.mktemp("phantom") / "case")


def _inpaint_argv(input_path, mask_path, *extra) -> list[str]:
    return ["inpaint", str(input_path), "--mask", str(mask_path), "--all-slices", "--prompt", "hypodense cyst",
            "--seed", "3", "--steps", "2", "--device", "cpu", "--out", "out", *extra]


def test_phantom_make_is_byte_identical_without_any_setting(tmp_path, monkeypatch):
    """DICOM CT, DICOM SEG, .seg.nrrd and JSON of the phantom depend on the seed alone."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    first, second = _run_twice(tmp_path, monkeypatch, ["phantom", "make", "--out", "cases", "--cases", "1",
                                                        "--slices", "3", "--seed", "5"])
    _assert_identical(first, second, (".dcm", ".seg.nrrd", ".json"))


def test_inpaint_dicom_series_seg_provenance_and_preview(tmp_path, monkeypatch, phantom):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    first, second = _run_twice(tmp_path, monkeypatch, _inpaint_argv(phantom.healthy_dir, phantom.seg_nrrd, "--seg"))
    _assert_identical(first, second, (".dcm", ".json", ".png"))
    assert any("-seg" in name for name in first), sorted(first)


def test_without_source_date_epoch_only_the_stated_timestamps_differ(tmp_path, monkeypatch, phantom):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    first, second = _run_twice(tmp_path, monkeypatch, _inpaint_argv(phantom.healthy_dir, phantom.seg_nrrd))
    assert first.keys() == second.keys()
    for name in first:
        assert _without_stated_fields(name, first[name]) == _without_stated_fields(name, second[name]), name
    uids = {pydicom.dcmread(tmp_path / side / name).SOPInstanceUID for side in "ab" for name in first
            if name.endswith(".dcm")}
    assert len(uids) == sum(name.endswith(".dcm") for name in first)  # same UIDs in both runs


@pytest.fixture(scope="module")
def volume_files(tmp_path_factory, phantom):
    """The phantom as a gzipped NIfTI, an NRRD and a PNG slice, with masks in the same formats."""
    folder = tmp_path_factory.mktemp("volumes")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(phantom.healthy_dir)))
    image = reader.Execute()
    mask = sitk.Cast(sitk.ReadImage(str(phantom.seg_nrrd)) > 0, sitk.sitkUInt8)
    mask.CopyInformation(image)
    for suffix in (".nii.gz", ".nrrd"):
        sitk.WriteImage(image, str(folder / f"ct{suffix}"))
        sitk.WriteImage(mask, str(folder / f"mask{suffix}"))
    hu = sitk.GetArrayFromImage(image)
    labels = sitk.GetArrayFromImage(mask)
    k = int(np.argmax(labels.reshape(labels.shape[0], -1).sum(axis=1)))
    Image.fromarray(np.clip((hu[k] + 160) / 400 * 255, 0, 255).astype(np.uint8)).save(folder / "slice.png")
    Image.fromarray((labels[k] > 0).astype(np.uint8) * 255).save(folder / "slice-mask.png")
    return folder


@pytest.mark.parametrize("name, mask, extra, suffixes", [
    ("ct.nii.gz", "mask.nii.gz", ("--window", "soft_tissue", "--dicom"), (".nii.gz", ".dcm", ".json", ".png")),
    ("ct.nrrd", "mask.nrrd", ("--window", "soft_tissue"), (".nrrd", ".json", ".png")),
    ("slice.png", "slice-mask.png", (), (".png", ".json")),
])
def test_inpaint_writes_nifti_nrrd_and_png_back_byte_identical(tmp_path, monkeypatch, volume_files, name, mask,
                                                                extra, suffixes):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    argv = _inpaint_argv(volume_files / name, volume_files / mask, *extra)
    first, second = _run_twice(tmp_path, monkeypatch, argv)
    _assert_identical(first, second, suffixes)


def test_create_tiny_writes_the_same_model_for_the_same_seed(tmp_path, monkeypatch):
    first, second = _run_twice(tmp_path, monkeypatch, ["model", "create-tiny", "tiny", "--seed", "1"])
    _assert_identical(first, second, (".safetensors", ".json"))


def test_malformed_source_date_epoch_is_an_error_not_ignored(monkeypatch):
    from medgen.reproducible import creation_time

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(ValueError, match="SOURCE_DATE_EPOCH"):
        creation_time()
