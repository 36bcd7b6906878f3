"""Slicer's scene ⇄ the engine: the job upload from a volume and a segment, and each variant as a new volume.

Everything the module does with MRML nodes that needs no Qt. It runs inside Slicer (5.6 and later) and
on Slicer's core libraries alone (the ``slicer-core`` wheel), where it is tested. It works in the scene
the given nodes belong to, never in ``slicer.mrmlScene``, and it reads and writes only slabs of a
volume: a 600-slice CT costs a few slices of memory per job and per variant, not copies of the whole.

Importing this module needs neither Slicer nor VTK; calling it does.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .geometry import GeometryError, crop_slab, grid_mapping, instances_in_slab, paste_into
from .nrrd import NrrdImage
from .payload import InpaintParameters, JobUpload, slab_upload
from .results import JobResult, VariantInfo, to_modality_values

logger = logging.getLogger(__name__)

DICOM_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"  # set by Slicer's DICOM plugins, kept by clones and edits
SYNTHETIC_ATTRIBUTE = "MedGenSlicer.Synthetic"
JOB_ATTRIBUTE = "MedGenSlicer.JobId"
SEED_ATTRIBUTE = "MedGenSlicer.Seed"
MASK_CHUNK_SLICES = 32  # slices of the segment exported at a time while looking for the ones it touches
_IMAGE_POSITION_TAG = "0020,0032"
_MODALITY_TAG = "0008,0060"


class DicomLookup:
    """Where Slicer's DICOM database keeps an instance and where the instance lies (ImagePositionPatient)."""

    def __init__(self, database):
        self.database = database

    def path(self, uid: str) -> Optional[str]:
        path = self.database.fileForInstance(uid)
        return path if path and os.path.isfile(path) else None

    def position(self, uid: str) -> Optional[List[float]]:
        value = self.database.instanceValue(uid, _IMAGE_POSITION_TAG)
        try:
            return [float(v) for v in value.split("\\")] if value else None
        except ValueError:
            return None

    def modality(self, uid: str) -> Optional[str]:
        value = self.database.instanceValue(uid, _MODALITY_TAG)
        return value.strip() if value and value.strip() else None


def slicer_dicom_lookup() -> Optional[DicomLookup]:
    """Slicer's open DICOM database, or None (no database, or Slicer's core libraries without the app)."""
    import slicer

    database = getattr(slicer, "dicomDatabase", None)
    if database is None or not database.isOpen:
        return None
    return DicomLookup(database)


# --- geometry and voxels -------------------------------------------------------------------------


def ijk_to_ras(volume_node) -> np.ndarray:
    """The node's own IJK-to-RAS (origin, spacing and directions, oblique ones included)."""
    import vtk

    if volume_node.GetParentTransformNode() is not None:
        raise GeometryError(f"'{volume_node.GetName()}' is under a transform; harden it first "
                            f"(Data module → right-click → Harden transform)")
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def _voxels(volume_node) -> np.ndarray:
    """The node's current voxels as (k, j, i), a view on its image (nothing copied)."""
    import slicer

    if volume_node.GetImageData() is None:
        raise GeometryError(f"'{volume_node.GetName()}' has no voxels")
    return slicer.util.arrayFromVolume(volume_node)


def _reference_node(volume_node, k0: int, k1: int):
    """A volume node outside any scene that stands for slices [k0, k1) of ``volume_node``: the geometry
    Slicer exports a segment onto (its image has an extent but no voxels allocated)."""
    import slicer
    import vtk

    columns, rows, _ = volume_node.GetImageData().GetDimensions()
    _, matrix = crop_slab(np.empty((0,)), ijk_to_ras(volume_node), k0, k1)
    vtk_matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            vtk_matrix.SetElement(row, column, float(matrix[row, column]))
    reference = slicer.vtkMRMLScalarVolumeNode()
    reference.SetIJKToRASMatrix(vtk_matrix)
    image = vtk.vtkImageData()
    image.SetExtent(0, columns - 1, 0, rows - 1, 0, k1 - k0 - 1)
    reference.SetAndObserveImageData(image)
    return reference


def segment_mask_slab(volume_node, segmentation_node, segment_id: str,
                      slices: Optional[Sequence[int]] = None) -> Tuple[np.ndarray, int]:
    """The segment on the volume's grid, cut to the slices it touches: (uint8 (k, j, i) slab, first k).

    Exported through Slicer's Segmentations logic (so a segmentation on another grid, or under a
    transform, is resampled as Slicer would) a chunk of slices at a time, never the whole volume.
    ``slices`` limits the mask to those slices (the one in the Red view).
    """
    import slicer
    import vtk

    if not segment_id or segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise GeometryError(f"the segmentation '{segmentation_node.GetName()}' has no segment {segment_id!r}")
    _voxels(volume_node)  # refuses a node without voxels
    columns, rows, num_slices = volume_node.GetImageData().GetDimensions()
    wanted = sorted({int(k) for k in slices}) if slices is not None else list(range(num_slices))
    if any(not 0 <= k < num_slices for k in wanted):
        raise GeometryError(f"slices {wanted} reach outside the volume's 0..{num_slices - 1}")
    scene = volume_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "MedGenSlicer export (temporary)")
    segment_ids = vtk.vtkStringArray()
    segment_ids.InsertNextValue(segment_id)
    touched = {}
    try:
        for start in range(0, len(wanted), MASK_CHUNK_SLICES):
            chunk = wanted[start:start + MASK_CHUNK_SLICES]
            k0, k1 = chunk[0], chunk[-1] + 1
            exported = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, segment_ids, labelmap, _reference_node(volume_node, k0, k1),
                slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
            if not exported:
                raise GeometryError(f"Slicer could not export segment {segment_id!r} of "
                                    f"'{segmentation_node.GetName()}' onto '{volume_node.GetName()}'")
            part = slicer.util.arrayFromVolume(labelmap)
            if part.shape != (k1 - k0, rows, columns):
                raise GeometryError(f"the exported segment has shape {part.shape}, expected {(k1 - k0, rows, columns)}")
            for k in chunk:
                if part[k - k0].any():
                    touched[k] = (part[k - k0] != 0).astype(np.uint8)
    finally:
        _remove_with_display(scene, labelmap)
    if not touched:
        where = "" if slices is None else f" on slice {', '.join(str(k) for k in wanted)}"
        raise GeometryError(f"the segment is empty{where}; paint the region to inpaint in Segment Editor first")
    k0, k1 = min(touched), max(touched) + 1
    mask = np.zeros((k1 - k0, rows, columns), np.uint8)
    for k, plane in touched.items():
        mask[k - k0] = plane
    return mask, k0


def _remove_with_display(scene, node) -> None:
    """Remove a temporary node with the display and color nodes the export made for it."""
    display = node.GetDisplayNode()
    color = display.GetColorNode() if display is not None else None
    if color is not None and color.GetType() == color.User:
        scene.RemoveNode(color)
    if display is not None:
        scene.RemoveNode(display)
    scene.RemoveNode(node)


def dicom_templates(volume_node, k0: int, k1: int, lookup: Optional[DicomLookup]) -> List[str]:
    """The DICOM files of slices [k0, k1) where the node came from the DICOM database, else [].

    They serve only as header templates (study, patient, frame of reference): the voxels sent are the
    node's, and the engine refuses the job if the files disagree with them outside the mask.
    """
    uids = (volume_node.GetAttribute(DICOM_UIDS_ATTRIBUTE) or "").split()
    if not uids or lookup is None:
        return []
    paths, positions = [], []
    for uid in uids:
        path, position = lookup.path(uid), lookup.position(uid)
        if path is None or position is None or len(position) != 3:
            logger.info("MedGenSlicer: instance %s of '%s' is not in the DICOM database; sending voxels only",
                        uid, volume_node.GetName())
            return []
        paths.append(path)
        positions.append(position)
    try:
        numbers = instances_in_slab(positions, ijk_to_ras(volume_node), k0, k1)
    except GeometryError as error:
        logger.info("MedGenSlicer: '%s' does not match its DICOM files slice for slice (%s); sending voxels only",
                    volume_node.GetName(), error)
        return []
    return [paths[n] for n in numbers]


# --- upload and variants -------------------------------------------------------------------------


def volume_modality(volume_node, lookup: Optional[DicomLookup]) -> Optional[str]:
    """The Modality of the DICOM files the node was loaded from (its first instance), or None."""
    uids = (volume_node.GetAttribute(DICOM_UIDS_ATTRIBUTE) or "").split()
    if not uids or lookup is None:
        return None
    return lookup.modality(uids[0])


def upload_from_scene(volume_node, segmentation_node, segment_id: str, parameters: InpaintParameters,
                      slices: Optional[Sequence[int]] = None, *, dicom: Optional[DicomLookup] = None,
                      use_dicom_templates: bool = True) -> JobUpload:
    """The job of inpainting ``segment_id`` into ``volume_node``: the node's current voxels on its own
    IJK-to-RAS, cut to the slab the segment touches (on ``slices`` only, when given).

    Where the node came from the DICOM database (``dicom``: Slicer's, by default), its files of the slab
    go along as header templates, so the synthetic series joins the source's study.
    """
    parameters.check()
    lookup = dicom if dicom is not None else slicer_dicom_lookup()
    if parameters.source_modality is None:  # so that voxels sent alone keep the model's contract for it
        parameters = replace(parameters, source_modality=volume_modality(volume_node, lookup))
    matrix = ijk_to_ras(volume_node)
    mask_slab, k0 = segment_mask_slab(volume_node, segmentation_node, segment_id, slices)
    k1 = k0 + mask_slab.shape[0]
    source_slab, slab_matrix = crop_slab(_voxels(volume_node), matrix, k0, k1)
    templates: List[str] = []
    if use_dicom_templates:
        templates = dicom_templates(volume_node, k0, k1, lookup)
    return slab_upload(source_slab, mask_slab, slab_matrix, k0, parameters, templates=templates)


def load_variant(source_volume_node, image: NrrdImage, result: JobResult, variant: VariantInfo, *,
                 job_id: Optional[str] = None, name: Optional[str] = None):
    """A new volume node in the source's scene: the source's geometry, display and voxels, with the
    variant's slab in place; named and marked synthetic.

    The clone starts without voxels (no deep copy of the source), gets one copy of the source's voxels,
    and the variant is written into it where it lies: memory of one volume plus one slab.
    """
    import slicer
    import vtk

    # 1. Check that the variant fits before anything enters the scene
    matrix = ijk_to_ras(source_volume_node)
    source = _voxels(source_volume_node)
    values = to_modality_values(image.array, result.source.rescale_slope, result.source.rescale_intercept,
                                source.dtype)
    grid_mapping(matrix, image.ijk_to_ras)  # raises for a variant off the source's voxels

    # 2. A clone without voxels (its attributes, DICOM ones included, come along: drop those)
    scene = source_volume_node.GetScene()
    name = name or scene.GenerateUniqueName(f"SYNTHETIC {source_volume_node.GetName()} v{variant.index}")
    node = slicer.vtkSlicerVolumesLogic.CloneVolume(scene, source_volume_node, name, False)
    try:
        for attribute in list(node.GetAttributeNames() or ()):
            if attribute.startswith("DICOM."):
                node.RemoveAttribute(attribute)
        node.SetAttribute(SYNTHETIC_ATTRIBUTE, "true")
        node.SetAttribute(JOB_ATTRIBUTE, job_id or result.job_id)
        node.SetAttribute(SEED_ATTRIBUTE, str(variant.seed))

        # 3. Its own voxels: one copy of the source's, then the variant's slab written in place
        source_image = source_volume_node.GetImageData()
        voxels = vtk.vtkImageData()
        voxels.SetDimensions(source_image.GetDimensions())
        voxels.AllocateScalars(source_image.GetScalarType(), source_image.GetNumberOfScalarComponents())
        node.SetAndObserveImageData(voxels)
        target = slicer.util.arrayFromVolume(node)
        target[...] = source
        paste_into(target, matrix, values, image.ijk_to_ras)
        slicer.util.arrayFromVolumeModified(node)
    except BaseException:
        scene.RemoveNode(node)
        raise
    return node

