"""Masks written by SimpleITK, Slicer's core libraries and nibabel on real CT and MR series (axial,
gantry-tilted, a 0.3-degree tilted MR pair, enhanced multi-frame CT and MR) mean the same voxels in
the engine: each tool paints its own slice 1, and the engine must put the mask on the engine slice
holding the same image, at the same rows and columns.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from medgen.errors import InputError
from medgen.imaging.masks import read_mask, select_slices
from medgen.imaging.read import read_volume
from testfiles import dicom_testfile

BOX = (slice(40, 52), slice(30, 45))  # rows, columns of the painted square
TOOL_SLICE = 1  # every tool paints its own slice 1
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def nibabel_data(name: str) -> Path:
    nibabel = pytest.importorskip("nibabel")
    path = Path(nibabel.__file__).parent / "nicom" / "tests" / "data" / name
    if not path.exists():
        pytest.skip(f"nibabel's test file {name} is not installed")
    return path


# --- real series ---------------------------------------------------------------------------------


def stacked_series(folder: Path, *, tilt_degrees: float, source: str = "CT_small.dcm", count: int = 5,
                   step_mm: float = 5.0) -> Path:
    """A real slice (CT_small, MR_small) stacked ``count`` times, positions stepping along z only.

    With a tilt the image plane turns about the patient's left-right axis (gantry tilt), so the
    positions shear against the plane's normal, as on a tilted CT. Each slice's values are offset
    so the slices can be told apart by content.
    """
    folder.mkdir(parents=True)
    tilt = np.deg2rad(tilt_degrees)
    column_direction = [0.0, float(np.cos(tilt)), float(np.sin(tilt))]
    normal = np.cross([1.0, 0.0, 0.0], column_direction)
    series_uid, frame_uid = generate_uid(), generate_uid()
    for k in range(count):
        ds = pydicom.dcmread(dicom_testfile(source))
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID = series_uid, frame_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, *column_direction]
        ds.ImagePositionPatient = [-158.0, -179.0, -75.0 + step_mm * k]
        ds.SpacingBetweenSlices = round(float(step_mm * normal[2]), 6)
        if tilt_degrees:
            ds.GantryDetectorTilt = tilt_degrees
        ds.InstanceNumber = k + 1
        pixels = ds.pixel_array.astype(np.int32) + 13 * k
        ds.PixelData = np.clip(pixels, -32768, 32767).astype(np.int16).tobytes()
        ds.save_as(folder / f"IM{count - k:04d}.dcm", enforce_file_format=True)  # names in reverse order
    return folder


@pytest.fixture(scope="module")
def series(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("series")
    return SERIES[request.param](root)


def axial_ct(root: Path) -> Path:
    return stacked_series(root / "axial-ct", tilt_degrees=0.0)


def tilted_ct(root: Path) -> Path:
    return stacked_series(root / "tilted-ct", tilt_degrees=20.0)


def axial_mr(root: Path) -> Path:
    return stacked_series(root / "axial-mr", tilt_degrees=0.0, source="MR_small.dcm", count=4, step_mm=3.0)


def tilted_mr_pair(root: Path) -> Path:
    """nibabel's two Siemens MR slices: the plane is tilted 0.3 degrees, positions step along z only.

    Both files hold the same test pattern, so a corner of each is stamped to tell them apart.
    """
    folder = root / "tilted-mr"
    folder.mkdir()
    for number, name in enumerate(("0.dcm", "1.dcm"), start=1):
        ds = pydicom.dcmread(nibabel_data(name))
        pixels = ds.pixel_array.copy()
        pixels[:4, :4] = 1000 * number
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / name)
    return folder


def enhanced_ct(root: Path) -> Path:
    """pydicom-data's enhanced CT: two frames ascending in z while the plane's normal points down."""
    path = root / "eCT_Supplemental.dcm"
    shutil.copy(dicom_testfile("eCT_Supplemental.dcm"), path)
    return path


def enhanced_mr(root: Path) -> Path:
    """nibabel's Philips enhanced MR (176 oblique frames); its pixels are blank, so each frame is filled
    with its frame number to tell frames apart."""
    ds = pydicom.dcmread(gzip.open(nibabel_data("philips_mprage.dcm.gz")))
    frames = int(ds.NumberOfFrames)
    stamped = np.broadcast_to(np.arange(1, frames + 1, dtype=np.uint16)[:, None, None], (frames, ds.Rows, ds.Columns))
    ds.PixelData = np.ascontiguousarray(stamped).tobytes()
    path = root / "philips_mprage.dcm"
    ds.save_as(path)
    return path


SERIES = {
    "axial CT": axial_ct,
    "tilted CT": tilted_ct,
    "axial MR": axial_mr,
    "tilted MR pair": tilted_mr_pair,
    "enhanced CT": enhanced_ct,
    "enhanced MR": enhanced_mr,
}


def dicom_files(series: Path) -> list[Path]:
    return sorted(series.iterdir()) if series.is_dir() else [series]


# --- the three tools -----------------------------------------------------------------------------


def simpleitk_mask(series: Path, out: Path) -> tuple[Path, np.ndarray]:
    """Read as SimpleITK users do, paint on the image's own grid (CopyInformation), write .nrrd."""
    if series.is_dir():
        image = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series)))
    else:
        image = sitk.ReadImage(str(series))
    pixels = sitk.GetArrayFromImage(image)  # (k, j, i)
    values = np.zeros(pixels.shape, np.uint8)
    values[(TOOL_SLICE, *BOX)] = 1
    mask = sitk.GetImageFromArray(values)
    mask.CopyInformation(image)
    path = out / "simpleitk-mask.nrrd"
    sitk.WriteImage(mask, str(path))
    return path, pixels[TOOL_SLICE]


def slicer_sorted_files(files: list[Path]) -> list[Path]:
    """Files in the order Slicer's DICOM plugin hands them to the reader: by position along the normal."""
    if len(files) == 1:
        return files
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    orientation = np.array(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    return [f for _, f in sorted(zip((float(np.dot(h.ImagePositionPatient, normal)) for h in headers), files))]


def slicer_series_reader(slicer, series: Path):
    """Slicer's reader of a DICOM series as its DICOM scalar volume plugin sets it up (vtkITK archetype
    reader, GDCM, native orientation and origin), run; its RAS-to-IJK matrix is the volume's geometry."""
    files = slicer_sorted_files(dicom_files(series))
    reader = slicer.vtkITKArchetypeImageSeriesScalarReader()
    reader.SetArchetype(str(files[0]))
    for f in files:
        reader.AddFileName(str(f))
    reader.SetSingleFile(0)
    reader.SetOutputScalarTypeToNative()
    reader.SetDesiredCoordinateOrientationToNative()
    reader.SetUseNativeOriginOn()
    reader.SetDICOMImageIOApproachToGDCM()
    reader.Update()
    return reader


def slicer_mask(series: Path, out: Path) -> tuple[Path, np.ndarray]:
    """Load as Slicer's DICOM scalar volume plugin does (vtkITK archetype reader, GDCM), paint a segment
    on a labelmap with the volume's geometry, save the segmentation as .seg.nrrd."""
    slicer = pytest.importorskip("slicer")
    import vtk
    from vtk.util import numpy_support

    reader = slicer_series_reader(slicer, series)
    image = reader.GetOutput()
    columns, rows, slices = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(slices, rows, columns)
    ijk_to_ras = vtk.vtkMatrix4x4()
    ijk_to_ras.DeepCopy(reader.GetRasToIjkMatrix())
    ijk_to_ras.Invert()

    scene = slicer.vtkMRMLScene()
    labelmap_image = vtk.vtkImageData()
    labelmap_image.SetDimensions(columns, rows, slices)
    labelmap_image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    labels = numpy_support.vtk_to_numpy(labelmap_image.GetPointData().GetScalars()).reshape(slices, rows, columns)
    labels[:] = 0
    labels[(TOOL_SLICE, *BOX)] = 1
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    labelmap.SetAndObserveImageData(labelmap_image)
    labelmap.SetIJKToRASMatrix(ijk_to_ras)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation, "")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    path = out / "slicer-mask.seg.nrrd"
    storage.SetFileName(str(path))
    assert storage.WriteData(segmentation)
    return path, pixels[TOOL_SLICE]


def nibabel_mask(series: Path, out: Path) -> tuple[Path, np.ndarray]:
    """Stack as nibabel users do (slices sorted by slice_indicator, the first slice's affine; a
    multi-frame file's own affine), arrays (rows, columns, slices), saved as NIfTI in RAS."""
    nibabel = pytest.importorskip("nibabel")
    from nibabel.nicom import dicomwrappers

    if series.is_dir():
        wrappers = sorted((dicomwrappers.Wrapper(pydicom.dcmread(f)) for f in dicom_files(series)),
                          key=lambda w: w.slice_indicator)
        data = np.stack([w.get_data() for w in wrappers], axis=-1)
        affine = np.asarray(wrappers[0].affine)
    else:
        wrapper = dicomwrappers.wrapper_from_file(series)
        data, affine = wrapper.get_data(), np.asarray(wrapper.affine)
    values = np.zeros(data.shape[:3], np.uint8)
    values[(*BOX, TOOL_SLICE)] = 1
    path = out / "nibabel-mask.nii.gz"
    nibabel.save(nibabel.Nifti1Image(values, LPS_FROM_RAS @ affine), path)
    return path, data[:, :, TOOL_SLICE]


TOOLS = {"SimpleITK": simpleitk_mask, "Slicer": slicer_mask, "nibabel": nibabel_mask}
# nibabel cannot build an affine for pydicom-data's enhanced CT ("Not enough information for affine").
NOT_SUPPORTED_BY_TOOL = {("enhanced CT", "nibabel")}


def engine_slice_showing(volume, tool_pixels: np.ndarray) -> int:
    """The one engine slice holding the image the tool showed (stored or rescaled values)."""
    matches = [k for k in range(volume.num_slices)
               if np.allclose(volume.pixels[k], tool_pixels) or np.allclose(volume.modality_values(k), tool_pixels)]
    assert len(matches) == 1, f"tool slice matches engine slices {matches}"
    return matches[0]


# --- every tool, every series --------------------------------------------------------------------


@pytest.mark.parametrize("series", list(SERIES), indirect=True)
@pytest.mark.parametrize("tool", list(TOOLS))
def test_mask_painted_by_a_tool_selects_the_same_voxels(series, tool, request, tmp_path, caplog):
    if (request.node.callspec.params["series"], tool) in NOT_SUPPORTED_BY_TOOL:
        pytest.skip(f"{tool} cannot read this file")
    volume = read_volume(series)
    mask_path, tool_pixels = TOOLS[tool](series, tmp_path)
    k = engine_slice_showing(volume, tool_pixels)

    with caplog.at_level("INFO", logger="medgen.imaging.masks"):
        mask = read_mask(mask_path, volume)
    expected = np.zeros(volume.pixels.shape[:3], bool)
    expected[(k, *BOX)] = True
    np.testing.assert_array_equal(mask, expected)
    assert select_slices(mask, None, False, volume) == [k]
    assert select_slices(mask, [k], False, volume) == [k]
    assert "mask on the volume's grid" in caplog.text


def test_engine_reads_a_tilted_series_as_slicer_does_and_unlike_simpleitk(tmp_path):
    """Slicer's reader (vtkITK archetype reader, as its DICOM plugin calls it) gives the engine's matrix;
    SimpleITK puts the slice axis on the plane's normal, so its slice 4 lies about 7 mm from the real one."""
    slicer = pytest.importorskip("slicer")
    import vtk

    series = tilted_ct(tmp_path)
    volume = read_volume(series)
    ras_to_ijk = slicer_series_reader(slicer, series).GetRasToIjkMatrix()
    ijk_to_ras = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Invert(ras_to_ijk, ijk_to_ras)
    slicer_ijk_to_lps = LPS_FROM_RAS @ np.array([[ijk_to_ras.GetElement(r, c) for c in range(4)] for r in range(4)])
    np.testing.assert_allclose(slicer_ijk_to_lps, volume.ijk_to_lps, atol=1e-4)

    image = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series)))
    itk_last = np.array(image.TransformIndexToPhysicalPoint((0, 0, 4)))
    engine_last = (volume.ijk_to_lps @ [0, 0, 4, 1])[:3]
    # both 20 mm from slice 0, along directions 20 degrees apart: a chord of 2 * 20 * sin(10 degrees)
    assert np.linalg.norm(itk_last - engine_last) == pytest.approx(40 * np.sin(np.deg2rad(10)), rel=1e-3)


@pytest.mark.parametrize(
    "tool, grid",
    [
        ("SimpleITK", "as ITK/SimpleITK and Slicer 5.6 read a series"),
        ("Slicer", "as Slicer 5.8+ reads a series"),
        ("nibabel", "nibabel-style affine"),
    ],
)
def test_tilted_ct_masks_are_matched_on_the_grid_their_tool_builds(tmp_path, tool, grid, caplog):
    """At 20 degrees of gantry tilt the grids part by far more than a voxel; each mask is matched exactly
    on the grid its tool gives the series, and means the same image slice."""
    series = tilted_ct(tmp_path)
    volume = read_volume(series)
    shear = volume.reader_grids()[0][1][:3, 2] - volume.reader_grids()[1][1][:3, 2]
    assert np.linalg.norm(shear) > 1.0  # mm per slice between Slicer 5.8's grid and ITK's
    mask_path, tool_pixels = TOOLS[tool](series, tmp_path)
    with caplog.at_level("INFO", logger="medgen.imaging.masks"):
        mask = read_mask(mask_path, volume)
    k = engine_slice_showing(volume, tool_pixels)
    assert select_slices(mask, None, False, volume) == [k]
    assert grid in caplog.text
    assert "re-indexed" in caplog.text or "same grid" in caplog.text


def test_simpleitk_and_slicer_masks_on_the_same_series_select_the_same_physical_slice(tmp_path):
    for name in ("tilted CT", "tilted MR pair", "enhanced CT", "enhanced MR"):
        root = tmp_path / name.replace(" ", "-")
        root.mkdir()
        series = SERIES[name](root)
        volume = read_volume(series)
        out = tmp_path / f"{name.replace(' ', '-')}-masks"
        out.mkdir()
        (itk_path, itk_pixels), (slicer_path, slicer_pixels) = simpleitk_mask(series, out), slicer_mask(series, out)
        np.testing.assert_allclose(itk_pixels, slicer_pixels)  # both tools' slice 1 is one image
        itk_mask, slicer_mask_ = read_mask(itk_path, volume), read_mask(slicer_path, volume)
        np.testing.assert_array_equal(itk_mask, slicer_mask_, err_msg=name)
        assert select_slices(itk_mask, None, False, volume) == [engine_slice_showing(volume, itk_pixels)]


# --- the cases ---------------------------------------------------------------------------


def test_tilted_mr_pair_mask_on_the_normal_grid_is_accepted(tmp_path, caplog):
    """The reported case: SimpleITK's grid for the 0.3-degree pair drifts 0.016 mm from the slice positions."""
    series = tilted_mr_pair(tmp_path)
    volume = read_volume(series)
    image = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series)))
    values = np.zeros((2, 256, 256), np.uint8)
    values[1, 100:140, 90:130] = 1
    mask = sitk.GetImageFromArray(values)
    mask.CopyInformation(image)
    sitk.WriteImage(mask, str(tmp_path / "mask.nrrd"))
    drift = volume.reader_grids()[1][1][:3, 2] - volume.ijk_to_lps[:3, 2]
    assert 0.01 < np.linalg.norm(drift) < 0.02  # mm per slice: ITK's grid against the slice positions

    with caplog.at_level("INFO", logger="medgen.imaging.masks"):
        fitted = read_mask(tmp_path / "mask.nrrd", volume)
    assert select_slices(fitted, [1], False, volume) == [1]
    np.testing.assert_array_equal(fitted, values.astype(bool))
    assert "same grid; matched as read with plane normal" in caplog.text


def write_rotated_mask(path: Path, volume, values: np.ndarray, degrees: float) -> Path:
    """``values`` on the volume's grid turned by ``degrees`` about the slice axis through voxel (0, 0, 0)."""
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    matrix = volume.ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (rotation @ (matrix / spacing)).flatten()])
    image.SetOrigin([float(v) for v in volume.ijk_to_lps[:3, 3]])
    sitk.WriteImage(image, str(path))
    return path


def test_small_rotation_is_within_tolerance_and_a_larger_one_needs_resampling(tmp_path, caplog):
    """Decided by the largest displacement of a labelled voxel centre, not by an angle tolerance."""
    volume = read_volume(axial_ct(tmp_path))
    full = np.ones((5, 128, 128), np.uint8)
    # 0.05 degrees over 128 voxels: 0.11 voxel at the far corner
    with caplog.at_level("INFO", logger="medgen.imaging.masks"):
        fitted = read_mask(write_rotated_mask(tmp_path / "small.nrrd", volume, full, 0.05), volume)
    assert fitted.all()
    assert "within tolerance (mask voxels up to 0.11" in caplog.text
    # 0.5 degrees: more than a voxel across the whole grid, refused ...
    with pytest.raises(InputError, match=r"turned by up to 0.5 degrees.*pass --resample-mask"):
        read_mask(write_rotated_mask(tmp_path / "turned.nrrd", volume, full, 0.5), volume)
    # ... but a small region near the turning point still lies within a quarter voxel everywhere
    corner = np.zeros((5, 128, 128), np.uint8)
    corner[2, 0:10, 0:10] = 1
    fitted = read_mask(write_rotated_mask(tmp_path / "corner.nrrd", volume, corner, 0.5), volume)
    np.testing.assert_array_equal(fitted, corner.astype(bool))


def test_oblique_mask_from_another_series_is_resampled_only_when_asked(tmp_path, caplog):
    """A segmentation made on another series of the study: 15 degrees turned, 1 mm voxels."""
    volume = read_volume(tilted_ct(tmp_path))
    angle = np.deg2rad(15)
    direction = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    values = np.zeros((30, 70, 70), np.uint8)
    values[8:20, 20:45, 25:50] = 1
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((1.0, 1.0, 1.0))
    image.SetDirection([float(v) for v in direction.flatten()])
    image.SetOrigin([float(v) for v in (volume.ijk_to_lps @ [30, 30, 0, 1])[:3]])
    path = tmp_path / "other-series.nii.gz"
    sitk.WriteImage(image, str(path))

    with pytest.raises(InputError, match=r"other-series.nii.gz: mask lies on another grid: .*--resample-mask"):
        read_mask(path, volume)
    with caplog.at_level("INFO", logger="medgen.imaging.masks"):
        fitted = read_mask(path, volume, resample=True)

    # brute force over every voxel: each volume voxel centre takes its nearest mask voxel ...
    mask_ijk_to_lps = np.eye(4)
    mask_ijk_to_lps[:3, :3] = direction  # 1 mm voxels
    mask_ijk_to_lps[:3, 3] = image.GetOrigin()
    for ci, cj, ck in np.random.default_rng(0).integers(0, 30, size=(20, 3)):  # the matrix is SimpleITK's
        np.testing.assert_allclose((mask_ijk_to_lps @ [ci, cj, ck, 1])[:3],
                                   image.TransformIndexToPhysicalPoint((int(ci), int(cj), int(ck))))
    k, j, i = np.indices(volume.pixels.shape)
    volume_points = np.stack([i, j, k, np.ones_like(i)], axis=-1).reshape(-1, 4) @ volume.ijk_to_lps.T
    nearest = np.floor(volume_points @ np.linalg.inv(mask_ijk_to_lps).T + 0.5).astype(int)[:, :3]
    inside = np.all((nearest >= 0) & (nearest < [70, 70, 30]), axis=1)
    expected = np.zeros(inside.shape, bool)
    expected[inside] = values[nearest[inside, 2], nearest[inside, 1], nearest[inside, 0]] != 0
    np.testing.assert_array_equal(fitted, expected.reshape(volume.pixels.shape))
    assert fitted.any()

    # ... and a mask voxel changed label when the volume voxel holding its centre has the other label
    ck, cj, ci = np.indices(values.shape)
    mask_points = np.stack([ci, cj, ck, np.ones_like(ci)], axis=-1).reshape(-1, 4) @ mask_ijk_to_lps.T
    holder = np.floor(mask_points @ np.linalg.inv(volume.ijk_to_lps).T + 0.5).astype(int)[:, :3]
    inside = np.all((holder >= 0) & (holder < [128, 128, volume.num_slices]), axis=1)
    holder_label = np.zeros(inside.shape, bool)
    holder_label[inside] = fitted[holder[inside, 2], holder[inside, 1], holder[inside, 0]]
    changed = int(np.count_nonzero(holder_label != (values.reshape(-1) != 0)))
    assert 0 < changed < values.sum()
    assert f"{int(values.sum())} labelled mask voxels, {int(fitted.sum())} labelled volume voxels, " \
           f"{changed} mask voxels changed label" in caplog.text


# --- slice order of a multi-frame file -----------------------------------------------------------


def test_enhanced_ct_slices_follow_the_plane_normal_not_the_frame_order(tmp_path):
    """Frames 1, 2 ascend in z; the normal of (-1,0,0)x(0,1,0) points to -z, so slice 0 is frame 2.

    ITK and Slicer keep file order for one multi-frame file (their slice 0 is frame 1); a mask they
    write still lands on the right frame because its grid places frame 1 where it is.
    """
    volume = read_volume(enhanced_ct(tmp_path))
    assert volume.frame_numbers == [2, 1]
    positions = [(volume.ijk_to_lps @ [0, 0, k, 1])[2] for k in range(2)]
    assert positions == pytest.approx([-149.0, -159.0])

    itk_path, itk_pixels = simpleitk_mask(volume.source_paths[0], tmp_path)  # paints ITK slice 1 = frame 2
    frame_2 = pydicom.dcmread(dicom_testfile("eCT_Supplemental.dcm")).pixel_array[1]
    assert engine_slice_showing(volume, itk_pixels) == 0
    np.testing.assert_array_equal(volume.pixels[0], frame_2)
    mask = read_mask(itk_path, volume)
    assert select_slices(mask, None, False, volume) == [0]
    with pytest.raises(InputError, match=r"empty on slice 1 \(frame 1; slices follow the plane's normal, not frame "
                                         r"order\); masked slices: 0 \(frame 2;"):
        select_slices(mask, [1], False, volume)


# --- the command line ----------------------------------------------------------------------------


def test_cli_refuses_an_oblique_mask_naming_the_flag_and_resamples_it_with_the_flag(tmp_path, capsys, caplog):
    """`medgen inpaint` without a model: the mask is read before the model, so with the flag the run gets
    past the mask (a warning with the changed-label count) and stops at the missing model."""
    from medgen.cli import main

    volume = read_volume(tilted_ct(tmp_path))
    values = np.zeros((5, 64, 64), np.uint8)
    values[2, 10:20, 10:20] = 1
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((1.0, 1.0, 5.0))  # axial 1 mm voxels: another plane and spacing than the tilted CT's
    image.SetOrigin([float(v) for v in volume.ijk_to_lps[:3, 3]])
    sitk.WriteImage(image, str(tmp_path / "mask.nii.gz"))
    argv = ["inpaint", str(tmp_path / "tilted-ct"), "--mask", str(tmp_path / "mask.nii.gz"), "--prompt", "lesion",
            "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "out"), "--all-slices"]

    assert main(argv) == 2
    refused = capsys.readouterr().err
    assert "mask lies on another grid" in refused and "pass --resample-mask" in refused

    with caplog.at_level("WARNING", logger="medgen.imaging.masks"):
        assert main(argv + ["--resample-mask"]) == 2
    error = capsys.readouterr().err
    assert "mask lies on another grid" not in error and "no-model" in error
    assert "resampled the mask onto the volume's grid by nearest neighbour" in caplog.text
    assert "100 labelled mask voxels" in caplog.text and "mask voxels changed label" in caplog.text
    assert not (tmp_path / "out").exists()


def test_batch_manifest_slice_and_resample_mask_columns_mean_what_the_cli_options_mean(tmp_path):
    """A manifest row goes through the same InpaintRequest, read_mask and select_slices as `medgen inpaint`:
    `slice` 0 of the enhanced CT is frame 2, where the SimpleITK mask painted on ITK's slice 1 lands."""
    from medgen.batch.manifest import read_manifest

    series = enhanced_ct(tmp_path)
    mask_path, _ = simpleitk_mask(series, tmp_path)
    manifest = tmp_path / "rows.csv"
    manifest.write_text(f"id,input,mask,prompt,slice,resample-mask\nct,{series.name},{mask_path.name},lesion,0,true\n")
    (row,) = read_manifest(manifest).rows
    request = row.request(tmp_path / "out")
    assert request.slices == [0] and request.resample_mask is True

    volume = read_volume(request.input)
    mask = read_mask(request.mask, volume, resample=request.resample_mask)
    assert select_slices(mask, request.slices, request.all_slices, volume) == [0]
    assert volume.frame_numbers[0] == 2
