"""A refusal is one line on stderr, even where a native library writes there itself: ITK's warnings and
niftilib's "** ERROR" lines on a damaged NIfTI header, the Rust RLE decoder's panic message on a damaged
RLE stream. The CLI runs in a subprocess, so what reaches file descriptor 2 is what is checked."""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np

from testfiles import dicom_testfile

# One byte of pydicom's MR_small_RLE.dcm that makes the RLE decoder (pylibjpeg-rle, Rust) index past
# its output buffer and panic: found by the seeded fuzzing (test_fuzz_inputs case 968)
RLE_PANIC_OFFSET, RLE_PANIC_BYTE = 2366, 235


def run_inpaint(tmp_path, source, mask) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "medgen.cli", "inpaint", str(source), "--mask", str(mask), "--prompt", "lesion",
         "--out", str(tmp_path / "out"), "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )


def assert_one_line_refusal(done: subprocess.CompletedProcess, tmp_path) -> None:
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("medgen: error: "), done.stderr
    assert not (tmp_path / "out").exists()


def nifti_with_bad_datatype(path):
    """A NIfTI-1 file whose datatype code (bytes 70-71) names no type: niftilib prints "** ERROR"."""
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 16, 16), np.int16)), str(path))
    data = bytearray(path.read_bytes())
    data[70:72] = struct.pack("<h", 9999)
    path.write_bytes(bytes(data))
    return path


def test_damaged_rle_stream_is_one_line(tmp_path):
    data = bytearray(dicom_testfile("MR_small_RLE.dcm").read_bytes())
    data[RLE_PANIC_OFFSET] = RLE_PANIC_BYTE
    source = tmp_path / "damaged_rle.dcm"
    source.write_bytes(bytes(data))
    done = run_inpaint(tmp_path, source, tmp_path / "mask.nii.gz")
    assert_one_line_refusal(done, tmp_path)
    assert "damaged_rle.dcm" in done.stderr


def test_nifti_source_with_a_bad_header_is_one_line(tmp_path):
    source = nifti_with_bad_datatype(tmp_path / "bad.nii")
    done = run_inpaint(tmp_path, source, tmp_path / "mask.nii.gz")
    assert_one_line_refusal(done, tmp_path)
    assert "bad.nii" in done.stderr


def test_nifti_mask_with_a_bad_header_is_one_line(tmp_path):
    mask = nifti_with_bad_datatype(tmp_path / "mask.nii")
    done = run_inpaint(tmp_path, dicom_testfile("CT_small.dcm"), mask)
    assert_one_line_refusal(done, tmp_path)
    assert "mask.nii" in done.stderr


def test_an_overflowing_geometry_is_refused_as_damaged_in_one_line(tmp_path):
    """A Spacing Between Slices of 1e300 overflowed numpy (a RuntimeWarning on stderr) into an infinite spacing."""
    import pydicom

    ds = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
    ds.SpacingBetweenSlices = "1e300"
    source = tmp_path / "huge_spacing.dcm"
    ds.save_as(source)
    done = run_inpaint(tmp_path, source, tmp_path / "mask.nii.gz")
    assert_one_line_refusal(done, tmp_path)
    assert "is not finite or lies beyond" in done.stderr


def test_a_mask_header_with_an_absurd_spacing_is_refused_as_damaged_in_one_line(tmp_path):
    """A NIfTI mask whose slice spacing is 1e30 mm: numpy's invalid-cast warning reached stderr."""
    import SimpleITK as sitk

    from medgen.imaging.read import read_volume

    source = dicom_testfile("CT_small.dcm")
    volume = read_volume(source)
    mask = sitk.GetImageFromArray(np.ones((1, *volume.shape2d), np.uint8))
    mask.SetSpacing((1.0, 1.0, 1e30))
    sitk.WriteImage(mask, str(tmp_path / "mask.nii.gz"))
    done = run_inpaint(tmp_path, source, tmp_path / "mask.nii.gz")
    assert_one_line_refusal(done, tmp_path)
    assert "the mask's geometry" in done.stderr


def test_a_nifti_source_with_an_absurd_spacing_is_refused_as_damaged(tmp_path):
    import SimpleITK as sitk
    import pytest

    from medgen.errors import InputError
    from medgen.imaging.read import read_volume

    image = sitk.GetImageFromArray(np.zeros((3, 16, 16), np.int16))
    image.SetSpacing((1.0, 1.0, 1e30))
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    with pytest.raises(InputError, match="the image's geometry") as info:
        read_volume(tmp_path / "ct.nii.gz")
    assert info.value.reason == "damaged"


def test_a_seg_run_on_a_one_part_patient_name_prints_no_library_warning(tmp_path):
    """highdicom warns about a Patient Name of one part ("Anonymized") when it builds the SEG; the
    pre-flight has met that already, so the written run's stderr holds only the progress bar."""
    import pydicom

    from medgen.imaging.read import read_volume
    from testfiles import write_labelmap_like

    ds = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
    ds.PatientName = "Anonymized"
    source = tmp_path / "ct.dcm"
    ds.save_as(source)
    volume = read_volume(source)
    mask = np.zeros(volume.pixels.shape, np.uint8)
    mask[0, 60:70, 60:70] = 1
    write_labelmap_like(volume, mask, tmp_path / "mask.nii.gz")
    done = subprocess.run(
        [sys.executable, "-m", "medgen.cli", "inpaint", str(source), "--mask", str(tmp_path / "mask.nii.gz"),
         "--prompt", "lesion", "--out", str(tmp_path / "out"), "--seg", "--steps", "1", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    other = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()
             and not line.startswith("inpainting")]
    assert not other, other
