"""The engine's check of voxels sent beside DICOM header templates (medgen.server.template_check),
through the module's own upload builder and a real engine, on pydicom's real CT_small.dcm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from MedGenSlicerLib import EngineClient, InpaintParameters, RequestRefused, dicom_upload
from MedGenSlicerLib.nrrd import RAS_FROM_LPS
from MedGenSlicerLib.payload import slab_upload

pydicom = pytest.importorskip("pydicom")


@pytest.fixture(scope="module")
def ct():
    """CT_small.dcm as Slicer holds it: HU values and the IJK-to-RAS of the slice."""
    from pydicom.data import get_testdata_file

    path = Path(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(path)
    hu = (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).astype(np.int16)[np.newaxis]
    row, column = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = row * float(ds.PixelSpacing[1]), column * float(ds.PixelSpacing[0])
    lps[:3, 2] = np.cross(row, column) * float(ds.SliceThickness)
    lps[:3, 3] = [float(v) for v in ds.ImagePositionPatient]
    mask = np.zeros(hu.shape, np.uint8)
    mask[0, 60:80, 50:70] = 1
    return path, [float(v) for v in ds.ImagePositionPatient], RAS_FROM_LPS @ lps, hu, mask


def parameters(**changes):
    values = dict(prompt="liver cyst", num_inference_steps=1, seed=2)
    values.update(changes)
    return InpaintParameters(**values)


def test_voxels_that_match_their_dicom_files_are_accepted(engine, ct):
    path, position, ijk_to_ras, hu, mask = ct
    client = EngineClient(engine.url, engine.token)
    created = client.submit(dicom_upload([str(path)], [position], ijk_to_ras, mask, parameters(), volume=hu))
    client.cancel(created["id"])
    # the same voxels read in the other column order (another reader's choice) are the same voxels
    flipped = ijk_to_ras.copy()
    flipped[:3, 0] = -ijk_to_ras[:3, 0]
    flipped[:3, 3] = ijk_to_ras[:3, 3] + (hu.shape[2] - 1) * ijk_to_ras[:3, 0]
    upload = slab_upload(hu[:, :, ::-1], mask[:, :, ::-1], flipped, 0, parameters(), templates=[str(path)])
    client.cancel(client.submit(upload)["id"])


def test_voxels_changed_outside_the_mask_are_refused_with_the_slices_named(engine, ct):
    path, position, ijk_to_ras, hu, mask = ct
    edited = hu.copy()
    edited[0, :4, :4] += 50
    with pytest.raises(RequestRefused) as refused:
        EngineClient(engine.url, engine.token).submit(
            dicom_upload([str(path)], [position], ijk_to_ras, mask, parameters(), volume=edited))
    assert refused.value.status == 400 and refused.value.code == "pixels_differ_from_dicom"
    assert "16 voxel(s) outside the mask (slab slice 0)" in str(refused.value)


def test_voxels_on_another_grid_or_beside_a_volume_file_are_refused(engine, ct):
    path, position, ijk_to_ras, hu, mask = ct
    client = EngineClient(engine.url, engine.token)
    shifted = ijk_to_ras.copy()
    shifted[:3, 3] += ijk_to_ras[:3, 0] * 3  # three columns to the side
    upload = slab_upload(hu, mask, shifted, 0, parameters(), templates=[str(path)])
    with pytest.raises(RequestRefused, match="does not lie on the grid of the DICOM instances"):
        client.submit(upload)

    upload = slab_upload(hu, mask, ijk_to_ras, 0, parameters())
    upload.files.insert(1, type(upload.files[0])("source_pixels", "pixels.nrrd", upload.files[0].content))
    with pytest.raises(RequestRefused, match="goes with DICOM instances sent as templates"):
        client.submit(upload)
