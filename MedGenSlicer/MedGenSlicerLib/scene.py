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
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .geometry import GeometryError, changed_region, crop_slab, grid_mapping, instances_in_slab, paste_into, placement
from .nrrd import NrrdImage, NrrdSlabWriter
from .payload import FilePart, InpaintParameters, JobUpload, assemble_upload, slab_upload, upload_spec
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


def segment_mask_planes(volume_node, segmentation_node, segment_id: str, slices: Optional[Sequence[int]] = None,
                        chunk_slices: int = MASK_CHUNK_SLICES) -> Iterator[List[Tuple[int, np.ndarray]]]:
    """The segment on the volume's grid, a chunk of slices at a time: yields, per chunk, the (k, bool plane)
    of the slices it touches there (an empty list for a chunk it misses), so a GUI can take one chunk per step.

    Exported through Slicer's Segmentations logic (so a segmentation on another grid, or under a
    transform, is resampled as Slicer would), never the whole volume at once. ``slices`` limits the mask
    to those slices (the one in the slice view). Raises GeometryError after the last chunk when the
    segment touched none of them.
    """
    import slicer
    import vtk

    if not segment_id or segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise GeometryError(f"the segmentation '{segmentation_node.GetName()}' has no segment {segment_id!r}")
    _voxels(volume_node)  # refuses a node without voxels
    columns, rows, num_slices = volume_node.GetImageData().GetDimensions()
    wanted = sorted({int(k) for k in slices}) if slices is not None else _slices_near_segment(
        volume_node, segmentation_node, segment_id, num_slices)
    if any(not 0 <= k < num_slices for k in wanted):
        raise GeometryError(f"slices {wanted} reach outside the volume's 0..{num_slices - 1}")
    scene = volume_node.GetScene()
    segment_ids = vtk.vtkStringArray()
    segment_ids.InsertNextValue(segment_id)
    touched_any = False
    for start in range(0, len(wanted), chunk_slices):
        chunk = wanted[start:start + chunk_slices]
        k0, k1 = chunk[0], chunk[-1] + 1
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "MedGenSlicer export (temporary)")
        try:
            exported = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, segment_ids, labelmap, _reference_node(volume_node, k0, k1),
                slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
            if not exported:
                raise GeometryError(f"Slicer could not export segment {segment_id!r} of "
                                    f"'{segmentation_node.GetName()}' onto '{volume_node.GetName()}'")
            part = slicer.util.arrayFromVolume(labelmap)
            if part.shape != (k1 - k0, rows, columns):
                raise GeometryError(f"the exported segment has shape {part.shape}, expected {(k1 - k0, rows, columns)}")
            planes = [(k, part[k - k0] != 0) for k in chunk if part[k - k0].any()]
        finally:
            _remove_with_display(scene, labelmap)
        touched_any = touched_any or bool(planes)
        yield planes
    if not touched_any:
        where = "" if slices is None else f" on slice {', '.join(str(k) for k in wanted)}"
        raise GeometryError(f"the segment is empty{where}; paint the region to inpaint in Segment Editor first")


def _slices_near_segment(volume_node, segmentation_node, segment_id: str, num_slices: int) -> List[int]:
    """The volume slices the segment's bounds reach (one more each side), so a 300-slice CT is not scanned
    for a lesion on ten; every slice when the bounds are unknown or the segmentation is transformed."""
    everything = list(range(num_slices))
    if segmentation_node.GetParentTransformNode() is not None:
        return everything
    bounds = [0.0] * 6
    segmentation_node.GetSegmentation().GetSegment(segment_id).GetBounds(bounds)
    if not all(np.isfinite(bounds)) or bounds[0] > bounds[1]:
        return everything
    corners = np.array([[bounds[x], bounds[2 + y], bounds[4 + z], 1.0] for x in (0, 1) for y in (0, 1) for z in (0, 1)])
    k = np.linalg.solve(ijk_to_ras(volume_node), corners.T)[2]
    first, last = int(np.floor(k.min())) - 1, int(np.ceil(k.max())) + 1
    return list(range(max(0, first), min(num_slices, last + 1))) or everything


def segment_mask_slab(volume_node, segmentation_node, segment_id: str,
                      slices: Optional[Sequence[int]] = None) -> Tuple[np.ndarray, int]:
    """The segment on the volume's grid, cut to the slices it touches: (uint8 (k, j, i) slab, first k)."""
    touched = {k: plane for planes in segment_mask_planes(volume_node, segmentation_node, segment_id, slices)
               for k, plane in planes}
    columns, rows, _ = volume_node.GetImageData().GetDimensions()
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


def dicom_slab(volume_node, k0: int, k1: int, lookup: Optional[DicomLookup]) -> Tuple[List[str], Optional[np.ndarray]]:
    """The DICOM files of slices [k0, k1) where the node came from the DICOM database (else []), and the
    RAS position of the slab's first one (None without files).

    The files serve only as header templates (study, patient, frame of reference): the voxels sent are
    the node's, and the engine refuses the job if the files disagree with them outside the mask.
    """
    uids = (volume_node.GetAttribute(DICOM_UIDS_ATTRIBUTE) or "").split()
    if not uids or lookup is None:
        return [], None
    paths, positions = [], []
    for uid in uids:
        path, position = lookup.path(uid), lookup.position(uid)
        if path is None or position is None or len(position) != 3:
            logger.info("MedGenSlicer: instance %s of '%s' is not in the DICOM database; sending voxels only",
                        uid, volume_node.GetName())
            return [], None
        paths.append(path)
        positions.append(position)
    matrix = ijk_to_ras(volume_node)
    try:
        numbers = instances_in_slab(positions, matrix, k0, k1)
    except GeometryError as error:
        logger.info("MedGenSlicer: '%s' does not match its DICOM files slice for slice (%s); sending voxels only",
                    volume_node.GetName(), error)
        return [], None
    ras = {n: np.array([-float(positions[n][0]), -float(positions[n][1]), float(positions[n][2])]) for n in numbers}
    first = min(numbers, key=lambda n: float(np.linalg.solve(matrix, np.append(ras[n], 1.0))[2]))
    return [paths[n] for n in numbers], ras[first]


def slab_grid_for_templates(slab_matrix: np.ndarray, first_position_ras: Optional[np.ndarray]) -> np.ndarray:
    """The grid to send a slab on beside its DICOM files: the volume's own, starting where the slab's first
    file says it lies. They differ on a gantry-tilted series read as Slicer 5.6 and ITK read it (slice
    axis on the plane's normal): there slice k of the volume's grid lies k times the tilt's shear away
    from its file, and no grid of the engine's slab would match a mask placed on the volume's."""
    matrix = np.array(slab_matrix, dtype=np.float64)
    if first_position_ras is None:
        return matrix
    spacing = float(np.linalg.norm(matrix[:3, :2], axis=0).min())
    if np.linalg.norm(matrix[:3, 3] - first_position_ras) > 0.05 * spacing:  # not the rounding of stored positions
        matrix[:3, 3] = first_position_ras
    return matrix


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
    templates, first_position = dicom_slab(volume_node, k0, k1, lookup) if use_dicom_templates else ([], None)
    return slab_upload(source_slab, mask_slab, slab_grid_for_templates(slab_matrix, first_position), k0, parameters,
                       templates=templates)


class UploadBuilder:
    """A job's upload written from the scene to private files in short steps (`step`), so the GUI's timer
    can build a 300-slice upload without a stall: the segment a chunk of slices at a time, the voxels
    and the mask streamed into NRRD files, the DICOM files only named. ``spec`` is then what the worker
    sends (`worker.upload_from_task`), ``region`` the rows and columns the job may change.
    """

    def __init__(self, volume_node, segmentation_node, segment_id: str, parameters: InpaintParameters,
                 slices: Optional[Sequence[int]] = None, *, folder, dicom: Optional[DicomLookup] = None,
                 use_dicom_templates: bool = True, chunk_slices: int = 4):
        parameters.check()
        self.lookup = dicom if dicom is not None else slicer_dicom_lookup()
        if parameters.source_modality is None:  # so that voxels sent alone keep the model's contract for it
            parameters = replace(parameters, source_modality=volume_modality(volume_node, self.lookup))
        self.parameters = parameters
        self.volume_node, self.folder = volume_node, Path(folder)
        self.use_dicom_templates = use_dicom_templates
        self.chunk_slices = chunk_slices
        self.matrix = ijk_to_ras(volume_node)
        self.volume_dtype = _voxels(volume_node).dtype
        self.spec: Optional[dict] = None
        self.region: Optional[Tuple[int, int, int, int]] = None
        self.slab: Optional[Tuple[int, int]] = None
        self.slab_ijk_to_ras: Optional[np.ndarray] = None  # the volume's own grid of the slab, for the results
        self._steps = self._run(segmentation_node, segment_id, slices)

    def step(self) -> bool:
        """One short piece of the work; True once the upload is ready."""
        if self.spec is None:
            next(self._steps, None)
        return self.spec is not None

    def build(self) -> dict:
        while not self.step():
            pass
        return self.spec

    def _run(self, segmentation_node, segment_id, slices):
        # 1. The segment, a chunk of slices per step; planes kept as bits, with the box they cover
        packed, rows_touched, columns_touched = {}, None, None
        for planes in segment_mask_planes(self.volume_node, segmentation_node, segment_id, slices, self.chunk_slices):
            for k, plane in planes:
                packed[k] = np.packbits(plane)
                rows, columns = plane.any(axis=1), plane.any(axis=0)
                rows_touched = rows if rows_touched is None else rows_touched | rows
                columns_touched = columns if columns_touched is None else columns_touched | columns
            yield
        k0, k1 = min(packed), max(packed) + 1
        self.slab = (k0, k1)
        voxels = _voxels(self.volume_node)
        plane_shape = voxels.shape[1:3]
        _, slab_matrix = crop_slab(voxels, self.matrix, k0, k1)
        box = np.zeros((1,) + plane_shape, np.uint8)
        box[0][np.ix_(rows_touched, columns_touched)] = 1  # the mask's rows and columns, all slices
        self.region = changed_region(box, slab_matrix, self.parameters.mask_dilate_mm)

        self.slab_ijk_to_ras = slab_matrix

        # 2. The DICOM files of the slab, named only (the worker reads them as it sends them); where they
        # lie decides the grid the slab is sent on
        templates, first_position = (dicom_slab(self.volume_node, k0, k1, self.lookup) if self.use_dicom_templates
                                     else ([], None))
        sent_matrix = slab_grid_for_templates(slab_matrix, first_position)
        yield

        # 3. The voxels of the slab and its mask, streamed into files a few slices per step
        pixels = NrrdSlabWriter(self.folder / "pixels.nrrd", (k1 - k0,) + voxels.shape[1:], voxels.dtype, sent_matrix)
        mask = NrrdSlabWriter(self.folder / "mask.nrrd", (k1 - k0,) + plane_shape, np.uint8, sent_matrix)
        try:
            for start in range(k0, k1, self.chunk_slices):
                stop = min(k1, start + self.chunk_slices)
                pixels.write(_voxels(self.volume_node)[start:stop])
                planes = np.zeros((stop - start,) + plane_shape, np.uint8)
                for k in range(start, stop):
                    if k in packed:
                        planes[k - start] = np.unpackbits(packed[k], count=plane_shape[0] * plane_shape[1]).reshape(plane_shape)
                mask.write(planes)
                yield
            pixels.close()
            mask.close()
        except BaseException:
            pixels.abort()
            mask.abort()
            raise

        upload = assemble_upload(FilePart("source", "source.nrrd", path=str(self.folder / "pixels.nrrd")),
                                 FilePart("mask", "mask.nrrd", path=str(self.folder / "mask.nrrd")),
                                 k0, k1, self.parameters, templates=templates)
        self.spec = upload_spec(upload, self.folder)
        yield


PREVIEW_ATTRIBUTE = "MedGenSlicer.Preview"
ACCEPTED_ATTRIBUTE = "MedGenSlicer.Accepted"


class PreviewVolume:
    """The one volume of a job in which the chosen variant is shown: a copy of the source's slab of
    slices [k0, k1) (the slices the job was sent, where it lies in the source; ``slab`` None: every
    slice) made once, a chunk of slices per `fill_step`, into which each variant's small box is written
    in turn, the previous one's box first put back from the source. Variants therefore cost their boxes
    and a job its slab, not a volume each; `keep` turns the preview into the accepted volume (the
    slices of the synthetic series the engine wrote), `remove` takes it out of the scene.
    """

    def __init__(self, source_node, job_id: str, *, slab: Optional[Tuple[int, int]] = None, chunk_slices: int = 4):
        import vtk

        self.source = source_node
        self.job_id = job_id
        self.chunk_slices = chunk_slices
        self.shown: Optional[int] = None
        self._filled = 0
        self._shown_where = None
        source_image = source_node.GetImageData()
        columns, rows, num_slices = source_image.GetDimensions()
        self.slab = (int(slab[0]), int(slab[1])) if slab is not None else (0, num_slices)
        if not 0 <= self.slab[0] < self.slab[1] <= num_slices:
            raise GeometryError(f"slices {self.slab[0]}..{self.slab[1] - 1} are not slices of '{source_node.GetName()}'")
        self.matrix = crop_slab(np.empty((0,)), ijk_to_ras(source_node), *self.slab)[1]
        scene = source_node.GetScene()
        name = scene.GenerateUniqueName(f"SYNTHETIC preview {source_node.GetName()}")
        # A node of its own rather than vtkSlicerVolumesLogic.CloneVolume, which takes over half a second
        # on a 300-slice CT even without its voxels: the GUI would stall.
        self.node = scene.AddNewNodeByClass(source_node.GetClassName(), name)
        try:
            matrix = vtk.vtkMatrix4x4()
            for row in range(4):
                for column in range(4):
                    matrix.SetElement(row, column, float(self.matrix[row, column]))
            self.node.SetIJKToRASMatrix(matrix)
            self.node.SetSaveWithScene(False)  # unaccepted: a saved scene re-attaches and shows it again
            self.node.SetAttribute(SYNTHETIC_ATTRIBUTE, "true")
            self.node.SetAttribute(PREVIEW_ATTRIBUTE, "true")
            self.node.SetAttribute(JOB_ATTRIBUTE, job_id)
            source_display = source_node.GetDisplayNode()
            if source_display is not None:
                # the source's colours and window, set one by one: CopyContent takes 70 ms on a 300-slice CT
                display = scene.AddNewNodeByClass(source_display.GetClassName())
                display.SetAndObserveColorNodeID(source_display.GetColorNodeID())
                if hasattr(display, "SetAutoWindowLevel"):
                    display.SetAutoWindowLevel(False)  # and no histogram of each change
                    display.SetWindowLevel(source_display.GetWindow(), source_display.GetLevel())
                    display.SetInterpolate(source_display.GetInterpolate())
                display.SetSaveWithScene(False)
                self.node.SetAndObserveDisplayNodeID(display.GetID())
            voxels = vtk.vtkImageData()
            voxels.SetDimensions(columns, rows, self.slab[1] - self.slab[0])
            voxels.AllocateScalars(source_image.GetScalarType(), source_image.GetNumberOfScalarComponents())
            self.node.SetAndObserveImageData(voxels)
        except BaseException:
            _remove_with_display(scene, self.node)
            raise

    @property
    def ready(self) -> bool:
        return self.node is not None and self._filled >= self._target().shape[0]

    def _target(self) -> np.ndarray:
        import slicer

        return slicer.util.arrayFromVolume(self.node)

    def _source(self) -> np.ndarray:
        return _voxels(self.source)[self.slab[0]:self.slab[1]]

    def fill_step(self) -> bool:
        """Copy the next chunk of the source's slices; True once the copy is complete."""
        target, source = self._target(), self._source()
        if self._filled < target.shape[0]:
            stop = min(target.shape[0], self._filled + self.chunk_slices)
            target[self._filled:stop] = source[self._filled:stop]
            self._filled = stop
        return self.ready

    def show(self, slab) -> None:
        """Variant ``slab`` (a `jobs.VariantSlab`) in the preview, in place of the one shown before."""
        import slicer

        if not self.ready:
            raise RuntimeError("the preview is still being filled")
        target, source = self._target(), self._source()
        if self._shown_where is not None:
            target[self._shown_where] = source[self._shown_where]
        paste_into(target, self.matrix, slab.values, slab.ijk_to_ras)
        self._shown_where, _ = placement(target.shape, self.matrix, slab.values.shape, slab.ijk_to_ras)
        self.shown = slab.variant.index
        self.node.SetAttribute(SEED_ATTRIBUTE, str(slab.variant.seed))
        slicer.util.arrayFromVolumeModified(self.node)

    def keep(self, name: str):
        """The preview as it shows now becomes a volume of its own (the accepted variant); this preview
        is then empty and a later `show` needs a new one."""
        node, self.node = self.node, None
        node.SetName(node.GetScene().GenerateUniqueName(name))
        node.SetSaveWithScene(True)
        if node.GetDisplayNode() is not None:
            node.GetDisplayNode().SetSaveWithScene(True)
        node.RemoveAttribute(PREVIEW_ATTRIBUTE)
        node.SetAttribute(ACCEPTED_ATTRIBUTE, "true")
        return node

    def remove(self) -> None:
        if self.node is not None and self.node.GetScene() is not None:
            _remove_with_display(self.node.GetScene(), self.node)
        self.node = None


def remove_previews(scene, job_id: str) -> int:
    """Remove the unaccepted previews of ``job_id`` from the scene (a panel that closed left them); returns
    how many."""
    collection = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    previews = [collection.GetItemAsObject(n) for n in range(collection.GetNumberOfItems())]
    previews = [node for node in previews
                if node.GetAttribute(PREVIEW_ATTRIBUTE) == "true" and node.GetAttribute(JOB_ATTRIBUTE) == job_id]
    for node in previews:
        _remove_with_display(scene, node)
    return len(previews)


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
        _remove_with_display(scene, node)
        raise
    return node

