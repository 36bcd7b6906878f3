"""A job as the panel runs it (MedGenSlicerLib.job_session) on Slicer's core libraries against a real engine:
one preview volume per job whatever the number of variants, each variant kept as its small box,
accepted variants kept and the rest removed when the user moves on, re-attaching by job id, and no
display node left behind by a variant that could not be placed."""

from __future__ import annotations

import time

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene") or not hasattr(slicer, "vtkSlicerSegmentationsModuleLogic"):
    pytest.skip("the 'slicer' package here is not Slicer's core libraries (slicer-core)", allow_module_level=True)
vtk = pytest.importorskip("vtk")

from MedGenSlicerLib import EngineClient  # noqa: E402
from MedGenSlicerLib.job_session import JobSession  # noqa: E402
from MedGenSlicerLib.geometry import crop_slab  # noqa: E402
from MedGenSlicerLib.nrrd import NrrdImage  # noqa: E402
from MedGenSlicerLib.scene import (  # noqa: E402
    ACCEPTED_ATTRIBUTE,
    PREVIEW_ATTRIBUTE,
    SYNTHETIC_ATTRIBUTE,
    UploadBuilder,
    ijk_to_ras,
    load_variant,
)
from test_scene_slicer import make_segment, parameters, register_converter_rules  # noqa: E402


@pytest.fixture()
def scene():
    register_converter_rules()
    mrml = slicer.vtkMRMLScene()
    slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(mrml)
    yield mrml
    mrml.Clear(True)


def ct_volume(scene, slices=8):
    rows, columns = np.mgrid[:96, :128]
    body = ((rows - 48) ** 2 / 40**2 + (columns - 64) ** 2 / 55**2 < 1)
    rng = np.random.default_rng(3)
    voxels = np.where(body, 40, -1000)[None] + rng.normal(0, 12, (slices, 96, 128))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    image = vtk.vtkImageData()
    image.SetDimensions(128, 96, slices)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    node.SetAndObserveImageData(image)
    node.SetSpacing(0.8, 0.8, 2.0)
    node.SetOrigin(-50.0, 30.0, 12.0)
    node.CreateDefaultDisplayNodes()
    slicer.util.arrayFromVolume(node)[:] = voxels.astype(np.int16)
    return node


def volume_nodes(scene):
    collection = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    return [collection.GetItemAsObject(n) for n in range(collection.GetNumberOfItems())]


def display_nodes(scene):
    return scene.GetNodesByClass("vtkMRMLScalarVolumeDisplayNode").GetNumberOfItems()


def run(session, timeout=180.0):
    updates, deadline = [], time.monotonic() + timeout
    while session.active and time.monotonic() < deadline:
        updates += session.tick()
        time.sleep(0.02)
    assert not session.active, f"the session did not end: {[u.kind for u in updates]}"
    return updates


def test_one_preview_volume_per_job_shows_each_variant_and_the_rest_stays_small(engine, scene):
    volume = ct_volume(scene)
    segmentation, segment_id, _ = make_segment(scene, volume)
    source = slicer.util.arrayFromVolume(volume).copy()
    displays_before = display_nodes(scene)

    def builder(templates, folder):
        return UploadBuilder(volume, segmentation, segment_id, parameters(num_variants=3, mask_dilate_mm=1.0),
                             folder=folder, use_dicom_templates=templates, chunk_slices=3)

    session = JobSession(EngineClient(engine.url, engine.token), volume, make_builder=builder, poll_interval=0.1)
    updates = run(session)
    kinds = [u.kind for u in updates]
    assert kinds.count("variant") == 3 and kinds[-1] in ("ended", "shown") and session.final_state == "succeeded"
    previews = [n for n in volume_nodes(scene) if n.GetAttribute(PREVIEW_ATTRIBUTE)]
    assert len(previews) == 1 and len(volume_nodes(scene)) == 2, "one preview volume, not a clone per variant"
    preview = previews[0]
    assert preview.GetAttribute(SYNTHETIC_ATTRIBUTE) == "true" and session.preview.shown == 1
    j0, j1, i0, i1 = session.region
    for slab in session.variants.values():
        assert slab.values.shape[1:] == (j1 - j0, i1 - i0) and slab.nbytes < source.nbytes / 10

    def expected(index):
        full = source.copy()
        from MedGenSlicerLib.geometry import paste_into

        slab = session.variants[index]
        paste_into(full, ijk_to_ras(volume), slab.values, slab.ijk_to_ras)
        return full

    # the preview holds the slab the job was sent (the painted slices), where it lies in the source
    k0, k1 = session.slab
    assert (k0, k1) == (2, 4) and slicer.util.arrayFromVolume(preview).nbytes == source[k0:k1].nbytes
    np.testing.assert_allclose(ijk_to_ras(preview), crop_slab(source, ijk_to_ras(volume), k0, k1)[1], atol=1e-9)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(preview), expected(1)[k0:k1])
    assert not np.array_equal(expected(1), source)
    for index in (3, 2):  # the box of the variant shown before is put back from the source
        session.show(index)
        run(session)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(preview), expected(index)[k0:k1])
    assert not preview.GetSaveWithScene(), "an unaccepted preview would be saved with the scene"

    kept = session.accept(2, "SYNTHETIC CT v2 (accepted)")
    assert kept is preview and kept.GetAttribute(ACCEPTED_ATTRIBUTE) == "true" and not kept.GetAttribute(PREVIEW_ATTRIBUTE)
    assert kept.GetSaveWithScene()
    session.show(1)  # a new preview for the next look
    run(session)
    assert len(volume_nodes(scene)) == 3
    folder = session._process.folder
    session.close()  # moving on: the unaccepted preview leaves, the accepted volume stays
    names = sorted(n.GetName() for n in volume_nodes(scene))
    assert names == ["CT", "SYNTHETIC CT v2 (accepted)"], names
    assert display_nodes(scene) == displays_before + 1  # the accepted volume's only
    assert not folder.exists(), "the job's private folder (variants are patient data) stayed on disk"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), source)


def test_reattach_by_job_id_brings_the_variants_back_into_a_new_preview(engine, scene):
    volume = ct_volume(scene)
    segmentation, segment_id, _ = make_segment(scene, volume)
    client = EngineClient(engine.url, engine.token)
    first = JobSession(client, volume, make_builder=lambda templates, folder: UploadBuilder(
        volume, segmentation, segment_id, parameters(num_variants=2), folder=folder), poll_interval=0.1)
    while first.job_id is None:
        first.tick()
        time.sleep(0.02)
    job_id, region = first.job_id, first.region
    while first.slab is None:
        first.tick()
    first.close()  # Slicer closed while the engine computes
    assert not [n for n in volume_nodes(scene) if n.GetAttribute(PREVIEW_ATTRIBUTE)]

    stale = JobSession(client, volume, job_id=job_id, slab=first.slab, region=region, poll_interval=0.1)
    run(stale)
    stale.detach()  # a panel closed (module reload, Slicer exit): its preview stays in the scene
    again = JobSession(client, volume, job_id=job_id, slab=first.slab, region=region, poll_interval=0.1)
    assert not [n for n in volume_nodes(scene) if n.GetAttribute(PREVIEW_ATTRIBUTE)], "the stale preview stayed"
    run(again)
    assert len([n for n in volume_nodes(scene) if n.GetAttribute(PREVIEW_ATTRIBUTE)]) == 1
    assert again.final_state == "succeeded" and sorted(again.variants) == [1, 2]
    assert again.preview is not None and again.preview.shown == 1
    again.close()


def test_a_variant_that_cannot_be_placed_leaves_no_volume_or_display_node(scene):
    volume = ct_volume(scene)
    nodes_before, displays_before = len(volume_nodes(scene)), display_nodes(scene)
    matrix = ijk_to_ras(volume)
    matrix[:3, 3] += 6 * matrix[:3, 2]  # on the grid, but reaching past the last slice
    image = NrrdImage(np.zeros((4, 96, 128), np.int16), matrix)

    class Source:
        rescale_slope, rescale_intercept = [1.0], [0.0]

    class Result:
        source, job_id = Source(), "job"

    class Variant:
        index, seed = 1, 1

    with pytest.raises(ValueError, match="outside the source volume"):
        load_variant(volume, image, Result(), Variant())
    assert len(volume_nodes(scene)) == nodes_before and display_nodes(scene) == displays_before


def test_a_volume_without_dicom_files_goes_with_the_modality_the_user_states(scene, tmp_path):
    """A NIfTI/NRRD volume has no DICOM Modality: the panel's Modality choice is sent, so an MR gets the
    model's MR contract and adapter; without a choice nothing is claimed."""
    import json

    volume = ct_volume(scene)
    segmentation, segment_id, _ = make_segment(scene, volume)
    for stated, sent in (("MR", "MR"), (None, None)):
        folder = tmp_path / f"upload-{stated}"
        folder.mkdir()
        builder = UploadBuilder(volume, segmentation, segment_id, parameters(source_modality=stated), folder=folder)
        fields = dict(builder.build()["fields"])
        assert json.loads(fields["parameters"]).get("source_modality") == sent
