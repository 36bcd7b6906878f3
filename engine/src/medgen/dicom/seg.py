"""Write the inpainted region as a DICOM Segmentation that references the synthetic instances.

A synthetic series plus this SEG is a ready training pair: the segment, labelled from the prompt,
marks exactly where the pathology was asked for, on the images that now show it. The SEG carries
the same synthetic marks as the images it describes (Synthetic Data YES, a "SYNTHETIC" Series
Description, the Synthesizing Equipment item and the provenance block), so it can never be taken
for a reading of a real scan.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from medgen.dicom import codes
from medgen.dicom.codes import MedgenCode
from medgen.errors import InputError, OutputError
from medgen.imaging.library_messages import captured_library_messages, first_line
from medgen.imaging.volume import SourceFormat, Volume
from medgen.reproducible import content_uid, creation_time, pixel_digest, stamp_creation_time

logger = logging.getLogger(__name__)

# PS3.16 CID 7150 "Segmentation Property Categories" and CID 7159 "Lesion Segmentation Types".
MORPHOLOGICALLY_ALTERED_STRUCTURE = Code("49755003", "SCT", "Morphologically Altered Structure")
LESION = Code("52988006", "SCT", "Lesion")
CONTENT_LABEL = "INPAINTED"  # CS, at most 16 characters
SEGMENT_LABEL_MAX = 64  # LO
# Where the mask came from: the user painted it, and the generator filled it.
ALGORITHM_TYPE = hd.seg.SegmentAlgorithmTypeValues.MANUAL

SourceFrame = tuple[str, "int | None"]  # (source SOP Instance UID, 1-based frame or None for single-frame)


def masks_by_source_frame(volume: Volume, masks_per_slice: Mapping[int, np.ndarray]) -> dict[SourceFrame, np.ndarray]:
    """Key each slice's mask by the source instance (and frame) it lies on, as the images reference them."""
    keyed: dict[SourceFrame, np.ndarray] = {}
    for k, mask in masks_per_slice.items():
        k = int(k)
        if not 0 <= k < volume.num_slices:
            raise ValueError(f"slice index {k} is out of range [0, {volume.num_slices})")
        mask = np.asarray(mask)
        if mask.shape != volume.shape2d:
            raise ValueError(f"the mask of slice {k} has shape {mask.shape}, expected {volume.shape2d}")
        if volume.is_multiframe:
            key = (str(volume.datasets[0].SOPInstanceUID), int(volume.frame_numbers[k]))
        else:
            key = (str(volume.datasets[k].SOPInstanceUID), None)
        keyed[key] = mask.astype(bool)
    return keyed


def seg_refusal(volume: Volume, slices_written: int) -> str | None:
    """Why no SEG can be written over ``slices_written`` synthetic slices of ``volume``, or None.

    Call it before generating, so a run asked for ``--seg`` fails in milliseconds, not after
    the diffusion: highdicom needs patient geometry to place more than one frame.
    """
    from highdicom.spatial import get_image_coordinate_system

    if volume.source_format != SourceFormat.DICOM or not volume.datasets:
        return "a DICOM SEG needs a DICOM source (its frames reference the synthetic DICOM instances)"
    if slices_written > 1 and get_image_coordinate_system(volume.datasets[0]) is None:
        return (f"a DICOM SEG over a series of {slices_written} slices needs patient geometry (Frame of Reference "
                "and positions), which this source lacks; write only the inpainted slice (--only-modified), "
                "or omit --seg")
    return None


def write_inpaint_seg(
    synthetic_files: Sequence[str | Path],
    masks_per_slice: Mapping[int, np.ndarray],
    out_path: str | Path,
    segment_label: str,
    *,
    source_volume: Volume,
    software_version: str,
    model_name: str,
    series_number: int | None = None,
    drawn_per_slice: Mapping[int, np.ndarray] | None = None,
) -> Path:
    """Write one binary SEG of ``masks_per_slice`` over the synthetic instances; return its path.

    With ``drawn_per_slice`` (the lesion as drawn, `generate.drawn_label`) the SEG holds two segments:
    1, the lesion as drawn, the label of a training pair; 2, the request's mask, kept as it was asked.

    ``masks_per_slice`` maps a slice index of ``source_volume`` (the scan that was inpainted) to
    that slice's 2D mask; the masks reach the right synthetic frames through the Source Image
    references the writer put in every synthetic instance, so this works for whole series,
    ``only_modified`` series and multi-frame instances alike.
    """
    # 1. Check inputs before reading anything
    if not synthetic_files:
        raise ValueError("synthetic_files must list the written instances, got none")
    images = [_read(Path(p)) for p in synthetic_files]
    # highdicom's warnings (a one-part Patient Name, say) were met by the pre-flight already; here they
    # would only print after the run's work is done
    with captured_library_messages() as messages:
        seg = build_inpaint_seg(images, masks_per_slice, segment_label, source_volume=source_volume,
                                software_version=software_version, model_name=model_name,
                                series_number=series_number, drawn_per_slice=drawn_per_slice)
    for message in messages:
        logger.debug("SEG: %s", message)
    # Write atomically: a reader never sees half a SEG
    return _save_atomically(seg, Path(out_path))


def build_inpaint_seg(
    images: Sequence[Dataset],
    masks_per_slice: Mapping[int, np.ndarray],
    segment_label: str,
    *,
    source_volume: Volume,
    software_version: str,
    model_name: str,
    series_number: int | None = None,
    drawn_per_slice: Mapping[int, np.ndarray] | None = None,
) -> Dataset:
    """The SEG dataset of ``masks_per_slice`` over the synthetic ``images`` (the pre-flight builds it too);
    with ``drawn_per_slice``, the drawn lesion is segment 1 and the request's mask segment 2."""
    source_name = source_volume.source_paths[0] if source_volume.source_paths else None
    if not isinstance(segment_label, str) or not segment_label.strip():
        raise ValueError(f"segment_label must be a non-empty string, got {segment_label!r}")
    for name, value in (("software_version", software_version), ("model_name", model_name)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if not masks_per_slice or not any(np.asarray(m).any() for m in masks_per_slice.values()):
        raise ValueError("masks_per_slice holds no masked pixel: there is no region to segment")
    keyed = masks_by_source_frame(source_volume, masks_per_slice)
    if drawn_per_slice is not None:  # one channel per segment: the drawn lesion, then the request's mask
        drawn_keyed = masks_by_source_frame(
            source_volume, {k: np.asarray(drawn_per_slice.get(k, np.zeros_like(m)), dtype=bool)
                            for k, m in masks_per_slice.items()})
        keyed = {key: np.stack([drawn_keyed[key], np.asarray(mask, dtype=bool)], axis=-1)
                 for key, mask in keyed.items()}
    channels = () if drawn_per_slice is None else (2,)

    # 2. Give every frame of the synthetic instances its mask (empty where nothing was inpainted)
    if len({str(ds.SeriesInstanceUID) for ds in images}) != 1:
        raise ValueError("synthetic_files must belong to one series")
    if len(images) > 1 and any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in images):
        raise ValueError("give either one multi-frame instance or single-frame instances, not a mix")
    has_geometry = "FrameOfReferenceUID" in images[0]
    frames = []
    for ds in images:
        for key in _source_frames(ds):
            mask = keyed.get(key)
            frames.append(mask if mask is not None else np.zeros((ds.Rows, ds.Columns, *channels), dtype=bool))
    pixel_array = np.stack(frames).astype(np.uint8)
    images = [_as_highdicom_reads(ds, source_volume) for ds in images]
    if not pixel_array.any():
        raise ValueError("none of the masked slices is among the synthetic instances")

    # 3. Describe the segment and build the SEG with highdicom
    label = _single_line(segment_label)[:SEGMENT_LABEL_MAX]
    now = creation_time().astimezone()
    segment_labels = [label] if drawn_per_slice is None else [label, f"requested mask: {label}"]
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=text[:SEGMENT_LABEL_MAX],
            segmented_property_category=MORPHOLOGICALLY_ALTERED_STRUCTURE,
            segmented_property_type=LESION,
            algorithm_type=ALGORITHM_TYPE,
        )
        for number, text in enumerate(segment_labels, start=1)
    ]
    equipment = hd.ContributingEquipment(
        manufacturer=codes.MANUFACTURER,
        purpose_of_reference=MedgenCode.SYNTHESIZING_EQUIPMENT.code,
        manufacturer_model_name=_single_line(model_name)[:64],
        software_versions=_single_line(software_version)[:64],
        contribution_datetime=now,
        contribution_description=codes.CONTRIBUTION_DESCRIPTION,
    )
    segments_digest = pixel_digest(pixel_array)  # hashed once for both UIDs
    referenced_uids = [ds.SOPInstanceUID for ds in images]
    try:
        seg = hd.seg.Segmentation(
            source_images=images,
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=content_uid("seg-series", segments_digest, label, *referenced_uids),
            series_number=series_number if series_number is not None else _series_number(images[0]),
            sop_instance_uid=content_uid("seg-instance", segments_digest, label, *referenced_uids),
            instance_number=1,
            manufacturer=codes.MANUFACTURER,
            manufacturer_model_name=_single_line(model_name)[:64],
            software_versions=_single_line(software_version)[:64],
            device_serial_number=codes.MANUFACTURER,
            content_label=CONTENT_LABEL,
            content_description=f"Region inpainted from the prompt: {label}"[:64],
            contributing_equipment=[equipment],
            series_description=_series_description(label),
            omit_empty_frames=True,
            pixel_measures=_pixel_measures(images[0], source_volume) if _needs_pixel_measures(images[0]) else None,
        )
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        # highdicom's refusals name what the images lack; the source file is what the user can act on
        raise InputError(source_name, f"cannot build a DICOM SEG over the synthetic images: {first_line(exc)}",
                         reason="seg-source") from exc

    # 4. The synthetic marks highdicom does not know about, and the provenance of the images
    stamp_creation_time(seg, now)  # highdicom dates the SEG by its own clock
    seg.SyntheticData = codes.SYNTHETIC_DATA
    if not has_geometry:
        # General Image, Type 2C where there is no plane orientation: the images' own letters, or empty
        seg.PatientOrientation = images[0].get("PatientOrientation", "")
    _copy_provenance(images[0], seg)
    return seg


def _as_highdicom_reads(image: Dataset, volume: Volume) -> Dataset:
    """The synthetic image as highdicom needs to read it: each view below fills in, from the image's own
    geometry, an attribute highdicom expects where this kind of image does not keep it."""
    image = _with_number_of_frames(image, volume)
    image = _with_functional_groups(image, volume)
    image = _with_shared_geometry(image)
    return _with_slice_thickness(image, volume)


def _with_number_of_frames(image: Dataset, volume: Volume) -> Dataset:
    """An image of a multi-frame IOD written without Number of Frames and without patient geometry (an RT
    Image of one frame), as highdicom reads it: a view with Number of Frames 1 and the Pixel Measures in
    Shared Functional Groups (the image's own spacing, where highdicom looks for it). The written image
    stays as it is."""
    try:
        from highdicom._standard_utils import is_multiframe_image
    except ImportError:
        return image
    if "NumberOfFrames" in image or not is_multiframe_image(image) or "ImageOrientationPatient" in image:
        return image
    view = Dataset()
    for element in image:
        view.add(element)
    view.file_meta = image.file_meta
    view.NumberOfFrames = 1
    if "SharedFunctionalGroupsSequence" not in image:
        shared = Dataset()
        shared.PixelMeasuresSequence = _pixel_measures(image, volume)
        view.SharedFunctionalGroupsSequence = [shared]
    return view


def _with_functional_groups(image: Dataset, volume: Volume) -> Dataset:
    """A classic multi-frame image (RT Dose: Image Position plus Grid Frame Offset Vector) as highdicom
    reads multi-frame geometry: a view of it with Shared and Per-frame Functional Groups built from
    the volume's grid. The view is given to highdicom only; the written images stay as they are."""
    try:  # highdicom decides by the IOD (RT Dose is multi-frame even with one frame and no Number of Frames)
        from highdicom._standard_utils import is_multiframe_image
    except ImportError:
        def is_multiframe_image(ds: Dataset) -> bool:
            return "NumberOfFrames" in ds
    if ("SharedFunctionalGroupsSequence" in image or not is_multiframe_image(image)
            or "ImageOrientationPatient" not in image):
        return image
    view = Dataset()
    for element in image:
        view.add(element)
    view.file_meta = image.file_meta
    measures = Dataset()
    measures.PixelSpacing = [float(volume.spacing[1]), float(volume.spacing[2])]
    measures.SliceThickness = float(volume.spacing[0])
    orientation = Dataset()
    orientation.ImageOrientationPatient = image.ImageOrientationPatient
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orientation]
    view.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    slice_of = {key: k for k, key in enumerate(_slice_keys(volume))}
    for key in _source_frames(image):
        k = slice_of[key]
        position = Dataset()
        position.ImagePositionPatient = [round(float(v), 6) for v in volume.ijk_to_lps[:3, 3] + volume.ijk_to_lps[:3, 2] * k]
        group = Dataset()
        group.PlanePositionSequence = [position]
        per_frame.append(group)
    view.PerFrameFunctionalGroupsSequence = per_frame
    return view


# Functional groups highdicom reads from the Shared Functional Groups only
_SHARED_GROUPS = ("PixelMeasuresSequence", "PlaneOrientationSequence")


def _with_shared_geometry(image: Dataset) -> Dataset:
    """An enhanced multi-frame image whose Pixel Measures and Plane Orientation are per frame only (Philips
    enhanced MR), as highdicom reads it: a view with them in the Shared Functional Groups, where highdicom
    looks. Done only for a group every frame has the same; the written image stays as it is."""
    shared = image.get("SharedFunctionalGroupsSequence")
    per_frame = image.get("PerFrameFunctionalGroupsSequence")
    if not shared or not per_frame:
        return image
    moved = {}
    for keyword in _SHARED_GROUPS:
        values = [group.get(keyword) for group in per_frame]
        if keyword not in shared[0] and values[0] and all(v == values[0] for v in values[1:]):
            moved[keyword] = values[0]
    if not moved:
        return image  # highdicom then says what it lacks, and the SEG is refused
    shared_view = Dataset()
    for element in shared[0]:
        shared_view.add(element)
    for keyword, value in moved.items():
        setattr(shared_view, keyword, value)
    view = Dataset()
    for element in image:
        view.add(element)
    view.file_meta = image.file_meta
    view.SharedFunctionalGroupsSequence = [shared_view]
    return view


def _with_slice_thickness(image: Dataset, volume: Volume) -> Dataset:
    """A single-frame image whose Slice Thickness is empty (Type 2: unknown), as highdicom sees it: with the
    volume's slice spacing, so the SEG's Pixel Measures get the Slice Thickness they need (Type 1C).
    highdicom copies Pixel Measures from the image whenever the pixel spacing agrees, so the value must
    be on the image it reads; the written image keeps its own empty value."""
    if "SharedFunctionalGroupsSequence" in image or image.get("SliceThickness") or "FrameOfReferenceUID" not in image:
        return image
    view = Dataset()
    for element in image:
        view.add(element)
    view.file_meta = image.file_meta
    view.SliceThickness = float(volume.spacing[0])
    return view


def _slice_keys(volume: Volume) -> list[SourceFrame]:
    """(source SOP Instance UID, frame or None) of each slice of the volume, in slice order."""
    if volume.is_multiframe:
        return [(str(volume.datasets[0].SOPInstanceUID), int(f)) for f in volume.frame_numbers]
    return [(str(ds.SOPInstanceUID), None) for ds in volume.datasets]


def _needs_pixel_measures(image: Dataset) -> bool:
    """highdicom copies Pixel Measures from the images only when they have geometry, and then leaves out
    a Slice Thickness they lack (Type 1C in the SEG's Pixel Measures); we give it from the volume."""
    if "FrameOfReferenceUID" not in image:
        return True
    shared = image.get("SharedFunctionalGroupsSequence")
    if shared:
        measures = shared[0].get("PixelMeasuresSequence")
        return not measures or not measures[0].get("SliceThickness")
    # missing or empty (Type 2 in CT/MR images) alike
    return not image.get("SliceThickness") or not image.get("PixelSpacing")


def _pixel_measures(image: Dataset, volume: Volume) -> hd.PixelMeasuresSequence:
    """Spacing for images without geometry (CR, US): the image's own, else the volume's reading of it.

    Left to itself highdicom writes a zero spacing there, which is invalid (PS3.3 C.7.6.2.1.1).
    """
    for candidate in (image.get("PixelSpacing"), image.get("ImagerPixelSpacing"), volume.spacing[1:], (1.0, 1.0)):
        if candidate is not None and len(candidate) == 2 and all(float(v) > 0 for v in candidate):
            rows_cols = [float(v) for v in candidate]
            break
    thickness = float(volume.spacing[0]) if float(volume.spacing[0]) > 0 else 1.0
    return hd.PixelMeasuresSequence(pixel_spacing=rows_cols, slice_thickness=thickness)


def _read(path: Path) -> Dataset:
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many kinds on damaged files
        raise InputError(path, f"cannot read the synthetic instance: {exc}") from exc
    if ds.get("SyntheticData") != codes.SYNTHETIC_DATA:
        raise InputError(path, "is not a synthetic instance (Synthetic Data is not YES)")
    return ds


def _source_frames(ds: Dataset) -> list[SourceFrame]:
    """For each frame of a synthetic instance, the source instance and frame it was derived from."""
    from medgen.dicom.validate import source_frames

    try:
        return source_frames(ds)
    except (AttributeError, IndexError, KeyError) as exc:
        raise InputError(None, f"synthetic instance {ds.SOPInstanceUID} has no usable Source Image reference") from exc


def _copy_provenance(image: Dataset, seg: Dataset) -> None:
    try:
        block = image.private_block(codes.PRIVATE_GROUP, codes.PRIVATE_CREATOR)
        element = block[codes.PRIVATE_PROVENANCE_OFFSET]
    except KeyError:
        return
    target = seg.private_block(codes.PRIVATE_GROUP, codes.PRIVATE_CREATOR, create=True)
    target.add_new(codes.PRIVATE_PROVENANCE_OFFSET, "UT", element.value)


def _series_description(label: str) -> str:
    text = f"{codes.SERIES_DESCRIPTION_PREFIX} SEG {label}"
    return text[:64].rstrip()


def _series_number(image: Dataset) -> int:
    """One above the synthetic series, so viewers list the SEG right after its images."""
    try:
        return min(int(image.get("SeriesNumber") or 0) + 1, 2**31 - 1)
    except (TypeError, ValueError):
        return 1


def _single_line(text: str) -> str:
    """LO-safe text: no backslash (the value separator) and no control characters."""
    return "".join(c if c.isprintable() else " " for c in text.replace("\\", "/")).strip()


def _save_atomically(ds: Dataset, out_path: Path) -> Path:
    tmp_name = None
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".partial", dir=out_path.parent)
        os.close(fd)
        ds.save_as(tmp_name, enforce_file_format=True)
        os.replace(tmp_name, out_path)
    except OSError as exc:
        if tmp_name and os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise OutputError(out_path, f"cannot write the SEG: {exc.strerror or exc}") from exc
    logger.info("wrote SEG %s", out_path)
    return out_path
