"""MedGenSlicerLib.scene on Slicer's own core libraries (the slicer-core wheel: MRML, the Volumes and
Segmentations logic, slicer.util) against a real engine.

The scene is what Slicer holds after loading a DICOM series: a volume read by Slicer's own archetype
reader (GDCM through vtkITK) from an oblique CT series, with the ``DICOM.instanceUIDs`` attribute
Slicer's DICOM plugin sets, and a segmentation made through the Segmentations logic. The series is
written from pydicom's real ``CT_small.dcm``, tilted and shifted per slice so every slice differs.
Skipped where slicer-core is not installed (Slicer's own Python 3.9, numpy 1.x).
"""

from __future__ import annotations

import copy
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene") or not hasattr(slicer, "vtkSlicerSegmentationsModuleLogic"):
    pytest.skip("the 'slicer' package here is not Slicer's core libraries (slicer-core)", allow_module_level=True)
vtk = pytest.importorskip("vtk")
pydicom = pytest.importorskip("pydicom")

from MedGenSlicerLib import EngineClient, InpaintParameters, JobMonitor, RequestRefused, read_nrrd  # noqa: E402
from MedGenSlicerLib.geometry import crop_slab, paste_into  # noqa: E402
from MedGenSlicerLib.jobs import wait_for_monitor  # noqa: E402
from MedGenSlicerLib.scene import (  # noqa: E402
    DICOM_UIDS_ATTRIBUTE,
    SYNTHETIC_ATTRIBUTE,
    ijk_to_ras,
    load_variant,
    segment_mask_slab,
    upload_from_scene,
)

NUM_SLICES = 6
MASK_SLICES = (2, 3)
MASK_ROWS, MASK_COLUMNS = slice(50, 70), slice(40, 64)


def register_converter_rules() -> None:
    """What Slicer's Segmentations module does at start-up (qSlicerSegmentationsModule::setup)."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


class FolderOfInstances:
    """The two questions the module asks Slicer's DICOM database, answered from files on disk."""

    def __init__(self, paths):
        self._paths, self._positions, self._modalities = {}, {}, {}
        for path in paths:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            self._paths[ds.SOPInstanceUID] = str(path)
            self._positions[ds.SOPInstanceUID] = [float(v) for v in ds.ImagePositionPatient]
            self._modalities[ds.SOPInstanceUID] = ds.Modality

    def path(self, uid):
        return self._paths.get(uid)

    def position(self, uid):
        return self._positions.get(uid)

    def modality(self, uid):
        return self._modalities.get(uid)


def write_series(folder: Path, orientation, position_of, shift: int, **attributes) -> list[Path]:
    """NUM_SLICES instances of pydicom's CT_small.dcm as one series: slice k at ``position_of(k)`` (LPS),
    its pixels rolled by ``shift * k`` columns so every slice differs; written in reverse order, so
    nothing depends on the files' order."""
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series_uid, paths = generate_uid(), []
    for k in range(NUM_SLICES):
        ds = copy.deepcopy(source)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ImageOrientationPatient = [round(float(v), 6) for v in orientation]
        ds.ImagePositionPatient = [round(float(v), 4) for v in position_of(k)]
        ds.InstanceNumber = k + 1
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.PixelData = np.roll(source.pixel_array, shift * k, axis=1).tobytes()
        paths.append(folder / f"{NUM_SLICES - k:03d}.dcm")
        ds.save_as(paths[-1])
    return paths


@pytest.fixture(scope="module")
def oblique_series(tmp_path_factory) -> list[Path]:
    """Six slices of an oblique CT series, each a shifted copy of pydicom's CT_small.dcm."""
    row = np.array([0.96, 0.28, 0.0]) / np.linalg.norm([0.96, 0.28, 0.0])
    column = np.array([-0.028, 0.096, -1.0])
    column = column - row * (row @ column)
    column /= np.linalg.norm(column)
    normal = np.cross(row, column)
    return write_series(tmp_path_factory.mktemp("oblique-ct"), (*row, *column),
                        lambda k: np.array([-30.0, 12.5, 40.0]) + k * 2.5 * normal, 3, SliceThickness=2.5)


@pytest.fixture()
def scene():
    register_converter_rules()
    mrml = slicer.vtkMRMLScene()
    slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(mrml)  # Slicer's scene always has one
    yield mrml
    mrml.Clear(True)


def load_series(scene, paths) -> object:
    """The series read by Slicer's own volume reader, marked like Slicer's DICOM plugin marks it."""
    logic = slicer.vtkSlicerVolumesLogic()
    logic.SetMRMLScene(scene)
    files = vtk.vtkStringArray()
    for path in sorted(paths):
        files.InsertNextValue(str(path))
    node = logic.AddArchetypeVolume(str(sorted(paths)[0]), "CT oblique", 0, files)
    assert node is not None, "Slicer's reader could not read the series"
    uids = [pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in paths]
    node.SetAttribute(DICOM_UIDS_ATTRIBUTE, " ".join(uids))
    logic.SetMRMLScene(None)
    return node


def make_segment(scene, volume_node):
    """A segment painted on MASK_SLICES, imported through the Segmentations logic."""
    shape = slicer.util.arrayFromVolume(volume_node).shape
    labelmap = np.zeros(shape, np.uint8)
    for k in MASK_SLICES:
        labelmap[k, MASK_ROWS, MASK_COLUMNS] = 1
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "painted")
    label_node.SetIJKToRASMatrix(matrix)
    image = vtk.vtkImageData()
    image.SetDimensions(shape[2], shape[1], shape[0])
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    label_node.SetAndObserveImageData(image)
    slicer.util.arrayFromVolume(label_node)[:] = labelmap
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lesion")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label_node, segmentation)
    scene.RemoveNode(label_node)
    return segmentation, segmentation.GetSegmentation().GetNthSegmentID(0), labelmap


def parameters(**changes) -> InpaintParameters:
    values = dict(prompt="hypodense liver lesion", num_inference_steps=1, guidance_scale=1.0, seed=5,
                  mask_dilate_mm=0.0)
    values.update(changes)
    return InpaintParameters(**values)


def run_job(client, upload, timeout=180.0):
    """What the panel's timer does: follow the job; returns the variant events."""
    monitor = JobMonitor(client, upload, poll_interval=0.1).start()
    events, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        events += monitor.drain()
        if events and events[-1].kind in ("finished", "error"):
            break
        time.sleep(0.05)
    assert events and events[-1].kind == "finished", events[-1].error if events else "no events"
    return monitor.job_id, [event for event in events if event.kind == "variant"]


def geometry(node):
    return np.array(node.GetOrigin()), np.array(node.GetSpacing()), _directions(node)


def _directions(node):
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])


# --- without an engine ---------------------------------------------------------------------------


def test_slicer_reads_the_oblique_series_and_the_mask_slab_comes_from_the_segmentations_logic(scene, oblique_series):
    node = load_series(scene, oblique_series)
    directions = _directions(node)
    assert abs(directions[2, 0]) > 0.01 or abs(directions[2, 1]) > 0.01, "the series should be oblique"
    segmentation, segment_id, labelmap = make_segment(scene, node)
    segmentation.CreateDefaultDisplayNodes()  # as Slicer shows it; the export would make it otherwise
    nodes_before = [scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())]

    mask, k0 = segment_mask_slab(node, segmentation, segment_id)
    assert (k0, mask.shape[0]) == (2, 2)
    np.testing.assert_array_equal(mask, labelmap[2:4])
    mask, k0 = segment_mask_slab(node, segmentation, segment_id, slices=[3])
    assert (k0, mask.shape[0]) == (3, 1)
    nodes_after = [scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())]
    assert nodes_after == nodes_before, "the temporary export nodes stayed in the scene"
    with pytest.raises(ValueError, match="empty on slice 5"):
        segment_mask_slab(node, segmentation, segment_id, slices=[5])


def test_upload_sends_the_node_voxels_on_its_own_geometry_and_dicom_files_as_templates(scene, oblique_series):
    node = load_series(scene, oblique_series)
    segmentation, segment_id, labelmap = make_segment(scene, node)
    lookup = FolderOfInstances(oblique_series)

    upload = upload_from_scene(node, segmentation, segment_id, parameters(), dicom=lookup)
    assert (upload.slab_start, upload.slab_stop) == (2, 4)
    parts = {}
    for part in upload.files:
        parts.setdefault(part.field, []).append(part)
    assert sorted(parts) == ["mask", "source", "source_pixels"]
    _, slab_matrix = crop_slab(labelmap, ijk_to_ras(node), 2, 4)
    pixels = read_nrrd(parts["source_pixels"][0].content)
    np.testing.assert_allclose(pixels.ijk_to_ras, slab_matrix, atol=1e-6)
    np.testing.assert_array_equal(pixels.array, slicer.util.arrayFromVolume(node)[2:4])
    np.testing.assert_array_equal(read_nrrd(parts["mask"][0].content).array, labelmap[2:4])
    # the templates are the two instances of slices 2 and 3, found by position, not by file order
    sent = {pydicom.dcmread(io.BytesIO(p.content)).InstanceNumber for p in parts["source"]}
    assert sent == {3, 4}

    # no DICOM database: the same voxels, as a volume of their own
    upload = upload_from_scene(node, segmentation, segment_id, parameters(), dicom=None)
    assert [part.field for part in upload.files] == ["source", "mask"]
    np.testing.assert_array_equal(read_nrrd(upload.files[0].content).array, slicer.util.arrayFromVolume(node)[2:4])


# --- against a real engine -----------------------------------------------------------------------


def test_round_trip_through_the_engine_keeps_geometry_and_everything_outside_the_mask(scene, oblique_series, engine):
    node = load_series(scene, oblique_series)
    source_voxels = slicer.util.arrayFromVolume(node).copy()
    segmentation, segment_id, labelmap = make_segment(scene, node)
    client = EngineClient(engine.url, engine.token)

    upload = upload_from_scene(node, segmentation, segment_id, parameters(num_variants=2),
                               dicom=FolderOfInstances(oblique_series))
    job_id, variants = run_job(client, upload)
    assert len(variants) == 2 and variants[0].result.source.format == "dicom"

    loaded = []
    for event in variants:
        variant_node = load_variant(node, event.image, event.result, event.variant)
        loaded.append(variant_node)
        assert variant_node.GetScene() is scene
        for expected, actual in zip(geometry(node), geometry(variant_node)):
            np.testing.assert_allclose(actual, expected, atol=1e-6)
        voxels = slicer.util.arrayFromVolume(variant_node)
        assert voxels.shape == source_voxels.shape and voxels.dtype == source_voxels.dtype
        outside = labelmap == 0
        np.testing.assert_array_equal(voxels[outside], source_voxels[outside])
        assert not np.array_equal(voxels[labelmap != 0], source_voxels[labelmap != 0])
        assert variant_node.GetAttribute(SYNTHETIC_ATTRIBUTE) == "true"
        assert variant_node.GetAttribute("MedGenSlicer.JobId") == job_id
        assert variant_node.GetAttribute(DICOM_UIDS_ATTRIBUTE) is None
        assert variant_node.GetName().startswith("SYNTHETIC CT oblique")
    # the source is untouched and the variants have voxels of their own
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), source_voxels)
    assert not np.array_equal(slicer.util.arrayFromVolume(loaded[0]), slicer.util.arrayFromVolume(loaded[1]))


def test_edited_voxels_are_sent_as_they_are_and_dicom_files_that_disagree_are_refused(scene, oblique_series, engine):
    node = load_series(scene, oblique_series)
    segmentation, segment_id, labelmap = make_segment(scene, node)
    client = EngineClient(engine.url, engine.token)
    lookup = FolderOfInstances(oblique_series)

    # An in-place edit outside the mask keeps the node's DICOM.instanceUIDs
    voxels = slicer.util.arrayFromVolume(node)
    voxels[2:4, :10, :10] = 900
    slicer.util.arrayFromVolumeModified(node)
    assert node.GetAttribute(DICOM_UIDS_ATTRIBUTE)
    edited = voxels.copy()

    upload = upload_from_scene(node, segmentation, segment_id, parameters(), dicom=lookup)
    sent = next(part for part in upload.files if part.field == "source_pixels")
    np.testing.assert_array_equal(read_nrrd(sent.content).array, edited[2:4])
    with pytest.raises(RequestRefused) as refused:
        client.submit(upload)
    assert refused.value.status == 400 and refused.value.code == "pixels_differ_from_dicom"
    assert "outside the mask" in str(refused.value) and "send its voxels without the DICOM files" in str(refused.value)

    # Sent without the templates, the edited voxels are what the engine inpaints and returns; the job
    # still says the files' modality, so the engine applies the model's contract for it
    upload = upload_from_scene(node, segmentation, segment_id, parameters(), dicom=lookup, use_dicom_templates=False)
    assert json.loads(dict(upload.fields)["parameters"])["source_modality"] == "CT"
    _, (event,) = run_job(client, upload)
    result = slicer.util.arrayFromVolume(load_variant(node, event.image, event.result, event.variant))
    np.testing.assert_array_equal(result[labelmap == 0], edited[labelmap == 0])


def test_a_clone_that_kept_the_dicom_reference_is_sent_as_its_own_voxels(scene, oblique_series, engine):
    """What Segment Editor's "Mask volume" makes: a full clone, DICOM attributes and all, then filled
    outside the segment."""
    node = load_series(scene, oblique_series)
    segmentation, segment_id, labelmap = make_segment(scene, node)
    masked = slicer.vtkSlicerVolumesLogic.CloneVolume(scene, node, "CT masked", True)
    assert masked.GetAttribute(DICOM_UIDS_ATTRIBUTE) == node.GetAttribute(DICOM_UIDS_ATTRIBUTE)
    voxels = slicer.util.arrayFromVolume(masked)
    voxels[labelmap == 0] = -1000
    slicer.util.arrayFromVolumeModified(masked)

    upload = upload_from_scene(masked, segmentation, segment_id, parameters(), dicom=FolderOfInstances(oblique_series))
    sent = read_nrrd(next(part for part in upload.files if part.field == "source_pixels").content)
    np.testing.assert_array_equal(sent.array, voxels[2:4])
    with pytest.raises(RequestRefused, match="differ from the DICOM files"):
        EngineClient(engine.url, engine.token).submit(upload)


def test_strength_below_one_also_refuses_edits_inside_the_mask(scene, oblique_series, engine):
    node = load_series(scene, oblique_series)
    segmentation, segment_id, labelmap = make_segment(scene, node)
    voxels = slicer.util.arrayFromVolume(node)
    voxels[2, 55, 45] += 300  # inside the mask only
    slicer.util.arrayFromVolumeModified(node)
    client = EngineClient(engine.url, engine.token)
    lookup = FolderOfInstances(oblique_series)

    with pytest.raises(RequestRefused, match="inside the mask, where strength 0.5"):
        client.submit(upload_from_scene(node, segmentation, segment_id, parameters(strength=0.5), dicom=lookup))
    # at full strength nothing of the source survives inside the mask: the job is accepted
    _, variants = run_job(client, upload_from_scene(node, segmentation, segment_id, parameters(), dicom=lookup))
    assert len(variants) == 1


def test_arrays_with_an_oblique_geometry_round_trip_without_dicom(scene, engine):
    """A volume that never was DICOM (a NRRD, a filter's output): its voxels on its own oblique grid."""
    angle = np.deg2rad(17.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag([0.7, 0.8, 2.5])
    matrix[:3, 3] = [12.5, -30.25, 101.0]
    rows, columns = np.mgrid[:40, :48]
    voxels = np.stack([(rows * 7 + columns * 5 + 40 * k) % 400 - 100 for k in range(5)]).astype(np.int16)

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "array volume")
    vtk_matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vtk_matrix.SetElement(r, c, matrix[r, c])
    node.SetIJKToRASMatrix(vtk_matrix)
    slicer.util.updateVolumeFromArray(node, voxels)
    segmentation, segment_id, labelmap = make_segment_on_array(scene, node)

    upload = upload_from_scene(node, segmentation, segment_id, parameters(), slices=[1])
    assert (upload.slab_start, upload.slab_stop) == (1, 2)
    _, (event,) = run_job(EngineClient(engine.url, engine.token), upload)
    variant_node = load_variant(node, event.image, event.result, event.variant)
    np.testing.assert_allclose(ijk_to_ras(variant_node), matrix, atol=1e-6)
    result = slicer.util.arrayFromVolume(variant_node)
    np.testing.assert_array_equal(np.delete(result, 1, axis=0), np.delete(voxels, 1, axis=0))
    np.testing.assert_array_equal(result[1][labelmap[1] == 0], voxels[1][labelmap[1] == 0])


def make_segment_on_array(scene, node):
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "painted on array")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(node)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("lesion")
    labelmap = np.zeros(slicer.util.arrayFromVolume(node).shape, np.uint8)
    labelmap[0:3, 10:20, 12:24] = 1
    # slicer.util's own writer of a segment from an array goes through the Segmentations logic too
    label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    label_node.CopyOrientation(node)
    slicer.util.updateVolumeFromArray(label_node, labelmap)
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label_node, segmentation, ids)
    scene.RemoveNode(label_node)
    return segmentation, segment_id, labelmap


def test_upload_and_variant_cost_a_slab_of_memory_not_copies_of_the_volume(scene):
    """numpy's allocations (which tracemalloc sees) stay near a slab's size on a 96-slice volume: the
    segment is exported a chunk at a time, the source is cut before it is copied, and the variant is
    written into its new node in place (the node's own voxels are VTK's, the one copy a new volume needs)."""
    import tracemalloc

    from MedGenSlicerLib.nrrd import NrrdImage
    from MedGenSlicerLib.results import JobResult
    from MedGenSlicerLib.scene import MASK_CHUNK_SLICES

    slices, rows, columns = 96, 128, 128
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "big")
    slicer.util.updateVolumeFromArray(node, np.full((slices, rows, columns), 40, np.int16))
    segmentation, segment_id, _ = make_segment(scene, node)
    volume_bytes = slices * rows * columns * 2
    chunk_bytes = MASK_CHUNK_SLICES * rows * columns * 2

    tracemalloc.start()
    try:
        upload = upload_from_scene(node, segmentation, segment_id, parameters())
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        k0, k1 = upload.slab_start, upload.slab_stop
        _, slab_matrix = crop_slab(np.empty(0), ijk_to_ras(node), k0, k1)
        image = NrrdImage(array=np.full((k1 - k0, rows, columns), 7, np.int16), ijk_to_ras=slab_matrix)
        result = JobResult.from_json({
            "job_id": "j", "state": "succeeded", "complete": True, "num_variants": 1, "variants": [],
            "source": {"format": "nrrd", "shape": [k1 - k0, rows, columns], "dtype": "int16", "modality": "CT",
                       "ijk_to_lps": (np.diag([-1.0, -1.0, 1.0, 1.0]) @ slab_matrix).tolist(),
                       "rescale_slope": [1.0] * (k1 - k0), "rescale_intercept": [0.0] * (k1 - k0),
                       "slices": list(range(k1 - k0))}})
        variant = type("Variant", (), {"index": 1, "seed": 3})()
        variant_node = load_variant(node, image, result, variant)
        _, variant_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (k0, k1) == (2, 4)
    assert upload_peak < chunk_bytes + volume_bytes / 8, f"upload peak {upload_peak} B for a {volume_bytes} B volume"
    assert variant_peak < volume_bytes / 8, f"variant peak {variant_peak} B for a {volume_bytes} B volume"
    voxels = slicer.util.arrayFromVolume(variant_node)
    assert (voxels[2:4] == 7).all() and (voxels[:2] == 40).all() and (voxels[4:] == 40).all()


@pytest.fixture(scope="module")
def tilted_series(tmp_path_factory) -> list[Path]:
    """Six axial slices of a gantry-tilted CT: each slice 2.5 mm up and 0.4 mm forward of the last."""
    return write_series(tmp_path_factory.mktemp("tilted-ct"), (1, 0, 0, 0, 1, 0),
                        lambda k: (-40.0, -30.0 + 0.4 * k, 20.0 + 2.5 * k), 2, GantryDetectorTilt=9.1)


def test_a_tilted_series_read_as_slicer_5_6_reads_it_goes_with_its_files_and_comes_back_in_place(
        engine, scene, tilted_series):
    """Slicer 5.6 (and ITK) put a tilted series' slice axis on the plane's normal, spacing the step's length:
    slice k of that grid lies k shears away from its file. A slab not starting at slice 0 went with its
    files on the volume's grid, which no grid of the engine's slab matched; now it goes on the grid its
    files give, and comes back onto the volume's own voxels."""
    node = load_series(scene, tilted_series)
    step = np.array([0.0, -0.4, 2.5])  # in RAS: LPS y forward is RAS y backward
    as_slicer_5_6 = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(as_slicer_5_6)
    for row, value in enumerate((0.0, 0.0, float(np.linalg.norm(step)))):
        as_slicer_5_6.SetElement(row, 2, value)
    node.SetIJKToRASMatrix(as_slicer_5_6)
    segmentation, segment_id, labelmap = make_segment(scene, node)
    source = slicer.util.arrayFromVolume(node).copy()

    upload = upload_from_scene(node, segmentation, segment_id, parameters(num_variants=1),
                               dicom=FolderOfInstances(tilted_series))
    assert (upload.slab_start, upload.slab_stop) == (2, 4)
    assert [part.field for part in upload.files].count("source") == 2, "the slab's DICOM files did not go along"
    client = EngineClient(engine.url, engine.token)
    slab_matrix = crop_slab(source, ijk_to_ras(node), 2, 4)[1]
    events = wait_for_monitor(JobMonitor(client, upload, poll_interval=0.1, slab_ijk_to_ras=slab_matrix).start(), 180)
    assert events[-1].kind == "finished", events[-1].error
    variant = next(event for event in events if event.kind == "variant")
    np.testing.assert_allclose(variant.image.ijk_to_ras, slab_matrix, atol=1e-9)
    placed = source.copy()
    paste_into(placed, ijk_to_ras(node), variant.image.array.astype(source.dtype), variant.image.ijk_to_ras)
    np.testing.assert_array_equal(np.delete(placed, [2, 3], axis=0), np.delete(source, [2, 3], axis=0))
    assert not np.array_equal(placed[2:4], source[2:4])
