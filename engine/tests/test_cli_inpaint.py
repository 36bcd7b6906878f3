"""End to end through the `medgen` command on real DICOM of several modalities (tiny random-weight model).

Each case checks what a user relies on: the synthetic marks on every written instance, bit-identical
pixels outside the dilated mask, no new dciodvfy errors, and the provenance and preview beside them.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

from testfiles import dicom_testfile, write_labelmap_like
from medgen.cli import main
from medgen.dicom.dciodvfy import is_available, new_errors, run_dciodvfy
from medgen.dicom.validate import validate_paths
from medgen.imaging.crop import dilate_mask
from medgen.imaging.read import read_volume

MASK_DILATE_MM = 2.0


def disk_mask(volume, slices, radius_fraction=0.12):
    """A round mask in the middle of the given slices."""
    depth, rows, cols = volume.pixels.shape[:3]
    rr, cc = np.mgrid[:rows, :cols]
    radius = max(3, int(min(rows, cols) * radius_fraction))
    disk = (rr - rows // 2) ** 2 + (cc - cols // 2) ** 2 <= radius**2
    mask = np.zeros((depth, rows, cols), bool)
    for k in slices:
        mask[k] = disk
    return mask


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def dicom_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.dcm"))


def source_image_items(ds: pydicom.Dataset) -> list:
    """Source Image items: top level, or per frame inside Derivation Image items (enhanced IODs)."""
    if "SourceImageSequence" in ds:
        return list(ds.SourceImageSequence)
    return [
        source
        for frame in ds.get("PerFrameFunctionalGroupsSequence", [])
        for derivation in frame.get("DerivationImageSequence", [])
        for source in derivation.SourceImageSequence
    ]


def check_synthetic_instance(ds: pydicom.Dataset, source: pydicom.Dataset) -> None:
    assert ds.SyntheticData == "YES"
    # Enhanced CT/MR IODs require value 2 to be PRIMARY (PS3.3 C.8.16.1); every other IOD gets SECONDARY
    enhanced = ds.SOPClassUID in (pydicom.uid.EnhancedCTImageStorage, pydicom.uid.EnhancedMRImageStorage)
    assert list(ds.ImageType)[:2] == ["DERIVED", "PRIMARY" if enhanced else "SECONDARY"]
    assert ds.SeriesDescription.startswith("SYNTHETIC")
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert ds.SOPInstanceUID != source.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.SOPClassUID == source.SOPClassUID
    assert str(ds.get("PatientID", "")) == str(source.get("PatientID", ""))
    equipment = ds.ContributingEquipmentSequence[-1]
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109100"
    assert equipment.Manufacturer == "MedGenSlicer"
    references = source_image_items(ds)
    assert references and all(item.ReferencedSOPInstanceUID == source.SOPInstanceUID for item in references)
    assert all(item.PurposeOfReferenceCodeSequence[0].CodeValue == "121322" for item in references)
    descriptions = [ds.DerivationDescription] if "DerivationDescription" in ds else [
        derivation.DerivationDescription
        for frame in ds.PerFrameFunctionalGroupsSequence
        for derivation in frame.DerivationImageSequence
    ]
    assert descriptions and all("prompt" in d and "seed" in d for d in descriptions)
    assert ds.BitsStored == source.BitsStored and ds.PixelRepresentation == source.PixelRepresentation
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


# (test file, slices to inpaint or None for a single-slice input)
MODALITY_CASES = {
    "CT": ("CT_small.dcm", None),
    "CT-jpeg2000": ("693_J2KR.dcm", None),
    "MR": ("MR_small.dcm", None),
    "MR-rle": ("MR_small_RLE.dcm", None),
    "CR-monochrome1": ("RG1_UNCI.dcm", None),
    "CR-monochrome1-jpeg2000": ("RG1_J2KR.dcm", None),
    "US-gray-jpeg-lossless": ("JPGLosslessP14SV1_1s_1f_8b.dcm", None),
    "US-rgb": ("US1_UNCI.dcm", None),
    "enhanced-MR": ("emri_small.dcm", [3, 4]),
    "enhanced-MR-jpeg2000": ("emri_small_jpeg_2k_lossless.dcm", [2]),
    "enhanced-CT": ("eCT_Supplemental.dcm", [1]),
}


@pytest.mark.parametrize("case", sorted(MODALITY_CASES))
def test_inpaint_real_dicom_keeps_outside_mask_and_marks_every_instance(case, tiny_model_dir, tmp_path):
    filename, slices = MODALITY_CASES[case]
    source_path = dicom_testfile(filename)
    volume = read_volume(source_path)
    chosen = slices or [0]
    mask = disk_mask(volume, chosen)
    mask_path = write_labelmap_like(volume, mask, tmp_path / "mask.nii.gz")
    out = tmp_path / "out"
    slice_args = ["--all-slices"] if slices else []
    code = run_cli(
        "inpaint", source_path, "--mask", mask_path, *slice_args, "--prompt", "hypodense lesion",
        "--model", tiny_model_dir, "--variants", 2, "--seed", 3, "--steps", 2,
        "--mask-dilate", MASK_DILATE_MM, "--out", out,
    )
    assert code == 0
    assert (out / "provenance.json").is_file() and (out / "preview.png").is_file()
    provenance = json.loads((out / "provenance.json").read_text())
    assert len(provenance["model"]["sha256"]) == 64
    source_ds = pydicom.dcmread(source_path)
    pixel_spacing = (volume.spacing[1], volume.spacing[2])
    allowed = np.stack([dilate_mask(m, MASK_DILATE_MM, pixel_spacing) for m in mask])
    for variant in ("variant-01", "variant-02"):
        files = dicom_files(out / variant)
        assert files, f"no DICOM written in {variant}"
        for path in files:
            check_synthetic_instance(pydicom.dcmread(path), source_ds)
        written = read_volume(out / variant if len(files) > 1 else files[0])
        assert written.pixels.dtype == volume.pixels.dtype
        assert written.pixels.shape == volume.pixels.shape
        changed = written.pixels != volume.pixels
        if changed.ndim == 4:
            changed = changed.any(axis=-1)
        assert not changed[~allowed].any(), "a voxel outside the dilated mask changed"
        assert changed[mask].any(), "nothing was inpainted"
    if is_available():
        source_report = run_dciodvfy(source_path)
        for path in dicom_files(out):
            assert new_errors(run_dciodvfy(path), source_report) == [], path
    report = validate_paths([out], source_path)  # what `medgen validate OUT --source SRC` checks
    assert report.ok, report.table()


def test_inpaint_same_seed_gives_identical_series(tiny_model_dir, tmp_path):
    source = dicom_testfile("CT_small.dcm")
    volume = read_volume(source)
    mask_path = write_labelmap_like(volume, disk_mask(volume, [0]), tmp_path / "mask.nrrd")
    outputs = []
    for name in ("a", "b"):
        args = ["inpaint", source, "--mask", mask_path, "--prompt", "cyst", "--model", tiny_model_dir,
                "--seed", 11, "--steps", 2, "--out", tmp_path / name]
        assert run_cli(*args) == 0
        outputs.append(read_volume(dicom_files(tmp_path / name / "variant-01")[0]).pixels)
    assert np.array_equal(outputs[0], outputs[1])


def test_inpaint_series_folder_all_slices_and_only_modified(tiny_model_dir, tmp_path):
    """A classic 4-slice series made from CT_small: the whole volume by default, changed slices on request."""
    series = tmp_path / "series"
    series.mkdir()
    template = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
    series_uid = pydicom.uid.generate_uid()
    for k in range(4):
        ds = template.copy()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(v) for v in template.ImagePositionPatient[:2]] + [float(k) * 5.0]
        ds.save_as(series / f"slice{3 - k}.dcm")  # file names in reverse order: sorting must use positions
    volume = read_volume(series)
    assert volume.num_slices == 4
    mask_path = write_labelmap_like(volume, disk_mask(volume, [1, 2]), tmp_path / "mask.nii.gz")
    common = ["--prompt", "lesion", "--model", tiny_model_dir, "--steps", 2, "--seed", 1]
    assert run_cli("inpaint", series, "--mask", mask_path, "--all-slices", *common, "--out", tmp_path / "full") == 0
    assert len(dicom_files(tmp_path / "full" / "variant-01")) == 4
    assert run_cli(
        "inpaint", series, "--mask", mask_path, "--slice", 2, *common, "--only-modified", "--out", tmp_path / "one"
    ) == 0
    written = dicom_files(tmp_path / "one" / "variant-01")
    assert len(written) == 1
    source_by_position = {float(pydicom.dcmread(p).ImagePositionPatient[2]): p for p in series.iterdir()}
    ds = pydicom.dcmread(written[0])
    assert float(ds.ImagePositionPatient[2]) == 10.0  # slice index 2 along the axis
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == pydicom.dcmread(
        source_by_position[10.0]
    ).SOPInstanceUID


def test_inpaint_nifti_is_written_back_as_nifti_and_as_dicom_on_request(tiny_model_dir, tmp_path):
    array = np.full((3, 48, 48), -50, np.int16)
    array[:, 10:38, 10:38] = 60
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 2.5))
    image.SetOrigin((-20.0, -30.0, 5.0))
    source = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image, str(source))
    mask = np.zeros_like(array, np.uint8)
    mask[1, 18:30, 18:30] = 4
    mask_image = sitk.GetImageFromArray(mask)
    mask_image.CopyInformation(image)
    sitk.WriteImage(mask_image, str(tmp_path / "mask.nii.gz"))
    out = tmp_path / "out"
    assert run_cli(
        "inpaint", source, "--mask", tmp_path / "mask.nii.gz", "--label", 4, "--prompt", "cyst",
        "--model", tiny_model_dir, "--steps", 2, "--seed", 0, "--dicom", "--window", "soft_tissue", "--out", out,
    ) == 0
    written = sitk.ReadImage(str(out / "variant-01" / "ct.nii.gz"))
    assert np.allclose(written.GetSpacing(), image.GetSpacing()) and np.allclose(written.GetOrigin(), image.GetOrigin())
    result = sitk.GetArrayFromImage(written)
    assert result.dtype == array.dtype
    assert np.array_equal(result[0], array[0]) and np.array_equal(result[2], array[2])
    assert (result[1] != array[1]).any()
    assert (out / "provenance.json").is_file()
    sc_files = dicom_files(out / "variant-01" / "dicom")
    assert sc_files
    for path in sc_files:
        ds = pydicom.dcmread(path)
        assert ds.SyntheticData == "YES" and ds.ConversionType == "SYN"


# ---- bad input: one line naming the file, exit code 2, nothing left behind --------------------------


def _bad_run(tmp_path, capsys, *args):
    out = tmp_path / "out"
    code = run_cli(*args, "--out", out)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    return err


def test_bad_input_not_dicom(tiny_model_dir, tmp_path, capsys):
    text = tmp_path / "notes.dcm"
    text.write_text("this is not a DICOM file\n")
    err = _bad_run(tmp_path, capsys, "inpaint", text, "--mask", text, "--prompt", "x", "--model", tiny_model_dir)
    assert str(text) in err


def test_bad_input_truncated_dicom(tiny_model_dir, tmp_path, capsys):
    data = dicom_testfile("CT_small.dcm").read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) // 2])
    mask = tmp_path / "mask.png"
    Image.fromarray(np.full((128, 128), 255, np.uint8)).save(mask)
    err = _bad_run(tmp_path, capsys, "inpaint", truncated, "--mask", mask, "--prompt", "x", "--model", tiny_model_dir)
    assert str(truncated) in err


def test_bad_input_empty_mask(tiny_model_dir, tmp_path, capsys):
    mask = tmp_path / "empty.png"
    Image.fromarray(np.zeros((128, 128), np.uint8)).save(mask)
    err = _bad_run(
        tmp_path, capsys, "inpaint", dicom_testfile("CT_small.dcm"), "--mask", mask, "--prompt", "x", "--model", tiny_model_dir
    )
    assert str(mask) in err and "empty" in err


def test_bad_input_mask_on_another_grid(tiny_model_dir, tmp_path, capsys):
    mask = tmp_path / "small.png"
    Image.fromarray(np.full((20, 30), 255, np.uint8)).save(mask)
    err = _bad_run(
        tmp_path, capsys, "inpaint", dicom_testfile("CT_small.dcm"), "--mask", mask, "--prompt", "x", "--model", tiny_model_dir
    )
    assert str(mask) in err


def test_bad_input_slice_out_of_range(tiny_model_dir, tmp_path, capsys):
    source = dicom_testfile("emri_small.dcm")
    volume = read_volume(source)
    mask_path = write_labelmap_like(volume, disk_mask(volume, [0]), tmp_path / "mask.nii.gz")
    err = _bad_run(
        tmp_path, capsys, "inpaint", source, "--mask", mask_path, "--slice", 99, "--prompt", "x",
        "--model", tiny_model_dir,
    )
    assert "99" in err


def test_bad_input_model_missing_and_not_a_model(tmp_path, capsys):
    source = dicom_testfile("CT_small.dcm")
    mask = tmp_path / "mask.png"
    Image.fromarray(np.full((128, 128), 255, np.uint8)).save(mask)
    missing = tmp_path / "no-such-model"
    assert str(missing) in _bad_run(
        tmp_path, capsys, "inpaint", source, "--mask", mask, "--prompt", "x", "--model", missing
    )
    not_a_model = tmp_path / "just-a-folder"
    not_a_model.mkdir()
    assert str(not_a_model) in _bad_run(
        tmp_path, capsys, "inpaint", source, "--mask", mask, "--prompt", "x", "--model", not_a_model
    )


def test_bad_output_dir_unwritable(tiny_model_dir, tmp_path, capsys):
    mask = tmp_path / "mask.png"
    Image.fromarray(np.full((128, 128), 255, np.uint8)).save(mask)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if _can_write(locked):
            pytest.skip("running with privileges that ignore directory permissions (root)")
        code = run_cli(
            "inpaint", dicom_testfile("CT_small.dcm"), "--mask", mask, "--prompt", "x", "--model", tiny_model_dir,
            "--out", locked / "out",
        )
        err = capsys.readouterr().err.strip()
        assert code == 2 and str(locked / "out") in err and len(err.splitlines()) == 1
        assert not (locked / "out").exists()
    finally:
        locked.chmod(0o700)


def test_bad_output_dir_under_a_file(tiny_model_dir, tmp_path, capsys):
    """An output path whose parent is a file cannot be created, whoever runs it (root included)."""
    mask = tmp_path / "mask.png"
    Image.fromarray(np.full((128, 128), 255, np.uint8)).save(mask)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    code = run_cli(
        "inpaint", dicom_testfile("CT_small.dcm"), "--mask", mask, "--prompt", "x", "--model", tiny_model_dir,
        "--out", a_file / "out",
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and str(a_file / "out") in err and len(err.splitlines()) == 1


def _can_write(directory: Path) -> bool:
    probe = directory / ".probe"
    try:
        probe.write_text("x")
    except OSError:
        return False
    probe.unlink()
    return True


def test_bad_output_dir_not_empty_is_never_overwritten(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous result")
    mask = tmp_path / "mask.png"
    Image.fromarray(np.full((128, 128), 255, np.uint8)).save(mask)
    code = run_cli(
        "inpaint", dicom_testfile("CT_small.dcm"), "--mask", mask, "--prompt", "x", "--model", tiny_model_dir, "--out", out
    )
    assert code == 2
    assert str(out) in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "previous result"


def test_console_command_runs_as_installed(tiny_model_dir, tmp_path):
    """The real `medgen` entry point (a subprocess), with its progress bar on stderr."""
    mask = tmp_path / "mask.png"
    rows, cols = np.mgrid[:128, :128]
    Image.fromarray((((rows - 64) ** 2 + (cols - 64) ** 2 < 100) * 255).astype(np.uint8)).save(mask)
    medgen = shutil.which("medgen") or f"{sys.executable} -m medgen.cli"
    completed = subprocess.run(
        [*medgen.split(), "inpaint", str(dicom_testfile("CT_small.dcm")), "--mask", str(mask), "--prompt", "cyst",
         "--model", str(tiny_model_dir), "--steps", "3", "--seed", "5", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert "variant-01" in completed.stdout
    assert "3/3" in completed.stderr  # the progress bar reached the last step


def test_model_recommended_settings_fill_unset_options_only(tiny_model_dir, tmp_path):
    """A model's medgen.json supplies steps/guidance/padding the user left unset; the user's value wins."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "medgen.json").write_text(json.dumps({"guidance_scale": 1.4, "num_inference_steps": 2}))
    mask = tmp_path / "mask.png"
    Image.fromarray(np.pad(np.full((20, 20), 255, np.uint8), 54)).save(mask)
    source = dicom_testfile("CT_small.dcm")
    assert run_cli("inpaint", source, "--mask", mask, "--prompt", "cyst", "--model", model, "--seed", 1,
                   "--out", tmp_path / "a") == 0
    parameters = json.loads((tmp_path / "a" / "provenance.json").read_text())["parameters"]
    assert parameters["guidance_scale"] == 1.4 and parameters["num_inference_steps"] == 2
    assert parameters["crop_padding_px"] == 32  # not in medgen.json: the engine default
    assert run_cli("inpaint", source, "--mask", mask, "--prompt", "cyst", "--model", model, "--seed", 1,
                   "--guidance", 3.0, "--out", tmp_path / "b") == 0
    assert json.loads((tmp_path / "b" / "provenance.json").read_text())["parameters"]["guidance_scale"] == 3.0


def test_model_recommended_settings_out_of_range_is_refused(tiny_model_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "medgen.json").write_text(json.dumps({"guidance_scale": -1}))
    mask = tmp_path / "mask.png"
    Image.fromarray(np.pad(np.full((20, 20), 255, np.uint8), 54)).save(mask)
    err = _bad_run(tmp_path, capsys, "inpaint", dicom_testfile("CT_small.dcm"), "--mask", mask, "--prompt", "x",
                   "--model", model)
    assert "guidance" in err and str(model / "medgen.json") in err
