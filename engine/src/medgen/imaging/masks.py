"""Read the region to inpaint as a bool array on the volume's grid, and pick the slices to work on.

Masks come as Slicer ``.seg.nrrd``, NIfTI/NRRD labelmaps, DICOM SEG or (for 2-D images) PNG. A 3-D
mask on another grid is re-indexed onto the volume when its axes run along the volume's axes
(equal grid, crop/embed, flips, nearest-neighbour resampling); anything else is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import slicerio
import SimpleITK as sitk
from PIL import Image, UnidentifiedImageError
from pydicom.errors import InvalidDicomError

from medgen.errors import InputError
from medgen.imaging.read import (
    NIFTI_SUFFIXES,
    NRRD_SUFFIXES,
    PLAIN_IMAGE_SUFFIXES,
    is_slicer_segmentation,
    itk_ijk_to_lps,
    read_itk_image,
)
from medgen.imaging.volume import SourceFormat, Volume

logger = logging.getLogger(__name__)

# A mask axis counts as parallel to a volume axis when its other components are below this
# fraction of its length (1e-3: half a voxel of drift across 500 voxels).
_AXIS_PARALLEL_TOLERANCE = 1e-3
# Fractional DICOM SEG values at or above this are inside.
_FRACTIONAL_THRESHOLD = 0.5


def read_mask(
    path: str | Path,
    volume: Volume,
    *,
    segment: str | None = None,
    label: int | None = None,
) -> np.ndarray:
    """The chosen segment/label of the mask file as a bool array (slices, rows, columns) on ``volume``'s grid."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such mask file")
    if path.is_dir():
        raise InputError(path, "is a folder; a mask is one file (.seg.nrrd, .nii.gz, .nrrd, DICOM SEG or .png)")
    name = path.name.lower()
    if name.endswith(NRRD_SUFFIXES) and is_slicer_segmentation(path):
        mask = _read_slicer_segmentation(path, volume, segment, label)
    elif name.endswith(NIFTI_SUFFIXES + NRRD_SUFFIXES):
        mask = _read_labelmap(path, volume, segment, label)
    elif name.endswith(PLAIN_IMAGE_SUFFIXES):
        mask = _read_image_mask(path, volume, segment, label)
    else:
        mask = _read_dicom_seg(path, volume, segment, label)

    if not mask.any():
        raise InputError(path, "mask is empty on the volume's grid")
    return mask


def select_slices(
    mask: np.ndarray,
    slices: list[int] | None,
    all_slices: bool,
    volume: Volume,
) -> list[int]:
    """The slice indices to inpaint: ``--slice`` values, every masked slice, or the one obvious slice."""
    source = _volume_name(volume)
    touched = [int(k) for k in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))]
    if slices and all_slices:
        raise InputError(None, "--slice and --all-slices exclude each other; give one")
    if slices:
        for k in slices:
            if not 0 <= k < volume.num_slices:
                raise InputError(
                    source, f"slice {k} is out of range; valid slices are 0..{volume.num_slices - 1}"
                )
            if k not in touched:
                raise InputError(source, f"the mask is empty on slice {k}; masked slices: {_ranges(touched)}")
        return sorted(set(int(k) for k in slices))
    if not touched:
        raise InputError(source, "mask is empty")
    if all_slices:
        return touched
    if volume.num_slices == 1:
        return [0]
    if len(touched) == 1:
        return touched
    raise InputError(
        source,
        f"the mask touches {len(touched)} slices ({_ranges(touched)}); choose with --slice K or --all-slices",
    )


# --- Slicer segmentation -----------------------------------------------------------------------


def _read_slicer_segmentation(path: Path, volume: Volume, segment: str | None, label: int | None) -> np.ndarray:
    """One segment of a .seg.nrrd; slicerio resolves layers and converts RAS headers to LPS."""
    if label is not None:
        raise InputError(path, "is a Slicer segmentation; choose a segment by name (--segment), not by label")
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as exc:
        raise InputError(path, f"cannot read Slicer segmentation: {exc}") from exc
    segments = segmentation.get("segments", [])
    names = [str(s.get("name", s.get("id", "?"))) for s in segments]
    if segment is None:
        if len(segments) != 1:
            raise InputError(path, f"holds {len(segments)} segments; choose one with --segment: {', '.join(names)}")
        chosen = segments[0]
    else:
        matches = [s for s, n in zip(segments, names) if n.casefold() == segment.casefold()]
        if not matches:
            raise InputError(path, f"has no segment named {segment!r}; segments: {', '.join(names)}")
        if len(matches) > 1:
            raise InputError(path, f"has {len(matches)} segments named {segment!r}; rename them in Slicer")
        chosen = matches[0]

    voxels = segmentation["voxels"]  # (i, j, k) or (layer, i, j, k)
    layer = voxels[int(chosen.get("layer", 0))] if voxels.ndim == 4 else voxels
    mask_ijk = layer == int(chosen.get("labelValue", 1))
    if not mask_ijk.any():
        raise InputError(path, f"mask is empty: segment {chosen.get('name')!r} has no voxels")
    return _fit_to_volume_grid(mask_ijk.transpose(2, 1, 0), np.asarray(segmentation["ijkToLPS"]), volume, path)


# --- NIfTI / NRRD labelmap ---------------------------------------------------------------------


def _read_labelmap(path: Path, volume: Volume, segment: str | None, label: int | None) -> np.ndarray:
    if segment is not None:
        raise InputError(path, "is a labelmap without segment names; choose a value with --label, not --segment")
    image = read_itk_image(path, "labelmap")
    if image.GetDimension() not in (2, 3) or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, "a labelmap must be a 2-D or 3-D image with one value per voxel")
    values = sitk.GetArrayFromImage(image)  # (k, j, i)
    if image.GetDimension() == 2:
        values = values[np.newaxis]
    mask = _select_label(values, label, path)
    return _fit_to_volume_grid(mask, itk_ijk_to_lps(image), volume, path)


def _select_label(values: np.ndarray, label: int | None, path: Path) -> np.ndarray:
    if label is None:
        mask = values != 0
        if not mask.any():
            raise InputError(path, "mask is empty: no nonzero voxel")
        return mask
    mask = values == label
    if not mask.any():
        present = np.unique(values[values != 0])
        listing = ", ".join(str(v) for v in present[:20]) + (" ..." if present.size > 20 else "")
        raise InputError(path, f"mask is empty: no voxel has label {label}; labels present: {listing or 'none'}")
    return mask


# --- PNG ---------------------------------------------------------------------------------------


def _read_image_mask(path: Path, volume: Volume, segment: str | None, label: int | None) -> np.ndarray:
    """A 2-D mask drawn over a one-slice volume: nonzero (any colour channel), or == label."""
    if segment is not None:
        raise InputError(path, "an image mask has no segment names; use --label or nothing")
    if volume.num_slices != 1:
        raise InputError(path, f"an image mask fits a one-slice image; the volume has {volume.num_slices} slices")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
                values = np.array(image)
            elif image.mode == "LA":
                values = np.array(image)[..., 0]
            else:
                values = np.array(image.convert("RGB")).max(axis=-1)
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(path, f"cannot read mask image: {exc}") from exc
    if values.shape != volume.shape2d:
        raise InputError(
            path,
            f"mask is {values.shape[0]}x{values.shape[1]} (rows x columns) but the image is "
            f"{volume.shape2d[0]}x{volume.shape2d[1]}",
        )
    return _select_label(values, label, path)[np.newaxis]


# --- DICOM SEG ---------------------------------------------------------------------------------


def _read_dicom_seg(path: Path, volume: Volume, segment: str | None, label: int | None) -> np.ndarray:
    """Classic series: match frames by source SOP Instance UID; multi-frame or unmatched: by position."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as exc:
        raise InputError(
            path, "not a mask: expected .seg.nrrd, .nii/.nii.gz, .nrrd, .png or a DICOM SEG file"
        ) from exc
    except Exception as exc:
        raise InputError(path, f"cannot read DICOM file: {exc}") from exc
    if header.get("Modality") != "SEG":
        raise InputError(path, f"is a DICOM {header.get('Modality', '?')} object, not a segmentation (SEG)")
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:
        raise InputError(path, f"cannot read DICOM SEG: {exc}") from exc
    number = _choose_seg_segment(seg, segment, label, path)

    if volume.source_format is SourceFormat.DICOM and not volume.is_multiframe:
        mask = _seg_by_source_instances(seg, number, volume, path)
        if mask is not None:
            return mask
    return _seg_by_position(seg, number, volume, path)


def _choose_seg_segment(seg: hd.seg.Segmentation, segment: str | None, label: int | None, path: Path) -> int:
    numbers = [int(n) for n in seg.segment_numbers]
    labels = {n: str(seg.get_segment_description(n).segment_label) for n in numbers}
    listing = ", ".join(f"{n} {labels[n]!r}" for n in numbers)
    if label is not None:
        if label not in numbers:
            raise InputError(path, f"has no segment number {label}; segments: {listing}")
        return label
    if segment is not None:
        matches = [n for n in numbers if labels[n].casefold() == segment.casefold()]
        if len(matches) != 1:
            problem = "no segment" if not matches else f"{len(matches)} segments"
            raise InputError(path, f"has {problem} labelled {segment!r}; segments: {listing}")
        return matches[0]
    if len(numbers) != 1:
        raise InputError(path, f"holds {len(numbers)} segments; choose one with --segment or --label: {listing}")
    return numbers[0]


def _seg_by_source_instances(seg: hd.seg.Segmentation, number: int, volume: Volume, path: Path) -> np.ndarray | None:
    """None when the SEG references none of the volume's instances or uses another in-plane grid."""
    slice_uids = [str(ds.SOPInstanceUID) for ds in volume.datasets]
    referenced = {str(uid) for _, _, uid in seg.get_source_image_uids()}
    if not referenced & set(slice_uids):
        return None
    if (int(seg.Rows), int(seg.Columns)) != volume.shape2d:
        logger.info("%s: SEG frames are %dx%d, not the source's grid; matching by position", path, seg.Rows, seg.Columns)
        return None
    # Spatial locations are checked above by the matching frame size; many SEGs omit the flag.
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=slice_uids,
        segment_numbers=[number],
        assert_missing_frames_are_empty=True,
        ignore_spatial_locations=True,
    )
    mask = pixels[..., 0] >= _FRACTIONAL_THRESHOLD
    if not mask.any():
        raise InputError(path, f"mask is empty: segment {number} has no pixels on the volume's slices")
    return mask


def _seg_by_position(seg: hd.seg.Segmentation, number: int, volume: Volume, path: Path) -> np.ndarray:
    seg_frame = seg.get("FrameOfReferenceUID")
    volume_frame = volume.datasets[0].get("FrameOfReferenceUID") if volume.datasets else None
    if seg_frame and volume_frame and seg_frame != volume_frame:
        raise InputError(
            path,
            f"matches none of the volume's instances by UID and lies in another frame of reference "
            f"({seg_frame} vs the volume's {volume_frame})",
        )
    try:
        seg_volume = seg.get_volume(segment_numbers=[number])
    except Exception as exc:
        raise InputError(path, f"cannot place the SEG frames in space: {exc}") from exc
    mask = seg_volume.array[..., 0] >= _FRACTIONAL_THRESHOLD
    if not mask.any():
        raise InputError(path, f"mask is empty: segment {number} has no pixels")
    # highdicom's affine maps (slice, row, column); ours maps (column i, row j, slice k).
    ijk_to_lps = np.asarray(seg_volume.affine, dtype=np.float64)[:, [2, 1, 0, 3]]
    return _fit_to_volume_grid(mask, ijk_to_lps, volume, path)


# --- geometry ----------------------------------------------------------------------------------


def _fit_to_volume_grid(mask: np.ndarray, mask_ijk_to_lps: np.ndarray, volume: Volume, source: Path) -> np.ndarray:
    """Re-index a (k, j, i) mask onto the volume grid by nearest neighbour along each axis.

    Works when every mask axis runs along one volume axis (same grid, crop/embed, flips, axis
    permutations, other spacing); an oblique mask is refused rather than silently interpolated.
    """
    # mask (i, j, k, 1) → volume (i, j, k, 1)
    transform = np.linalg.inv(volume.ijk_to_lps) @ mask_ijk_to_lps
    linear, offset = transform[:3, :3], transform[:3, 3]
    volume_axis_of = np.argmax(np.abs(linear), axis=0)  # for each mask axis c
    scales = linear[volume_axis_of, [0, 1, 2]]
    off_axis = np.abs(linear).copy()
    off_axis[volume_axis_of, [0, 1, 2]] = 0
    parallel = sorted(volume_axis_of.tolist()) == [0, 1, 2] and np.all(
        off_axis.max(axis=0) <= _AXIS_PARALLEL_TOLERANCE * np.abs(scales)
    )
    if not parallel:
        raise InputError(
            source,
            f"mask lies on another grid: {_grid_text(mask, mask_ijk_to_lps, volume)}; "
            f"its axes are not parallel to the volume's",
        )

    mask_axis_of = np.empty(3, dtype=int)
    mask_axis_of[volume_axis_of] = [0, 1, 2]
    volume_sizes = (volume.pixels.shape[2], volume.pixels.shape[1], volume.pixels.shape[0])  # i, j, k
    mask_sizes = (mask.shape[2], mask.shape[1], mask.shape[0])
    indices, valid = [], []
    for volume_axis in range(3):
        mask_axis = mask_axis_of[volume_axis]
        positions = (np.arange(volume_sizes[volume_axis]) - offset[volume_axis]) / scales[mask_axis]
        nearest = np.floor(positions + 0.5).astype(np.int64)
        indices.append(nearest)
        valid.append((nearest >= 0) & (nearest < mask_sizes[mask_axis]))

    exact = np.allclose(np.abs(scales), 1.0, atol=1e-4) and np.allclose(offset, np.rint(offset), atol=1e-3)
    if exact and mask.shape == volume.pixels.shape[:3] and np.allclose(transform, np.eye(4), atol=1e-3):
        return mask.astype(bool, copy=False)
    logger.info("%s: %s mask onto the volume grid (%s)", source, "re-indexing" if exact else "resampling",
                _grid_text(mask, mask_ijk_to_lps, volume))

    # Bring the mask array into volume axis order (k, j, i), then gather.
    mask_ijk = mask.transpose(2, 1, 0)
    ordered = mask_ijk.transpose([mask_axis_of[0], mask_axis_of[1], mask_axis_of[2]]).transpose(2, 1, 0)
    fitted = np.zeros(volume.pixels.shape[:3], dtype=bool)
    i, j, k = indices
    vi, vj, vk = valid
    fitted[np.ix_(vk, vj, vi)] = ordered[np.ix_(k[vk], j[vj], i[vi])]
    if mask.any() and not fitted.any():
        raise InputError(source, f"mask does not overlap the volume: {_grid_text(mask, mask_ijk_to_lps, volume)}")
    return fitted


def _grid_text(mask: np.ndarray, mask_ijk_to_lps: np.ndarray, volume: Volume) -> str:
    def spacing(matrix: np.ndarray) -> str:
        return "x".join(f"{np.linalg.norm(matrix[:3, axis]):.4g}" for axis in (2, 1, 0))

    return (
        f"mask {'x'.join(map(str, mask.shape))} voxels of {spacing(mask_ijk_to_lps)} mm, "
        f"volume {'x'.join(map(str, volume.pixels.shape[:3]))} voxels of {spacing(volume.ijk_to_lps)} mm "
        f"(slices x rows x columns)"
    )


def _volume_name(volume: Volume) -> Path | None:
    if not volume.source_paths:
        return None
    if len(volume.source_paths) > 1:
        return volume.source_paths[0].parent
    return volume.source_paths[0]


def _ranges(values: list[int]) -> str:
    """[1, 2, 3, 7] → '1-3, 7'."""
    if not values:
        return "none"
    runs: list[list[int]] = [[values[0], values[0]]]
    for value in values[1:]:
        if value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
