"""Read the region to inpaint as a bool array on the volume's grid, and pick the slices to work on.

Masks come as Slicer ``.seg.nrrd``, NIfTI/NRRD labelmaps, DICOM SEG or (for 2-D images) PNG. A 3-D
mask on another grid is re-indexed onto the volume when its voxels map one-to-one onto the volume's
(same grid, crop/embed, flips, axis order, sub-voxel drift, or the grid another reader gives a tilted
series); another plane or spacing is resampled by nearest neighbour on request, else refused.

Slice index k (``--slice``, the server's ``slices``) is the k-th slice of the volume as
:func:`medgen.imaging.read.read_volume` orders it (README: "Slice numbers and mask grids").
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import slicerio
import SimpleITK as sitk
from PIL import Image, UnidentifiedImageError
from pydicom.errors import InvalidDicomError

from medgen.errors import InputError
from medgen.imaging.library_messages import first_line
from medgen.imaging.limits import check_geometry, check_size
from medgen.imaging.read import (
    NIFTI_SUFFIXES,
    NRRD_SUFFIXES,
    PLAIN_IMAGE_SUFFIXES,
    parse_every_element,
    check_regular_file,
    is_slicer_segmentation,
    itk_ijk_to_lps,
    read_itk_image,
)
from medgen.imaging.volume import SourceFormat, Volume

logger = logging.getLogger(__name__)

# A mask re-indexes onto the volume when each mask voxel lies within this many voxels (on each axis)
# of the volume voxel it is assigned to, over the box its labelled voxels fill.
_MAX_DISPLACEMENT_VOXELS = 0.25
# Below this the two grids are the same up to rounding in the file headers.
_SAME_GRID_VOXELS = 1e-3
# Fractional DICOM SEG values at or above this are inside.
_FRACTIONAL_THRESHOLD = 0.5


def read_mask(
    path: str | Path,
    volume: Volume,
    *,
    segment: str | None = None,
    label: int | None = None,
    resample: bool = False,
) -> np.ndarray:
    """The chosen segment/label of the mask file as a bool array (slices, rows, columns) on ``volume``'s grid.

    ``resample`` allows nearest-neighbour resampling of a mask whose voxels do not map one-to-one onto
    the volume's (another plane or spacing); without it such a mask is refused.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such mask file")
    if path.is_dir():
        raise InputError(path, "is a folder; a mask is one file (.seg.nrrd, .nii.gz, .nrrd, DICOM SEG or .png)")
    check_regular_file(path, "mask")
    name = path.name.lower()
    if name.endswith(NRRD_SUFFIXES) and is_slicer_segmentation(path):
        mask = _read_slicer_segmentation(path, volume, segment, label, resample)
    elif name.endswith(NIFTI_SUFFIXES + NRRD_SUFFIXES):
        mask = _read_labelmap(path, volume, segment, label, resample)
    elif name.endswith(PLAIN_IMAGE_SUFFIXES):
        mask = _read_image_mask(path, volume, segment, label)
    else:
        mask = _read_dicom_seg(path, volume, segment, label, resample)

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
                raise InputError(
                    source,
                    f"the mask is empty on slice {k}{_frames_text(volume, [k])}; masked slices: "
                    f"{_ranges(touched)}{_frames_text(volume, touched)}",
                )
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


def _read_slicer_segmentation(
    path: Path, volume: Volume, segment: str | None, label: int | None, resample: bool
) -> np.ndarray:
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
    return _fit_to_volume_grid(
        mask_ijk.transpose(2, 1, 0), np.asarray(segmentation["ijkToLPS"]), volume, path, resample
    )


# --- NIfTI / NRRD labelmap ---------------------------------------------------------------------


def _read_labelmap(path: Path, volume: Volume, segment: str | None, label: int | None, resample: bool) -> np.ndarray:
    if segment is not None:
        raise InputError(path, "is a labelmap without segment names; choose a value with --label, not --segment")
    image = read_itk_image(path, "labelmap")
    if image.GetDimension() not in (2, 3) or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, "a labelmap must be a 2-D or 3-D image with one value per voxel")
    values = sitk.GetArrayFromImage(image)  # (k, j, i)
    if image.GetDimension() == 2:
        values = values[np.newaxis]
    mask = _select_label(values, label, path)
    return _fit_to_volume_grid(mask, itk_ijk_to_lps(image), volume, path, resample)


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
            check_size(path, rows=image.size[1], columns=image.size[0])
            image.load()
            if image.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
                values = np.array(image)
            elif image.mode == "LA":
                values = np.array(image)[..., 0]
            else:
                values = np.array(image.convert("RGB")).max(axis=-1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(path, f"cannot read mask image: {' '.join(str(exc).split())}") from exc
    if values.shape != volume.shape2d:
        raise InputError(
            path,
            f"mask is {values.shape[0]}x{values.shape[1]} (rows x columns) but the image is "
            f"{volume.shape2d[0]}x{volume.shape2d[1]}",
        )
    return _select_label(values, label, path)[np.newaxis]


# --- DICOM SEG ---------------------------------------------------------------------------------


def _read_dicom_seg(path: Path, volume: Volume, segment: str | None, label: int | None, resample: bool) -> np.ndarray:
    """Classic series: match frames by source SOP Instance UID; multi-frame or unmatched: by position."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        # pydicom parses values when first read: parse them all now, so a damaged one is named here
        parse_every_element(header, keep_private_raw=getattr(header, "original_encoding", (False,))[0] is True)
    except InvalidDicomError as exc:
        raise InputError(
            path, "not a mask: expected .seg.nrrd, .nii/.nii.gz, .nrrd, .png or a DICOM SEG file"
        ) from exc
    except Exception as exc:  # pydicom raises many kinds on a damaged or truncated file
        raise InputError(path, f"cannot read DICOM file (damaged or truncated?): {first_line(exc)}",
                         reason="damaged") from exc
    if header.get("Modality") != "SEG":
        raise InputError(path, f"is a DICOM {header.get('Modality', '?')} object, not a segmentation (SEG)")
    _check_seg_header(header, path)
    try:
        seg = hd.seg.segread(path)
        _check_seg_pixel_data(seg, path)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"cannot read DICOM SEG: {first_line(exc)}", reason="damaged") from exc
    # Whatever another tool wrote: highdicom's errors on attributes it trusts become one line naming the file
    # (_seg_by_position turns those of get_volume into one line itself).
    with _damaged_seg(path):
        number = _choose_seg_segment(seg, segment, label, path)
    if volume.source_format is SourceFormat.DICOM and not volume.is_multiframe:
        with _damaged_seg(path):
            mask = _seg_by_source_instances(seg, number, volume, path)
        if mask is not None:
            return mask
    return _seg_by_position(seg, number, volume, path, resample)


# What highdicom and pydicom raise on a SEG whose attributes are missing, malformed or inconsistent.
_SEG_DECODE_ERRORS = (
    ValueError, KeyError, AttributeError, IndexError, TypeError, struct.error, InvalidDicomError,
    np.linalg.LinAlgError,
)


@contextmanager
def _damaged_seg(path: Path) -> Iterator[None]:
    """Turn a library error raised while decoding the SEG at ``path`` into one InputError line."""
    try:
        yield
    except _SEG_DECODE_ERRORS as exc:
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else first_line(exc)  # no repr quotes
        raise InputError(path, f"damaged DICOM SEG: {text}", reason="damaged") from exc


# Attributes highdicom reads from every SEG before it decodes a frame (PS3.3 C.8.20.2, Type 1).
_SEG_REQUIRED = (
    "Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation", "PixelRepresentation",
    "NumberOfFrames", "SegmentSequence", "PerFrameFunctionalGroupsSequence",
)


def _check_seg_header(header: pydicom.Dataset, path: Path) -> None:
    """Refuse a SEG whose header lacks what decoding it needs, before highdicom trips over it."""
    missing = [keyword for keyword in _SEG_REQUIRED if header.get(keyword) in (None, "")]
    if missing:
        raise InputError(path, f"damaged DICOM SEG: missing {', '.join(missing)}", reason="damaged")
    kind = str(header.get("SegmentationType", ""))
    if kind not in {v.value for v in hd.seg.SegmentationTypeValues}:
        known = ", ".join(v.value for v in hd.seg.SegmentationTypeValues)
        raise InputError(path, f"damaged DICOM SEG: SegmentationType {kind!r} is not one of {known}",
                         reason="damaged")
    if kind == hd.seg.SegmentationTypeValues.FRACTIONAL.value:
        maximum = header.get("MaximumFractionalValue")
        if not isinstance(maximum, int) or maximum < 1:
            raise InputError(path, f"damaged DICOM SEG: a FRACTIONAL segmentation needs a positive "
                             f"MaximumFractionalValue, got {maximum!r}", reason="damaged")
    with _damaged_seg(path):
        rows, columns = int(header.Rows), int(header.Columns)
        frames = int(header.NumberOfFrames)
        samples, bits = int(header.SamplesPerPixel), int(header.BitsAllocated)
        listed = len(header.PerFrameFunctionalGroupsSequence)
    check_size(path, rows=rows, columns=columns, frames=frames, samples=samples)
    if listed != frames:
        raise InputError(path, f"damaged DICOM SEG: NumberOfFrames is {frames} but "
                         f"PerFrameFunctionalGroupsSequence lists {listed} frames", reason="damaged")
    if bits not in (1, 8, 16):
        raise InputError(path, f"damaged DICOM SEG: BitsAllocated is {bits}, not 1, 8 or 16", reason="damaged")


def _check_seg_pixel_data(seg: hd.seg.Segmentation, path: Path) -> None:
    """Refuse missing, empty or short native pixel data (a truncated file) before a frame is decoded."""
    data = seg.get("PixelData")
    if not data:
        raise InputError(path, "damaged DICOM SEG: PixelData is missing or empty", reason="damaged")
    if seg.file_meta.TransferSyntaxUID.is_encapsulated:
        return  # compressed frames: their decoder reports damage, inside _damaged_seg
    bits = int(seg.Rows) * int(seg.Columns) * int(seg.NumberOfFrames) * int(seg.SamplesPerPixel) * int(seg.BitsAllocated)
    needed = (bits + 7) // 8
    if len(data) < needed:
        raise InputError(path, f"damaged DICOM SEG: PixelData holds {len(data)} bytes, {int(seg.NumberOfFrames)} "
                         f"frame(s) of {int(seg.Rows)} x {int(seg.Columns)} need {needed} (truncated file?)",
                         reason="damaged")


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
    try:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=slice_uids,
            segment_numbers=[number],
            assert_missing_frames_are_empty=True,
            ignore_spatial_locations=True,
        )
    except RuntimeError as exc:  # frames that do not say which source frame they derive from
        logger.info("%s: %s; matching by position", path, first_line(exc))
        return None
    mask = pixels[..., 0] >= _FRACTIONAL_THRESHOLD
    if not mask.any():
        raise InputError(path, f"mask is empty: segment {number} has no pixels on the volume's slices")
    return mask


def _seg_by_position(
    seg: hd.seg.Segmentation, number: int, volume: Volume, path: Path, resample: bool
) -> np.ndarray:
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
    return _fit_to_volume_grid(mask, ijk_to_lps, volume, path, resample)


# --- geometry ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _GridMatch:
    """How mask voxel indices map onto volume voxel indices: volume ijk = permutation @ mask ijk + offset."""

    grid_name: str
    permutation: np.ndarray  # 3x3, one +-1 per row and column
    offset: np.ndarray  # 3 integers
    displacement_voxels: float  # largest, over the labelled extent and the three axes
    displacement_mm: float
    scales: np.ndarray  # length of each mask axis step in volume voxels (1 on a matching grid)
    angle_degrees: float  # largest angle between a mask axis and the volume axis it runs along

    def mismatch(self) -> str:
        """Why the mask does not re-index, in words."""
        reasons = []
        if np.any(np.abs(self.scales - 1) > 0.01):
            sizes = "x".join(f"{v:.3g}" for v in self.scales[::-1])
            reasons.append(f"its voxel steps are {sizes} of the volume's (slices x rows x columns)")
        if self.angle_degrees > 0.01:
            reasons.append(f"its axes are turned by up to {self.angle_degrees:.3g} degrees against the volume's")
        if not reasons:
            reasons.append(f"its voxels lie up to {self.displacement_voxels:.3g} voxel off the volume's")
        return " and ".join(reasons)


def _fit_to_volume_grid(
    mask: np.ndarray, mask_ijk_to_lps: np.ndarray, volume: Volume, source: Path, resample: bool
) -> np.ndarray:
    """Put a (k, j, i) mask onto the volume's grid, re-indexing it when its voxels map one-to-one.

    A mask maps one-to-one when, over the box its labelled voxels fill, every mask voxel lies within a
    quarter voxel of the volume voxel it is assigned to (same grid, crop or embed, flips, axis
    permutations, sub-voxel drift): in plane out to its edges, so a pixel of another size does not
    pass; across slices by its centre, since the engine works slice by slice and a mask slice lying
    on a volume slice marks that slice whatever its thickness. Anything else (an oblique plane, another
    spacing) is resampled by nearest neighbour only when asked, else refused.
    """
    check_geometry(source, mask_ijk_to_lps, "the mask's")  # a spacing of 1e30 mm overflows the grid match
    low, high = _labelled_box(mask)
    matches = [m for m in (_match_grid(name, grid, mask_ijk_to_lps, low, high) for name, grid in volume.reader_grids())
               if m is not None]
    best = min(matches, key=lambda m: m.displacement_voxels, default=None)
    if best is not None and best.displacement_voxels < _MAX_DISPLACEMENT_VOXELS:
        return _reindex(mask, best, volume, source, mask_ijk_to_lps)

    why = best.mismatch() if best is not None else "its axes are not parallel to the volume's"
    if not resample:
        raise InputError(
            source,
            f"mask lies on another grid: {_grid_text(mask, mask_ijk_to_lps, volume)}; {why}, so its voxels "
            f"do not map one-to-one onto the volume's; pass --resample-mask to resample it by nearest neighbour",
        )
    return _resample(mask, mask_ijk_to_lps, volume, source, why)


def _labelled_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last (i, j, k) voxel index of the box around the labelled voxels (the whole grid if none)."""
    low, high = np.zeros(3, int), np.array(mask.shape[::-1]) - 1
    for axis, array_axis in enumerate((2, 1, 0)):  # i, j, k
        others = tuple(a for a in range(3) if a != array_axis)
        labelled = np.flatnonzero(mask.any(axis=others))
        if labelled.size:
            low[axis], high[axis] = labelled[0], labelled[-1]
    return low, high


def _box_corners(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The 8 corners (i, j, k) of the box [low, high], as floats."""
    return np.array([[(low, high)[bit >> axis & 1][axis] for axis in range(3)] for bit in range(8)], dtype=np.float64)


def _match_grid(
    name: str, grid: np.ndarray, mask_ijk_to_lps: np.ndarray, low: np.ndarray, high: np.ndarray
) -> _GridMatch | None:
    """The nearest index map from the mask box [low, high] onto ``grid``'s voxels, or None when no axis pairing exists."""
    transform = np.linalg.inv(grid) @ mask_ijk_to_lps  # mask (i, j, k, 1) -> volume continuous (i, j, k, 1)
    linear, offset = transform[:3, :3], transform[:3, 3]
    volume_axis_of = np.argmax(np.abs(linear), axis=0)  # for each mask axis
    if sorted(volume_axis_of.tolist()) != [0, 1, 2]:
        return None
    in_plane_half = np.where(volume_axis_of == 2, 0.0, 0.5)  # edges in plane, centres across slices
    corners = _box_corners(low - in_plane_half, high + in_plane_half)
    permutation = np.zeros((3, 3))
    permutation[volume_axis_of, [0, 1, 2]] = np.sign(linear[volume_axis_of, [0, 1, 2]])
    centre = corners.mean(axis=0)  # rounding at the box centre keeps the largest deviation smallest
    integer_offset = np.rint((linear - permutation) @ centre + offset)
    deviations = corners @ (linear - permutation).T + (offset - integer_offset)  # (8, 3) in volume voxels
    return _GridMatch(
        grid_name=name,
        permutation=permutation,
        offset=integer_offset.astype(np.int64),
        displacement_voxels=float(np.abs(deviations).max()),
        displacement_mm=float(np.linalg.norm(deviations @ grid[:3, :3].T, axis=1).max()),
        scales=np.linalg.norm(linear, axis=0),
        angle_degrees=max(_angle_degrees(mask_ijk_to_lps[:3, c], grid[:3, volume_axis_of[c]]) for c in range(3)),
    )


def _angle_degrees(a: np.ndarray, b: np.ndarray) -> float:
    """The angle between two lines (0 to 90 degrees)."""
    cosine = abs(float(np.dot(a, b))) / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.degrees(np.arccos(min(cosine, 1.0))))


def _reindex(mask: np.ndarray, match: _GridMatch, volume: Volume, source: Path, mask_ijk_to_lps: np.ndarray) -> np.ndarray:
    """Paste the mask at ``match``'s offset after permuting and flipping its axes (views, no index lists)."""
    volume_shape = volume.pixels.shape[:3]
    mask_axis_of = np.argmax(np.abs(match.permutation), axis=1)  # for each volume axis i, j, k
    signs = match.permutation[[0, 1, 2], mask_axis_of][::-1]  # in array order k, j, i
    offset = match.offset[::-1]
    # array axis A of the volume is ijk axis 2 - A; it takes the mask's array axis 2 - (its ijk axis)
    ordered = mask.transpose([2 - mask_axis_of[2 - axis] for axis in range(3)])
    ordered = ordered[tuple(slice(None, None, -1) if sign < 0 else slice(None) for sign in signs)]
    sizes = np.array(ordered.shape)
    start = np.where(signs < 0, offset - (sizes - 1), offset)  # volume index of ordered[0, 0, 0]
    low, high = np.maximum(start, 0), np.minimum(start + sizes, np.array(volume_shape))
    fitted = np.zeros(volume_shape, dtype=bool)
    pasted = 0
    if np.all(low < high):
        part = ordered[tuple(slice(lo - st, hi - st) for lo, hi, st in zip(low, high, start))]
        fitted[tuple(slice(lo, hi) for lo, hi in zip(low, high))] = part
        pasted = int(np.count_nonzero(part))
    if not pasted:
        raise InputError(source, f"mask does not overlap the volume: {_grid_text(mask, mask_ijk_to_lps, volume)}")

    same_grid = (mask.shape == volume_shape and np.array_equal(match.permutation, np.eye(3))
                 and not match.offset.any())
    if match.displacement_voxels < _SAME_GRID_VOXELS:
        case = "same grid" if same_grid else "re-indexed (crop, flip or axis order)"
    else:
        case = (f"within tolerance (mask voxels up to {match.displacement_voxels:.3g} voxel, "
                f"{match.displacement_mm:.3g} mm off the volume's)")
    outside = int(np.count_nonzero(mask)) - pasted
    logger.info("%s: mask on the volume's grid: %s; matched as read with %s%s", source, case, match.grid_name,
                f"; {outside} labelled voxels lie outside the volume and are dropped" if outside else "")
    return fitted


def _resample(mask: np.ndarray, mask_ijk_to_lps: np.ndarray, volume: Volume, source: Path, why: str) -> np.ndarray:
    """Nearest neighbour on voxel centres: each volume voxel takes the label of the mask voxel holding its centre."""
    volume_shape = volume.pixels.shape[:3]
    volume_to_mask = np.linalg.inv(mask_ijk_to_lps) @ volume.ijk_to_lps
    mask_to_volume = np.linalg.inv(volume_to_mask)
    box_low, box_high = _labelled_box(mask)
    # Only volume voxels near the labelled box can take a label.
    reach = _box_corners(box_low, box_high) @ mask_to_volume[:3, :3].T + mask_to_volume[:3, 3]
    low = np.maximum(np.floor(reach.min(axis=0)) - 1, 0).astype(int)
    high = np.minimum(np.ceil(reach.max(axis=0)) + 1, np.array(volume_shape[::-1]) - 1).astype(int)
    fitted = np.zeros(volume_shape, dtype=bool)
    if np.all(low <= high):
        fitted[low[2]:high[2] + 1, low[1]:high[1] + 1, low[0]:high[0] + 1] = _sample(
            mask, volume_to_mask, low, high
        )
    labelled = int(mask.sum())
    if labelled and not fitted.any():
        raise InputError(source, f"mask does not overlap the volume: {_grid_text(mask, mask_ijk_to_lps, volume)}")

    # Round trip: a mask voxel changed label when the volume voxel holding its centre has another label.
    margin = np.ceil(np.abs(volume_to_mask[:3, :3]).sum(axis=1)).astype(int) + 1
    mask_low = np.maximum(box_low - margin, 0)
    mask_high = np.minimum(box_high + margin, np.array(mask.shape[::-1]) - 1)
    back = _sample(fitted, mask_to_volume, mask_low, mask_high)
    region = mask[mask_low[2]:mask_high[2] + 1, mask_low[1]:mask_high[1] + 1, mask_low[0]:mask_high[0] + 1]
    changed = int(np.count_nonzero(region != back))
    logger.warning("%s: resampled the mask onto the volume's grid by nearest neighbour (%s; %s): %d labelled mask "
                   "voxels, %d labelled volume voxels, %d mask voxels changed label", source,
                   _grid_text(mask, mask_ijk_to_lps, volume), why, labelled, int(fitted.sum()), changed)
    return fitted


def _sample(labels: np.ndarray, ijk_to_labels_ijk: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``labels`` (k, j, i) at the nearest voxel to each voxel centre of the box [low, high] (i, j, k) of another grid.

    Centres outside ``labels`` read as False. Goes slice by slice to keep memory small.
    """
    i = np.arange(low[0], high[0] + 1, dtype=np.float64)
    j = np.arange(low[1], high[1] + 1, dtype=np.float64)
    out = np.zeros((high[2] - low[2] + 1, j.size, i.size), dtype=bool)
    matrix = ijk_to_labels_ijk[:3]
    limits = labels.shape[::-1]  # i, j, k
    for n, k in enumerate(range(low[2], high[2] + 1)):
        # the affine map separates: index = offset + k*K + j*J + i*I, per target axis
        index = [np.floor(matrix[axis, 3] + k * matrix[axis, 2] + j[:, None] * matrix[axis, 1]
                          + i[None, :] * matrix[axis, 0] + 0.5).astype(np.int64) for axis in range(3)]
        inside = np.ones(index[0].shape, dtype=bool)
        for axis in range(3):
            inside &= (index[axis] >= 0) & (index[axis] < limits[axis])
        out[n][inside] = labels[index[2][inside], index[1][inside], index[0][inside]]
    return out


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


def _frames_text(volume: Volume, slices: list[int]) -> str:
    """' (frames 2, 1)' where a multi-frame file's slices are not in frame order, so users can tell."""
    frames = volume.frame_numbers
    if not frames or frames == list(range(1, len(frames) + 1)) or not slices:
        return ""
    shown = ", ".join(str(frames[k]) for k in slices[:10]) + (" ..." if len(slices) > 10 else "")
    return f" (frame{'s' if len(slices) > 1 else ''} {shown}; slices follow the plane's normal, not frame order)"


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
