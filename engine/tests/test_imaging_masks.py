"""read_mask for every mask format, its geometry checks, and select_slices."""

from __future__ import annotations

import nrrd
import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicerio
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from medgen.errors import InputError
from medgen.imaging.masks import read_mask, select_slices
from medgen.imaging.read import read_volume

SPACING = 0.661468  # CT_small's pixel spacing
Z_POSITIONS = [0.0, 5.0, 10.0, 15.0]


def data_file(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing (install pydicom-data)"
    return path


def write_series(folder, z_positions, *, rows=128, columns=128, spacing=SPACING, origin_xy=(-158.0, -179.0),
                 frame_of_reference=None, sop_uids=None):
    """Single-frame CT slices built from CT_small with the geometry a test needs."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid, frame_of_reference = generate_uid(), frame_of_reference or generate_uid()
    for index, z in enumerate(z_positions):
        ds = pydicom.dcmread(data_file("CT_small.dcm"))
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = sop_uids[index] if sop_uids else generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.FrameOfReferenceUID = frame_of_reference
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin_xy[0], origin_xy[1], float(z)]
        ds.PixelSpacing = [spacing, spacing]
        ds.InstanceNumber = index + 1
        if (rows, columns) != (128, 128):
            ds.Rows, ds.Columns = rows, columns
            ds.PixelData = np.zeros((rows, columns), np.int16).tobytes()
        ds.save_as(folder / f"slice{index}.dcm", enforce_file_format=True)
    return folder


@pytest.fixture
def ct_volume(tmp_path):
    return read_volume(write_series(tmp_path / "ct", Z_POSITIONS))


def write_itk_mask(path, values_kji, *, origin, spacing_ijk, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    image = sitk.GetImageFromArray(values_kji)
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetSpacing(tuple(float(v) for v in spacing_ijk))
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def voxel_lps(volume, i, j, k):
    return (volume.ijk_to_lps @ np.array([i, j, k, 1.0]))[:3]


# --- NIfTI / NRRD labelmaps ----------------------------------------------------------------------


def test_labelmap_on_the_same_grid_and_label_selection(ct_volume, tmp_path):
    labels = np.zeros(ct_volume.pixels.shape, np.uint8)
    labels[1, 10:20, 30:40] = 1
    labels[2, 50:55, 60:70] = 3
    path = write_itk_mask(tmp_path / "labels.nii.gz", labels, origin=voxel_lps(ct_volume, 0, 0, 0),
                          spacing_ijk=(SPACING, SPACING, 5.0))
    np.testing.assert_array_equal(read_mask(path, ct_volume), labels != 0)
    np.testing.assert_array_equal(read_mask(path, ct_volume, label=3), labels == 3)
    with pytest.raises(InputError, match="no voxel has label 2; labels present: 1, 3"):
        read_mask(path, ct_volume, label=2)
    with pytest.raises(InputError, match="--label, not --segment"):
        read_mask(path, ct_volume, segment="lesion")


def test_cropped_labelmap_is_embedded_at_its_offset(ct_volume, tmp_path):
    box = np.ones((2, 3, 4), np.uint8)  # k, j, i
    path = write_itk_mask(tmp_path / "crop.nrrd", box, origin=voxel_lps(ct_volume, 20, 10, 1),
                          spacing_ijk=(SPACING, SPACING, 5.0))
    expected = np.zeros(ct_volume.pixels.shape, bool)
    expected[1:3, 10:13, 20:24] = True
    np.testing.assert_array_equal(read_mask(path, ct_volume), expected)


@pytest.mark.parametrize(
    "direction, corner",
    [
        ((1, 0, 0, 0, -1, 0, 0, 0, 1), (0.25, 127.25)),  # rows flipped (posterior → anterior)
        ((0, 1, 0, 1, 0, 0, 0, 0, 1), (0.25, 0.25)),  # i and j swapped
    ],
)
def test_flipped_or_permuted_half_resolution_mask_is_resampled_by_nearest_neighbour(
    ct_volume, tmp_path, direction, corner, caplog
):
    rng = np.random.default_rng(0)
    coarse = (rng.random((2, 64, 64)) > 0.7).astype(np.uint8)  # k, j, i
    # 2x spacing and a quarter-voxel shift, so no volume voxel sits half-way between two mask voxels
    origin = voxel_lps(ct_volume, *corner, 0) + np.array([0, 0, 2.5])
    spacing_ijk = (2 * SPACING, 2 * SPACING, 10.0)
    path = write_itk_mask(tmp_path / "coarse.nii.gz", coarse, origin=origin, spacing_ijk=spacing_ijk,
                          direction=direction)
    with pytest.raises(InputError, match=r"voxel steps are 2x2x2 of the volume's.*pass --resample-mask"):
        read_mask(path, ct_volume)
    with caplog.at_level("INFO", logger="medgen.imaging.masks"):
        fitted = read_mask(path, ct_volume, resample=True)
    assert "resampled the mask onto the volume's grid by nearest neighbour" in caplog.text

    # brute force: the nearest coarse voxel of every volume voxel centre
    image = sitk.ReadImage(str(path))
    expected = np.zeros(ct_volume.pixels.shape, bool)
    for k in range(4):
        for j in range(128):
            for i in range(0, 128, 7):
                point = voxel_lps(ct_volume, i, j, k)
                ci, cj, ck = image.TransformPhysicalPointToContinuousIndex(tuple(point))
                index = [int(np.floor(v + 0.5)) for v in (ck, cj, ci)]
                if all(0 <= index[a] < coarse.shape[a] for a in range(3)):
                    expected[k, j, i] = coarse[tuple(index)] != 0
    np.testing.assert_array_equal(fitted[:, :, ::7], expected[:, :, ::7])
    assert fitted.sum() > 0


def test_permuted_flipped_mask_partly_outside_is_re_indexed_voxel_for_voxel(ct_volume, tmp_path, caplog):
    rng = np.random.default_rng(1)
    values = (rng.random((4, 20, 30)) > 0.5).astype(np.uint8)  # k, j, i
    # mask i runs along -y (volume -j), mask j along +x (volume +i); its last slice lies past the volume
    path = write_itk_mask(tmp_path / "turned.nrrd", values, origin=voxel_lps(ct_volume, 10, 100, 1),
                          spacing_ijk=(SPACING, SPACING, 5.0), direction=(0, 1, 0, -1, 0, 0, 0, 0, 1))
    with caplog.at_level("INFO", logger="medgen.imaging.masks"):
        fitted = read_mask(path, ct_volume)
    expected = np.zeros(ct_volume.pixels.shape, bool)
    for mk, mj, mi in zip(*np.nonzero(values)):
        if 1 + mk < 4:
            expected[1 + mk, 100 - mi, 10 + mj] = True
    np.testing.assert_array_equal(fitted, expected)
    assert "re-indexed (crop, flip or axis order)" in caplog.text
    assert f"{int(values[3].sum())} labelled voxels lie outside the volume and are dropped" in caplog.text


def test_single_voxel_of_another_size_is_not_taken_for_a_match(ct_volume, tmp_path):
    """One labelled voxel twice the volume's size covers 2x2 volume voxels in plane: resample, not re-index."""
    dot = np.zeros((1, 4, 4), np.uint8)
    dot[0, 1, 1] = 1
    path = write_itk_mask(tmp_path / "dot.nrrd", dot, origin=voxel_lps(ct_volume, 10.5, 20.5, 2),
                          spacing_ijk=(2 * SPACING, 2 * SPACING, 5.0))
    with pytest.raises(InputError, match=r"voxel steps are 1x2x2 of the volume's.*--resample-mask"):
        read_mask(path, ct_volume)
    fitted = read_mask(path, ct_volume, resample=True)
    assert np.argwhere(fitted).tolist() == [[2, j, i] for j in (22, 23) for i in (12, 13)]


def test_mask_slice_of_another_thickness_on_a_volume_slice_marks_that_slice(tmp_path):
    """Across slices only the centre counts: a 1 mm thick mask slice on CT_small's 5 mm slice marks it."""
    volume = read_volume(data_file("CT_small.dcm"))
    values = np.zeros((1, 128, 128), np.uint8)
    values[0, 10:20, 30:40] = 1
    path = write_itk_mask(tmp_path / "thin.nrrd", values, origin=voxel_lps(volume, 0, 0, 0),
                          spacing_ijk=(volume.spacing[2], volume.spacing[1], 1.0))
    assert volume.spacing[0] != 1.0
    np.testing.assert_array_equal(read_mask(path, volume), values.astype(bool))


def test_oblique_mask_is_refused_with_both_grids(ct_volume, tmp_path):
    angle = np.deg2rad(20)
    direction = (np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, 1)
    path = write_itk_mask(tmp_path / "oblique.nii.gz", np.ones((4, 128, 128), np.uint8),
                          origin=voxel_lps(ct_volume, 0, 0, 0), spacing_ijk=(SPACING, SPACING, 5.0),
                          direction=direction)
    with pytest.raises(InputError, match=r"lies on another grid: mask 4x128x128 voxels .* volume 4x128x128.* "
                                         r"turned by up to 20 degrees.*--resample-mask"):
        read_mask(path, ct_volume)


def test_mask_outside_the_volume_is_refused(ct_volume, tmp_path):
    path = write_itk_mask(tmp_path / "far.nii.gz", np.ones((1, 5, 5), np.uint8),
                          origin=voxel_lps(ct_volume, 0, 0, 40), spacing_ijk=(SPACING, SPACING, 5.0))
    with pytest.raises(InputError, match="does not overlap the volume"):
        read_mask(path, ct_volume)


def test_empty_labelmap_is_refused(ct_volume, tmp_path):
    path = write_itk_mask(tmp_path / "empty.nii.gz", np.zeros((4, 128, 128), np.uint8),
                          origin=voxel_lps(ct_volume, 0, 0, 0), spacing_ijk=(SPACING, SPACING, 5.0))
    with pytest.raises(InputError, match="mask is empty"):
        read_mask(path, ct_volume)


# --- Slicer .seg.nrrd ----------------------------------------------------------------------------


def write_cropped_segmentation(path, volume, *, overlapping=False):
    """A .seg.nrrd whose extent is a 6x5x2 box starting at volume voxel (i=40, j=30, k=1)."""
    ijk_to_lps = volume.ijk_to_lps.copy()
    ijk_to_lps[:3, 3] = voxel_lps(volume, 40, 30, 1)
    segmentation = slicerio.create_segmentation((6, 5, 2), ijk_to_lps)  # i, j, k
    lesion = np.zeros((6, 5, 2), bool)
    lesion[1:3, 2:4, 1] = True
    liver = np.zeros((6, 5, 2), bool)
    liver[4:6, 0:5, 0] = True
    slicerio.add_segment(segmentation, lesion, {"id": "Segment_1", "name": "Lesion"})
    slicerio.add_segment(segmentation, liver, {"id": "Segment_2", "name": "Liver"})
    if overlapping:
        slicerio.add_segment(segmentation, lesion | liver, {"id": "Segment_3", "name": "Both"})
    slicerio.write_segmentation(str(path), segmentation)
    return lesion, liver


def embed(volume, box_ijk, i0=40, j0=30, k0=1):
    full = np.zeros(volume.pixels.shape, bool)
    box = box_ijk.transpose(2, 1, 0)
    full[k0:k0 + box.shape[0], j0:j0 + box.shape[1], i0:i0 + box.shape[2]] = box
    return full


def test_seg_nrrd_segment_by_name_is_embedded_into_the_volume_grid(ct_volume, tmp_path):
    path = tmp_path / "Segmentation.seg.nrrd"
    lesion, liver = write_cropped_segmentation(path, ct_volume)
    np.testing.assert_array_equal(read_mask(path, ct_volume, segment="lesion"), embed(ct_volume, lesion))
    np.testing.assert_array_equal(read_mask(path, ct_volume, segment="LIVER"), embed(ct_volume, liver))
    with pytest.raises(InputError, match="holds 2 segments; choose one with --segment: Lesion, Liver"):
        read_mask(path, ct_volume)
    with pytest.raises(InputError, match="no segment named 'tumour'; segments: Lesion, Liver"):
        read_mask(path, ct_volume, segment="tumour")


def test_seg_nrrd_with_overlapping_layers(ct_volume, tmp_path):
    path = tmp_path / "layers.seg.nrrd"
    lesion, liver = write_cropped_segmentation(path, ct_volume, overlapping=True)
    assert slicerio.read_segmentation(str(path))["voxels"].ndim == 4
    np.testing.assert_array_equal(read_mask(path, ct_volume, segment="Both"), embed(ct_volume, lesion | liver))
    np.testing.assert_array_equal(read_mask(path, ct_volume, segment="Lesion"), embed(ct_volume, lesion))


def test_seg_nrrd_in_ras_space_is_converted_to_lps(ct_volume, tmp_path):
    box = np.zeros((6, 5, 2), np.uint8)  # i, j, k
    box[0, 0, 0] = box[5, 4, 1] = 1
    lps = ct_volume.ijk_to_lps.copy()
    lps[:3, 3] = voxel_lps(ct_volume, 40, 30, 1)
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    header = {
        "space": "right-anterior-superior",
        "space directions": ras[:3, :3].T,
        "space origin": ras[:3, 3],
        "kinds": ["domain", "domain", "domain"],
        "Segment0_ID": "Segment_1",
        "Segment0_Name": "spot",
        "Segment0_LabelValue": "1",
        "Segment0_Layer": "0",
    }
    path = tmp_path / "ras.seg.nrrd"
    nrrd.write(str(path), box, header)
    expected = np.zeros(ct_volume.pixels.shape, bool)
    expected[1, 30, 40] = expected[2, 34, 45] = True
    np.testing.assert_array_equal(read_mask(path, ct_volume), expected)


# --- DICOM SEG -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def liver_seg():
    return hd.seg.segread(data_file("liver.dcm"))


def liver_series(folder, liver_seg, *, same_uids: bool, frame_of_reference=None):
    """512x512 slices where liver.dcm's frames lie, plus one slice the SEG does not cover."""
    frames = liver_seg.PerFrameFunctionalGroupsSequence
    z_of_uid = {
        f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID:
            float(f.PlanePositionSequence[0].ImagePositionPatient[2])
        for f in frames
    }
    uids = list(z_of_uid) + [generate_uid()]
    z_positions = list(z_of_uid.values()) + [max(z_of_uid.values()) + 1.0]
    return write_series(
        folder, z_positions, rows=512, columns=512, spacing=0.810547, origin_xy=(-235.2, -226.8),
        frame_of_reference=frame_of_reference or liver_seg.FrameOfReferenceUID,
        sop_uids=uids if same_uids else None,
    )


def expected_liver_mask(volume, liver_seg):
    """Each SEG frame on the volume slice at its z position (computed independently of read_mask)."""
    expected = np.zeros(volume.pixels.shape, bool)
    slice_z = [float(ds.ImagePositionPatient[2]) for ds in volume.datasets]
    for index, frame in enumerate(liver_seg.PerFrameFunctionalGroupsSequence):
        k = slice_z.index(float(frame.PlanePositionSequence[0].ImagePositionPatient[2]))
        expected[k] = liver_seg.pixel_array[index] > 0
    return expected


def test_liver_seg_matches_by_source_instance_uid(tmp_path, liver_seg):
    volume = read_volume(liver_series(tmp_path / "ct", liver_seg, same_uids=True))
    mask = read_mask(data_file("liver.dcm"), volume)
    expected = expected_liver_mask(volume, liver_seg)
    assert expected.sum() > 1000 and not expected[3].any()
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(read_mask(data_file("liver.dcm"), volume, segment="LIVER"), expected)
    np.testing.assert_array_equal(read_mask(data_file("liver.dcm"), volume, label=1), expected)


def test_liver_seg_matches_by_position_when_uids_differ(tmp_path, liver_seg):
    volume = read_volume(liver_series(tmp_path / "ct", liver_seg, same_uids=False))
    np.testing.assert_array_equal(read_mask(data_file("liver.dcm"), volume), expected_liver_mask(volume, liver_seg))


def test_liver_seg_matches_by_uid_even_where_positions_would_not(tmp_path, liver_seg):
    volume = read_volume(liver_series(tmp_path / "ct", liver_seg, same_uids=True, frame_of_reference="1.2.3"))
    np.testing.assert_array_equal(read_mask(data_file("liver.dcm"), volume), expected_liver_mask(volume, liver_seg))


def test_seg_of_another_frame_of_reference_is_refused(tmp_path, liver_seg):
    volume = read_volume(liver_series(tmp_path / "ct", liver_seg, same_uids=False, frame_of_reference="1.2.3"))
    with pytest.raises(InputError, match="another frame of reference"):
        read_mask(data_file("liver.dcm"), volume)


def test_unknown_seg_segment_lists_what_exists(ct_volume):
    with pytest.raises(InputError, match="no segment labelled 'kidney'; segments: 1 'Liver'"):
        read_mask(data_file("liver.dcm"), ct_volume, segment="kidney")
    with pytest.raises(InputError, match="no segment number 2; segments: 1 'Liver'"):
        read_mask(data_file("liver.dcm"), ct_volume, label=2)


def make_seg(source_images, mask, path):
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=source_images, pixel_array=mask, segmentation_type="BINARY",
        segment_descriptions=[description], series_instance_uid=generate_uid(), series_number=99,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="test",
        manufacturer_model_name="test", software_versions="0", device_serial_number="0",
    )
    seg.save_as(path)
    return path


def test_highdicom_seg_on_a_multiframe_source_matches_by_position(tmp_path):
    source_path = data_file("eCT_Supplemental.dcm")
    volume = read_volume(source_path)
    mask_by_frame = np.zeros((2, 512, 512), bool)
    mask_by_frame[0, 100:110, 200:230] = True  # frame 1
    mask_by_frame[1, 300:305, 50:52] = True  # frame 2
    path = make_seg([pydicom.dcmread(source_path)], mask_by_frame, tmp_path / "seg.dcm")

    mask = read_mask(path, volume, segment="lesion")

    for k, frame_number in enumerate(volume.frame_numbers):
        np.testing.assert_array_equal(mask[k], mask_by_frame[frame_number - 1])


def test_highdicom_seg_on_a_classic_series_with_empty_frames(tmp_path):
    folder = write_series(tmp_path / "ct", Z_POSITIONS)
    volume = read_volume(folder)
    sources = [pydicom.dcmread(p) for p in volume.source_paths]
    per_source = np.zeros((4, 128, 128), bool)
    per_source[2, 60:70, 60:64] = True
    path = make_seg(sources, per_source, tmp_path / "seg.dcm")
    np.testing.assert_array_equal(read_mask(path, volume), per_source)


def test_non_seg_dicom_is_not_a_mask(ct_volume):
    with pytest.raises(InputError, match="not a segmentation"):
        read_mask(data_file("CT_small.dcm"), ct_volume)


def test_text_file_is_not_a_mask(ct_volume, tmp_path):
    path = tmp_path / "mask.txt"
    path.write_text("1 2 3")
    with pytest.raises(InputError, match="not a mask"):
        read_mask(path, ct_volume)


# --- PNG -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single_slice():
    return read_volume(data_file("CT_small.dcm"))


def test_png_mask_on_a_2d_image(single_slice, tmp_path):
    drawn = np.zeros((128, 128, 3), np.uint8)
    drawn[40:50, 60:80] = (255, 0, 0)
    Image.fromarray(drawn).save(tmp_path / "mask.png")
    mask = read_mask(tmp_path / "mask.png", single_slice)
    assert mask.shape == (1, 128, 128)
    np.testing.assert_array_equal(mask[0], drawn.any(axis=-1))


def test_png_mask_of_another_size_is_refused(single_slice, tmp_path):
    Image.fromarray(np.full((64, 128), 255, np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(InputError, match="mask is 64x128 .* the image is 128x128"):
        read_mask(tmp_path / "small.png", single_slice)


def test_empty_png_mask_is_refused(single_slice, tmp_path):
    Image.fromarray(np.zeros((128, 128), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(InputError, match="mask is empty"):
        read_mask(tmp_path / "empty.png", single_slice)


# --- select_slices -------------------------------------------------------------------------------


def test_select_slices(ct_volume):
    mask = np.zeros(ct_volume.pixels.shape, bool)
    mask[1, 5, 5] = mask[3, 6, 6] = True
    assert select_slices(mask, [3, 1], False, ct_volume) == [1, 3]
    assert select_slices(mask, None, True, ct_volume) == [1, 3]
    with pytest.raises(InputError, match=r"slice 4 is out of range; valid slices are 0\.\.3") as caught:
        select_slices(mask, [4], False, ct_volume)
    assert caught.value.source == str(ct_volume.source_paths[0].parent)
    with pytest.raises(InputError, match="the mask is empty on slice 2; masked slices: 1, 3"):
        select_slices(mask, [2], False, ct_volume)
    with pytest.raises(InputError, match="touches 2 slices .*--slice K or --all-slices"):
        select_slices(mask, None, False, ct_volume)
    mask[3] = False
    assert select_slices(mask, None, False, ct_volume) == [1]


def test_select_slices_on_a_single_slice_image(single_slice):
    mask = np.ones(single_slice.pixels.shape, bool)
    assert select_slices(mask, None, False, single_slice) == [0]
    with pytest.raises(InputError, match=r"slice -1 is out of range; valid slices are 0\.\.0"):
        select_slices(mask, [-1], False, single_slice)
