"""read_volume on pydicom's real test files, on series built from them, and on bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medgen.errors import InputError
from medgen.imaging.read import read_volume
from medgen.imaging.volume import SourceFormat


def data_file(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing (install pydicom-data)"
    return path


def write_ct_series(folder, z_positions, *, series_uid=None, drop_position=False, instance_numbers=None):
    """Copies of CT_small at the given z, written in the given order, with their own UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    paths = []
    for index, z in enumerate(z_positions):
        ds = pydicom.dcmread(data_file("CT_small.dcm"))
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImagePositionPatient = [-158.0, -179.0, float(z)]
        ds.InstanceNumber = instance_numbers[index] if instance_numbers else index + 1
        pixels = ds.pixel_array.copy()
        pixels[0, 0] = index  # tells the files apart after sorting
        ds.PixelData = pixels.tobytes()
        if drop_position:
            del ds.ImagePositionPatient
        path = folder / f"file{index:02d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def assert_slice_positions_match_datasets(volume):
    """ijk_to_lps @ (0, 0, k) must be the IPP of the dataset (or frame) placed at k."""
    for k in range(volume.num_slices):
        expected = volume.ijk_to_lps @ np.array([0.0, 0.0, k, 1.0])
        if volume.is_multiframe:
            frame = volume.datasets[0].PerFrameFunctionalGroupsSequence[volume.frame_numbers[k] - 1]
            position = frame.PlanePositionSequence[0].ImagePositionPatient
        else:
            position = volume.datasets[k].ImagePositionPatient
        np.testing.assert_allclose(expected[:3], [float(v) for v in position], atol=1e-4)


# --- single files --------------------------------------------------------------------------------


def test_ct_small_reads_values_geometry_and_format():
    path = data_file("CT_small.dcm")
    volume = read_volume(path)
    ds = pydicom.dcmread(path)

    assert volume.pixels.shape == (1, 128, 128)
    assert volume.pixels.dtype == np.int16
    np.testing.assert_array_equal(volume.pixels[0], ds.pixel_array)
    assert volume.modality == "CT"
    assert volume.source_format is SourceFormat.DICOM
    assert volume.rescale_slope.tolist() == [1.0] and volume.rescale_intercept.tolist() == [-1024.0]
    assert volume.pixel_format.bits_stored == 16 and volume.pixel_format.signed
    assert volume.pixel_format.photometric == "MONOCHROME2"
    assert volume.spacing == pytest.approx((5.0, 0.661468, 0.661468))
    np.testing.assert_allclose(volume.ijk_to_lps[:3, 3], [float(v) for v in ds.ImagePositionPatient])
    np.testing.assert_allclose(volume.ijk_to_lps[:3, 0], [0.661468, 0, 0])
    assert volume.datasets[0].SOPInstanceUID == ds.SOPInstanceUID and "PixelData" in volume.datasets[0]
    assert [str(p) for p in volume.source_paths] == [path]
    assert not volume.is_multiframe


@pytest.mark.parametrize(
    "compressed, reference",
    [
        ("693_J2KR.dcm", "693_UNCR.dcm"),
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("MR2_J2KR.dcm", "MR2_UNCR.dcm"),
        ("RG1_J2KR.dcm", "RG1_UNCR.dcm"),  # CR, MONOCHROME1, 15 bits
    ],
)
def test_lossless_compressed_files_decode_to_the_uncompressed_values(compressed, reference):
    volume = read_volume(data_file(compressed))
    np.testing.assert_array_equal(volume.pixels, read_volume(data_file(reference)).pixels)


def test_mr_rescale_and_source_window_are_kept():
    volume = read_volume(data_file("MR2_J2KR.dcm"))
    assert volume.rescale_slope[0] == pytest.approx(3.774114)
    assert volume.pixel_format.bits_stored == 12 and not volume.pixel_format.signed
    assert volume.source_window == (1000.0, 2000.0)
    assert read_volume(data_file("693_J2KR.dcm")).source_window == (40.0, 100.0)


def test_cr_monochrome1_reads_format_and_ignores_zero_spacing():
    compressed = read_volume(data_file("RG1_UNCI.dcm"))
    assert compressed.modality == "CR"
    assert compressed.pixel_format.photometric == "MONOCHROME1"
    assert compressed.pixel_format.bits_stored == 15
    assert compressed.pixels.shape == (1, 1955, 1841)
    # RG1 stores PixelSpacing 0\0: fall back to 1 mm rather than a singular matrix
    assert compressed.spacing[1:] == (1.0, 1.0)
    assert np.linalg.det(compressed.ijk_to_lps) != 0


def test_rgb_ultrasound_keeps_three_samples():
    volume = read_volume(data_file("US1_UNCI.dcm"))
    assert volume.pixels.shape == (1, 480, 640, 3) and volume.is_color
    assert volume.pixel_format.photometric == "RGB" and volume.pixel_format.samples_per_pixel == 3


def test_ybr_jpeg_is_reported_as_the_decoded_rgb():
    volume = read_volume(data_file("SC_rgb_jpeg_dcmtk.dcm"))
    assert volume.datasets[0].PhotometricInterpretation == "YBR_FULL"
    assert volume.pixel_format.photometric == "RGB"
    reference = read_volume(data_file("SC_rgb.dcm")).pixels.astype(int)
    # lossy JPEG: close to the RGB original, which YBR left unconverted would not be
    assert np.abs(volume.pixels.astype(int) - reference).mean() < 5


def test_grayscale_jpeg_lossless_ultrasound():
    volume = read_volume(data_file("JPGLosslessP14SV1_1s_1f_8b.dcm"))
    assert volume.pixels.shape == (1, 768, 1024) and volume.pixels.dtype == np.uint8
    assert volume.modality == "US" and volume.pixel_format.photometric == "MONOCHROME2"
    assert volume.pixels.max() > 0


@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm"])
def test_enhanced_mr_without_positions_keeps_frame_order(name):
    volume = read_volume(data_file(name))
    ds = pydicom.dcmread(data_file("emri_small.dcm"))
    assert volume.pixels.shape == (10, 64, 64)
    assert volume.frame_numbers == list(range(1, 11)) and volume.is_multiframe
    np.testing.assert_array_equal(volume.pixels, ds.pixel_array)
    assert volume.spacing[0] == pytest.approx(1.2)  # SpacingBetweenSlices
    assert len(volume.datasets) == 1


def test_enhanced_ct_sorts_frames_by_position_and_reads_per_frame_rescale():
    path = data_file("eCT_Supplemental.dcm")
    volume = read_volume(path)
    ds = pydicom.dcmread(path)
    # normal = (-1,0,0) x (0,1,0) = (0,0,-1): frame 2 (z=-149) comes before frame 1 (z=-159)
    assert volume.frame_numbers == [2, 1]
    np.testing.assert_array_equal(volume.pixels, ds.pixel_array[::-1])
    assert volume.rescale_intercept.tolist() == [-1024.0, -1024.0]
    assert volume.spacing == pytest.approx((10.0, 0.388672, 0.388672))
    assert volume.source_window == (49.0, 102.0)
    assert_slice_positions_match_datasets(volume)


def test_enhanced_ct_order_follows_positions_not_file_order(tmp_path):
    ds = pydicom.dcmread(data_file("eCT_Supplemental.dcm"))
    frames = ds.PerFrameFunctionalGroupsSequence
    frames[0].PlanePositionSequence[0].ImagePositionPatient, frames[1].PlanePositionSequence[0].ImagePositionPatient = (
        frames[1].PlanePositionSequence[0].ImagePositionPatient,
        frames[0].PlanePositionSequence[0].ImagePositionPatient,
    )
    path = tmp_path / "swapped.dcm"
    ds.save_as(path)
    volume = read_volume(path)
    assert volume.frame_numbers == [1, 2]
    np.testing.assert_array_equal(volume.pixels, ds.pixel_array)
    assert_slice_positions_match_datasets(volume)


# --- series folders ------------------------------------------------------------------------------


def test_series_folder_is_sorted_by_position_and_ignores_other_files(tmp_path):
    z_in_file_order = [10.0, -5.0, 5.0, 0.0]
    paths = write_ct_series(tmp_path / "series", z_in_file_order)
    (tmp_path / "series" / "README.txt").write_text("not dicom")
    shutil.copy(data_file("test-SR.dcm"), tmp_path / "series" / "report.dcm")

    volume = read_volume(tmp_path / "series")

    assert volume.num_slices == 4
    assert [float(ds.ImagePositionPatient[2]) for ds in volume.datasets] == [-5.0, 0.0, 5.0, 10.0]
    assert volume.source_paths == [paths[1], paths[3], paths[2], paths[0]]
    assert volume.pixels[:, 0, 0].tolist() == [1, 3, 2, 0]
    assert volume.spacing[0] == pytest.approx(5.0)
    np.testing.assert_allclose(volume.ijk_to_lps[:3, 2], [0, 0, 5.0])
    assert_slice_positions_match_datasets(volume)


def test_series_without_positions_falls_back_to_instance_number(tmp_path):
    write_ct_series(tmp_path / "s", [0, 0, 0], drop_position=True, instance_numbers=[3, 1, 2])
    volume = read_volume(tmp_path / "s")
    assert [int(ds.InstanceNumber) for ds in volume.datasets] == [1, 2, 3]
    assert volume.pixels[:, 0, 0].tolist() == [1, 2, 0]


def test_folder_with_two_series_is_refused_with_both_uids(tmp_path):
    write_ct_series(tmp_path / "mixed", [0.0, 5.0], series_uid="1.2.3.4")
    for path in write_ct_series(tmp_path / "other", [0.0], series_uid="1.2.3.5"):
        shutil.move(path, tmp_path / "mixed" / "other.dcm")
    with pytest.raises(InputError, match=r"2 series.*1\.2\.3\.4.*1\.2\.3\.5|2 series.*1\.2\.3\.5.*1\.2\.3\.4"):
        read_volume(tmp_path / "mixed")


def test_duplicate_positions_are_refused(tmp_path):
    write_ct_series(tmp_path / "dup", [0.0, 0.0, 5.0])
    with pytest.raises(InputError, match="share a position"):
        read_volume(tmp_path / "dup")


# --- NIfTI, NRRD, PNG ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix, source_format", [(".nii.gz", SourceFormat.NIFTI), (".nrrd", SourceFormat.NRRD)])
def test_itk_volumes_keep_array_order_geometry_and_image(tmp_path, suffix, source_format):
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 0.75, 2.0))
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    path = tmp_path / f"volume{suffix}"
    sitk.WriteImage(image, str(path))

    volume = read_volume(path)

    np.testing.assert_array_equal(volume.pixels, array)
    assert volume.source_format is source_format and volume.modality == "OT"
    assert volume.pixel_format is None and volume.itk_image is not None
    assert volume.spacing == pytest.approx((2.0, 0.75, 0.5))
    # voxel (i=1, j=2, k=3) in LPS = origin + D @ (i*0.5, j*0.75, k*2)
    expected = np.array([10.0, -20.0, 30.0]) + np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]]) @ [0.5, 1.5, 6.0]
    np.testing.assert_allclose((volume.ijk_to_lps @ [1, 2, 3, 1])[:3], expected)
    assert volume.rescale_slope.tolist() == [1.0] * 4


def test_png_grayscale_and_rgb_become_one_gray_slice(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray).save(tmp_path / "gray.png")
    volume = read_volume(tmp_path / "gray.png")
    assert volume.source_format is SourceFormat.PNG
    np.testing.assert_array_equal(volume.pixels, gray[np.newaxis])

    rgb = np.zeros((3, 4, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    volume = read_volume(tmp_path / "rgb.png")
    assert volume.pixels.shape == (1, 3, 4)
    assert volume.pixels[0, 0, 0] == 76 and volume.pixels[0, 0, 1] == 150  # BT.601 luma


# --- bad input -----------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_volume(tmp_path / "nothing.dcm")


def test_text_file_is_not_dicom(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(InputError, match="not a DICOM file") as caught:
        read_volume(path)
    assert caught.value.source == str(path)


def test_truncated_file_cannot_decode(tmp_path):
    data = open(data_file("CT_small.dcm"), "rb").read()
    path = tmp_path / "truncated.dcm"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cannot decode pixel data \(transfer syntax Explicit VR Little Endian\)"):
        read_volume(path)


@pytest.mark.parametrize("name", ["test-SR.dcm", "rtplan.dcm"])
def test_non_image_objects_have_no_pixel_data(name):
    with pytest.raises(InputError, match="no pixel data"):
        read_volume(data_file(name))


def test_palette_colour_is_refused():
    with pytest.raises(InputError, match="palette colour .* is not supported; convert to grayscale or RGB first"):
        read_volume(data_file("OBXXXX1A.dcm"))


def test_seg_passed_as_volume_is_refused():
    with pytest.raises(InputError, match="not an image; pass it as the mask"):
        read_volume(data_file("liver.dcm"))


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match="holds no DICOM files"):
        read_volume(tmp_path)


def test_folder_with_only_a_report(tmp_path):
    shutil.copy(data_file("test-SR.dcm"), tmp_path / "sr.dcm")
    with pytest.raises(InputError, match="no DICOM images"):
        read_volume(tmp_path)
