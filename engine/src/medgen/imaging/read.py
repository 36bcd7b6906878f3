"""Read a scan (DICOM file or series folder, NIfTI, NRRD, PNG/JPEG) into a :class:`Volume`.

Every problem with the input becomes an :class:`InputError` naming the file, so the CLI and the
server can show it as one line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from PIL import Image, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
    SegmentationStorage,
)

from medgen.errors import InputError
from medgen.imaging.library_messages import captured_library_messages, captured_native_stderr, first_line
from medgen.imaging.limits import check_geometry, check_size
from medgen.imaging.volume import PixelFormat, SourceFormat, Volume

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
PLAIN_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# Photometric interpretations of *decoded* pixels that the intensity mapping understands.
SUPPORTED_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2", "RGB")

# Label Map Segmentation Storage is newer than pydicom 3.0's UID table.
_MASK_SOP_CLASSES = (SegmentationStorage, UID("1.2.840.10008.5.1.4.1.1.66.7"))

# Two slice positions closer than this (mm, along the normal) are the same position.
_SAME_POSITION_MM = 1e-3
_ORIENTATION_ATOL = 1e-4
# Row/column direction cosines shorter than this, or at a smaller sine of the angle between them,
# span no plane: damage, not a scan.
_MIN_DIRECTION_LENGTH = 1e-3
_MIN_DIRECTION_SINE = 1e-3


def read_volume(path: str | Path) -> Volume:
    """Read a DICOM file, a folder holding one DICOM series, a NIfTI/NRRD volume or a PNG/JPEG image."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    check_regular_file(path, "input")
    if path.is_dir():
        return _read_dicom_folder(path)
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return _read_itk_volume(path, SourceFormat.NIFTI)
    if name.endswith(NRRD_SUFFIXES):
        return _read_itk_volume(path, SourceFormat.NRRD)
    if name.endswith(PLAIN_IMAGE_SUFFIXES):
        return _read_plain_image(path)
    return _read_dicom_series([path], source=path)


def check_regular_file(path: Path, what: str) -> None:
    """Refuse a FIFO, device or socket before anything opens it (opening a FIFO blocks for ever)."""
    if path.is_dir() or path.is_file():  # both follow symlinks; is_file is True only for regular files
        return
    raise InputError(path, f"the {what} is not a regular file or folder (a FIFO, device or socket?)",
                     reason="special-file")


# --- DICOM -------------------------------------------------------------------------------------


@dataclass
class _SliceInfo:
    """The per-slice (or per-frame) attributes that decide order, geometry and rescale."""

    position: np.ndarray | None
    orientation: np.ndarray | None  # 6 values: row direction, column direction
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns)
    slice_spacing: float | None  # SpacingBetweenSlices, else SliceThickness
    slope: float
    intercept: float
    window: tuple[float, float] | None
    instance_number: int | None


def _read_dicom_folder(folder: Path) -> Volume:
    """Pick the one image series in ``folder`` (not recursive) and read it."""
    series: dict[str, list[Path]] = {}
    descriptions: dict[str, str] = {}
    skipped_non_images: list[str] = []
    for file in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        if file.name.upper() == "DICOMDIR":
            continue
        try:
            with captured_library_messages():
                header = pydicom.dcmread(file, stop_before_pixels=True)
        except InvalidDicomError:
            logger.debug("skipping %s: not DICOM", file)
            continue
        except Exception as exc:  # a broken file inside the series must not be skipped silently
            raise InputError(file, f"cannot read DICOM header: {first_line(exc)}", reason="damaged") from exc
        if header.get("SOPClassUID") == MediaStorageDirectoryStorage:
            continue
        if "Rows" not in header:
            skipped_non_images.append(f"{file.name} ({_sop_class_name(header)})")
            continue
        uid = str(header.get("SeriesInstanceUID", "(no SeriesInstanceUID)"))
        series.setdefault(uid, []).append(file)
        descriptions.setdefault(uid, str(header.get("SeriesDescription", "")))

    if not series:
        if skipped_non_images:
            raise InputError(folder, f"holds no DICOM images, only {', '.join(skipped_non_images[:5])}",
                             reason="not-an-image")
        raise InputError(folder, "holds no DICOM files", reason="not-dicom")
    if len(series) > 1:
        listing = "; ".join(
            f"{uid} '{descriptions[uid]}' ({len(files)} files)" for uid, files in series.items()
        )
        raise InputError(folder, f"holds {len(series)} series, pass a folder with one: {listing}",
                         reason="not-one-volume")
    if skipped_non_images:
        logger.info("%s: ignoring non-image files %s", folder, ", ".join(skipped_non_images))
    (files,) = series.values()
    return _read_dicom_series(files, source=folder)


def _read_dicom_series(paths: list[Path], *, source: Path) -> Volume:
    """Read the files of one series: a single multi-frame instance or single-frame slices."""
    datasets = [_read_dataset(path) for path in paths]
    if len(datasets) == 1 and _is_multiframe(datasets[0], paths[0]):
        return _multiframe_volume(datasets[0], paths[0])
    if any(_is_multiframe(ds, path) for ds, path in zip(datasets, paths)):
        raise InputError(source, "mixes multi-frame instances with other files; pass one multi-frame file",
                         reason="not-one-volume")

    if len(datasets) > 1 and "PixelData" in datasets[0]:  # the whole series, before any slice is decoded
        first = datasets[0]
        check_size(source, rows=_header_int(first, "Rows", paths[0]), columns=_header_int(first, "Columns", paths[0]),
                   frames=len(datasets), samples=_header_int(first, "SamplesPerPixel", paths[0], default=1))
    decoded = [_decode_pixels(ds, path) for ds, path in zip(datasets, paths)]
    first_pixels, first_format = decoded[0]
    for (pixels, pixel_format), path in zip(decoded[1:], paths[1:]):
        if pixels.shape != first_pixels.shape or pixel_format != first_format:
            raise InputError(
                path,
                f"slice differs from {paths[0].name}: {pixels.shape} {pixel_format} vs "
                f"{first_pixels.shape} {first_format}",
                reason="not-one-volume",
            )

    infos = [_slice_info(ds, None, path) for ds, path in zip(datasets, paths)]
    order, ijk_to_lps, spacing = _stack_geometry(infos, source)
    return Volume(
        pixels=np.concatenate([decoded[i][0] for i in order]),
        spacing=spacing,
        ijk_to_lps=ijk_to_lps,
        modality=str(datasets[0].get("Modality", "OT") or "OT"),
        pixel_format=first_format,
        rescale_slope=np.array([infos[i].slope for i in order], dtype=np.float64),
        rescale_intercept=np.array([infos[i].intercept for i in order], dtype=np.float64),
        source_format=SourceFormat.DICOM,
        source_paths=[paths[i] for i in order],
        datasets=[datasets[i] for i in order],
        frame_numbers=None,
        source_window=infos[order[0]].window,
    )


def _multiframe_volume(ds: pydicom.Dataset, path: Path) -> Volume:
    """Enhanced (or older) multi-frame instance: frames sorted by position, one dataset kept."""
    frames, pixel_format = _decode_pixels(ds, path)
    num_frames = frames.shape[0]
    infos = [_slice_info(ds, i, path) for i in range(num_frames)]
    if infos[0].position is None:
        logger.warning("%s: frames carry no position; keeping frame order and 1 mm spacing defaults", path)
    order, ijk_to_lps, spacing = _stack_geometry(infos, path)
    return Volume(
        pixels=frames[order],
        spacing=spacing,
        ijk_to_lps=ijk_to_lps,
        modality=str(ds.get("Modality", "OT") or "OT"),
        pixel_format=pixel_format,
        rescale_slope=np.array([infos[i].slope for i in order], dtype=np.float64),
        rescale_intercept=np.array([infos[i].intercept for i in order], dtype=np.float64),
        source_format=SourceFormat.DICOM,
        source_paths=[path],
        datasets=[ds],
        frame_numbers=[int(i) + 1 for i in order],
        source_window=infos[order[0]].window,
    )


def _read_dataset(path: Path) -> pydicom.Dataset:
    """Read a DICOM file; one without Part-10 meta is read as a bare data set when it parses as one."""
    try:
        with captured_library_messages() as messages:
            try:
                ds = pydicom.dcmread(path)
            except InvalidDicomError:
                ds = _read_bare_dataset(path)
            _fill_transfer_syntax(ds, path)
            parse_every_element(ds, keep_private_raw=getattr(ds, "original_encoding", (False,))[0] is True)
    except InputError:
        raise
    except Exception as exc:  # pydicom raises many kinds on damaged files
        raise InputError(path, f"cannot read DICOM file (damaged or truncated?): {first_line(exc)}",
                         reason="damaged") from exc
    for message in messages:
        logger.debug("%s: %s", path, message)
    return ds


def parse_every_element(ds: pydicom.Dataset, *, keep_private_raw: bool) -> None:
    """Parse every element now, so a value pydicom cannot read is a damaged file before any work.

    Private elements of an implicit-VR file stay unparsed: their VR is unknown, and the writer keeps
    their raw bytes (medgen.dicom.repair.private_elements_as_unknown).
    """
    for tag in list(ds.keys()):
        if keep_private_raw and tag.is_private:
            continue
        element = ds[tag]
        if element.VR == "SQ":
            for item in element.value:
                parse_every_element(item, keep_private_raw=keep_private_raw)


def _read_bare_dataset(path: Path) -> pydicom.Dataset:
    """A data set written without the 128-byte preamble and file meta (old ACR-NEMA style files)."""
    not_dicom = InputError(
        path,
        "not a DICOM file (no DICM preamble and no DICOM data set), and not NIfTI (.nii/.nii.gz), "
        "NRRD (.nrrd/.nhdr) or PNG/JPEG by its name",
        reason="not-dicom",
    )
    try:
        ds = pydicom.dcmread(path, force=True)
        looks_like_dicom = "SOPClassUID" in ds or ("Rows" in ds and "PixelData" in ds)
    except Exception:
        raise not_dicom from None
    if not looks_like_dicom:
        raise not_dicom
    logger.info("%s: no DICOM file meta; read as a bare data set", path)
    return ds


def _fill_transfer_syntax(ds: pydicom.Dataset, path: Path) -> None:
    """A file without Transfer Syntax UID in its meta: name the encoding pydicom found it in."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        return
    syntax = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    if "PixelData" in ds and _is_encapsulated(ds):
        raise InputError(path, "compressed pixel data, but the file names no transfer syntax", reason="damaged")
    if meta is None:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax


def _is_encapsulated(ds: pydicom.Dataset) -> bool:
    element = ds.get_item("PixelData")
    value = getattr(element, "value", None)
    return isinstance(value, (bytes, bytearray)) and value[:4] == b"\xfe\xff\x00\xe0"


def _number_of_frames(ds: pydicom.Dataset, path: Path | None = None) -> int:
    """Number of Frames as a count; a value that is not a whole number is a damaged header."""
    value = ds.get("NumberOfFrames", 1)
    if value in (None, ""):
        return 1
    try:
        return int(str(value).strip())
    except ValueError:
        raise InputError(path, f"Number of Frames {str(value)!r} is not a whole number", reason="damaged") from None


def _is_multiframe(ds: pydicom.Dataset, path: Path | None = None) -> bool:
    """Multi-frame means more than one frame, or an enhanced IOD whose geometry sits in functional groups."""
    return _number_of_frames(ds, path) > 1 or "PerFrameFunctionalGroupsSequence" in ds


def _sop_class_name(ds: pydicom.Dataset) -> str:
    uid = ds.get("SOPClassUID")
    return getattr(uid, "name", None) or str(uid or "unknown SOP class")


def _decode_pixels(ds: pydicom.Dataset, path: Path) -> tuple[np.ndarray, PixelFormat]:
    """Decode all frames; the PixelFormat records the photometric of the decoded array (YBR → RGB)."""
    if ds.get("SOPClassUID") in _MASK_SOP_CLASSES:
        raise InputError(path, f"is a {_sop_class_name(ds)} object, not an image; pass it as the mask",
                         reason="segmentation-as-input")
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise InputError(path, "float pixel data (parametric map) is not supported", reason="float-pixels")
        if "Rows" in ds and ds.get("SOPClassUID") is None or _is_image_storage(ds):
            raise InputError(path, "has image attributes but no pixel data (is the file truncated?)", reason="damaged")
        raise InputError(path, f"has no pixel data: {_sop_class_name(ds)} is not an image", reason="not-an-image")

    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric == "PALETTE COLOR":
        raise InputError(path, "palette colour (PALETTE COLOR) is not supported; convert to grayscale or RGB first",
                         reason="palette-colour")
    bits_allocated = _header_int(ds, "BitsAllocated", path)
    if bits_allocated not in (8, 16, 32):
        raise InputError(path, f"Bits Allocated {bits_allocated} is not supported (8, 16 or 32)",
                         reason="bits-allocated")
    check_size(path, rows=_header_int(ds, "Rows", path), columns=_header_int(ds, "Columns", path),
               frames=_number_of_frames(ds, path), samples=_header_int(ds, "SamplesPerPixel", path, default=1))

    file_meta = getattr(ds, "file_meta", None)
    transfer_syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    syntax_name = getattr(transfer_syntax, "name", str(transfer_syntax))
    try:
        decoder = get_decoder(transfer_syntax)
    except Exception as exc:
        raise InputError(path, f"no decoder for transfer syntax {syntax_name}: {first_line(exc)}", reason="codec") from exc
    if not decoder.is_available:
        raise InputError(path, f"no installed decoder reads transfer syntax {syntax_name}", reason="codec")
    try:
        with captured_library_messages(), captured_native_stderr():  # a Rust decoder's panic message too
            # as_rgb=True converts YBR_FULL / YBR_FULL_422 to RGB; meta says what the array really holds.
            pixels, meta = decoder.as_array(ds, as_rgb=True)
    except Exception as exc:
        # pydicom tries each plugin; the first plugin's reason is the useful one
        raise InputError(path, f"cannot decode pixel data (transfer syntax {syntax_name}): {first_line(exc)}",
                         reason="damaged" if transfer_syntax and not transfer_syntax.is_compressed else "codec") from exc
    except BaseException as exc:
        # a decoder written in Rust panics on some damaged streams (pyo3's PanicException is no Exception)
        if type(exc).__name__ != "PanicException":
            raise
        raise InputError(path, f"the {syntax_name} decoder failed on damaged pixel data: {first_line(exc)}",
                         reason="damaged") from None

    decoded_photometric = str(meta.get("photometric_interpretation", photometric))
    if decoded_photometric not in SUPPORTED_PHOTOMETRICS:
        raise InputError(
            path,
            f"photometric interpretation {decoded_photometric} (decoded from {photometric}) is not "
            f"supported; convert to grayscale or RGB first",
            reason="photometric",
        )
    samples = int(meta.get("samples_per_pixel", ds.get("SamplesPerPixel", 1)))
    if (samples == 3) != (decoded_photometric == "RGB"):
        raise InputError(path, f"{samples} samples per pixel do not fit photometric {decoded_photometric}",
                         reason="photometric")
    pixel_format = PixelFormat(
        bits_allocated=int(meta.get("bits_allocated", ds.BitsAllocated)),
        bits_stored=int(meta.get("bits_stored", ds.get("BitsStored", ds.BitsAllocated))),
        signed=int(meta.get("pixel_representation", ds.get("PixelRepresentation", 0))) == 1,
        photometric=decoded_photometric,
        samples_per_pixel=samples,
    )
    if pixel_format.bits_allocated not in (8, 16, 32):
        raise InputError(path, f"decoded pixels of {pixel_format.bits_allocated} bits are not supported (8, 16 or 32)",
                         reason="bits-allocated")
    single_frame_ndim = 2 if samples == 1 else 3
    if pixels.ndim == single_frame_ndim:
        pixels = pixels[np.newaxis]
    return pixels, pixel_format


def _is_image_storage(ds: pydicom.Dataset) -> bool:
    """SOP classes whose instances must hold pixel data (their names end in 'Image Storage')."""
    name = getattr(ds.get("SOPClassUID"), "name", "") or ""
    return name.endswith("Image Storage")


def _header_int(ds: pydicom.Dataset, keyword: str, path: Path, *, default: int | None = None) -> int:
    """A whole-number header attribute (Rows, Columns, ...); missing or malformed is a damaged header."""
    value = ds.get(keyword, default)
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0] if len(value) else None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputError(path, f"{keyword} {value!r} is missing or not a whole number", reason="damaged") from None


def _functional_value(ds: pydicom.Dataset, frame_index: int | None, sequence: str, keyword: str):
    """An attribute from the frame's functional group, else the shared one, else the top level."""
    if frame_index is not None:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        candidates = []
        if per_frame and frame_index < len(per_frame):
            candidates.append(per_frame[frame_index])
        shared = ds.get("SharedFunctionalGroupsSequence")
        if shared:
            candidates.append(shared[0])
        for group in candidates:
            items = group.get(sequence)
            if items and keyword in items[0]:
                return items[0][keyword].value
    return ds.get(keyword)


def _first_float(value) -> float | None:
    """DICOM DS values may be multi-valued (WindowCenter) or empty; take the first number."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return _finite(value[0]) if len(value) else None
    return _finite(value)


def _finite(value) -> float:
    number = float(value)
    if not np.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _positive_pair(value) -> tuple[float, float] | None:
    """A (row, column) spacing, or None when absent or zero (some CR files store 0\\0)."""
    if not value or isinstance(value, (str, bytes)) or len(value) != 2:
        return None
    pair = (_finite(value[0]), _finite(value[1]))
    return pair if pair[0] > 0 and pair[1] > 0 else None


def _slice_info(ds: pydicom.Dataset, frame_index: int | None, path: Path) -> _SliceInfo:
    """The slice's attributes; a number that does not parse is a damaged header, named."""
    try:
        with captured_library_messages():
            return _parse_slice_info(ds, frame_index)
    except (TypeError, ValueError, AttributeError, IndexError, KeyError, OverflowError) as exc:
        raise InputError(path, f"geometry or rescale attributes do not parse: {first_line(exc)}",
                         reason="damaged") from exc


def _parse_slice_info(ds: pydicom.Dataset, frame_index: int | None) -> _SliceInfo:
    def value(sequence: str, keyword: str):
        return _functional_value(ds, frame_index, sequence, keyword)

    position = value("PlanePositionSequence", "ImagePositionPatient")
    orientation = value("PlaneOrientationSequence", "ImageOrientationPatient")
    position = _grid_frame_position(ds, frame_index, position, orientation)
    spacing = _positive_pair(value("PixelMeasuresSequence", "PixelSpacing"))
    if spacing is None:  # projection radiographs often carry only the detector spacing
        spacing = _positive_pair(ds.get("ImagerPixelSpacing"))
    slice_spacing = _first_float(value("PixelMeasuresSequence", "SpacingBetweenSlices"))
    if not slice_spacing:
        slice_spacing = _first_float(value("PixelMeasuresSequence", "SliceThickness"))
    slope = _first_float(value("PixelValueTransformationSequence", "RescaleSlope"))
    intercept = _first_float(value("PixelValueTransformationSequence", "RescaleIntercept"))
    center = _first_float(value("FrameVOILUTSequence", "WindowCenter"))
    width = _first_float(value("FrameVOILUTSequence", "WindowWidth"))
    instance_number = ds.get("InstanceNumber")
    return _SliceInfo(
        position=np.array([_finite(v) for v in position]) if position is not None and len(position) == 3 else None,
        orientation=(np.array([_finite(v) for v in orientation])
                     if orientation is not None and not isinstance(orientation, str) and len(orientation) == 6 else None),
        pixel_spacing=spacing,
        slice_spacing=abs(slice_spacing) if slice_spacing else None,
        slope=1.0 if slope is None else slope,
        intercept=0.0 if intercept is None else intercept,
        window=(center, width) if center is not None and width else None,
        instance_number=int(instance_number) if instance_number not in (None, "") else None,
    )


def _grid_frame_position(ds: pydicom.Dataset, frame_index: int | None, position, orientation):
    """RT Dose frames: Image Position plus the frame's Grid Frame Offset along the normal (PS3.3 C.8.8.3.2)."""
    offsets = ds.get("GridFrameOffsetVector")
    if frame_index is None or offsets is None or "PerFrameFunctionalGroupsSequence" in ds:
        return position
    if not position or len(position) != 3 or not orientation or len(orientation) != 6:
        return position
    offsets = list(offsets) if isinstance(offsets, (list, tuple, pydicom.multival.MultiValue)) else [offsets]
    if frame_index >= len(offsets):
        return position
    row, column = np.array([_finite(v) for v in orientation[:3]]), np.array([_finite(v) for v in orientation[3:]])
    start = np.array([_finite(v) for v in position])
    # relative vectors start at 0; absolute ones start at the first frame's z: the difference serves both
    relative = _finite(offsets[frame_index]) - _finite(offsets[0])
    return list(start + np.cross(row, column) * relative)


def _stack_geometry(
    infos: list[_SliceInfo], source: Path
) -> tuple[list[int], np.ndarray, tuple[float, float, float]]:
    """Slice order and the ijk→LPS matrix; a header whose geometry overflows (positions of 1e300) is
    refused as damaged here, without numpy's overflow warnings reaching the terminal."""
    with np.errstate(over="ignore", invalid="ignore"):
        order, ijk_to_lps, spacing = _stack_geometry_unchecked(infos, source)
    check_geometry(source, ijk_to_lps, "the image's")
    return order, ijk_to_lps, spacing


def _check_orientation(row_direction: np.ndarray, column_direction: np.ndarray, source: Path) -> None:
    """Refuse row/column directions that span no plane (zero or parallel): there is no slice normal."""
    lengths = np.array([np.linalg.norm(row_direction), np.linalg.norm(column_direction)])
    if lengths.min() >= _MIN_DIRECTION_LENGTH:
        sine = np.linalg.norm(np.cross(row_direction, column_direction)) / lengths.prod()
        if sine >= _MIN_DIRECTION_SINE:
            return
    text = "\\".join(f"{v:g}" for v in (*row_direction, *column_direction))
    raise InputError(source, f"ImageOrientationPatient {text} is degenerate: its row and column directions must be "
                     "non-zero and not parallel", reason="damaged")


def _stack_geometry_unchecked(
    infos: list[_SliceInfo], source: Path
) -> tuple[list[int], np.ndarray, tuple[float, float, float]]:
    """Slice order and the ijk→LPS matrix: sort along the normal, else by InstanceNumber."""
    if any(info.slope == 0 for info in infos):
        raise InputError(source, "RescaleSlope is 0; stored values cannot be mapped to modality values",
                         reason="rescale")

    orientations = [info.orientation for info in infos if info.orientation is not None]
    if orientations and len(orientations) == len(infos):
        if any(not np.allclose(o, orientations[0], atol=_ORIENTATION_ATOL) for o in orientations):
            raise InputError(source, "slices have different orientations (ImageOrientationPatient); not one volume",
                             reason="not-one-volume")
        row_direction, column_direction = orientations[0][:3], orientations[0][3:]
        _check_orientation(row_direction, column_direction, source)
    else:
        row_direction, column_direction = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    normal = np.cross(row_direction, column_direction)

    default_step = infos[0].slice_spacing or 1.0
    have_positions = orientations and all(info.position is not None for info in infos)
    if have_positions:
        distances = np.array([info.position @ normal for info in infos])
        order = [int(i) for i in np.argsort(distances, kind="stable")]
        sorted_distances = distances[order]
        gaps = np.diff(sorted_distances)
        if np.any(gaps < _SAME_POSITION_MM):
            k = int(np.argmin(gaps))
            raise InputError(
                source,
                f"{int(np.sum(gaps < _SAME_POSITION_MM)) + 1} slices share a position "
                f"({sorted_distances[k]:.3f} mm along the normal); a multi-echo, dynamic or "
                f"multi-stack series is not one volume",
                reason="not-one-volume",
            )
        origin = infos[order[0]].position
        if len(infos) > 1:
            step = (infos[order[-1]].position - origin) / (len(infos) - 1)
            if gaps.max() - gaps.min() > 0.01 * max(float(gaps.mean()), 1e-6):
                logger.warning("%s: slice spacing is irregular (%.3f to %.3f mm)", source, gaps.min(), gaps.max())
        else:
            step = normal * default_step
    else:
        keys = [(info.instance_number if info.instance_number is not None else index, index)
                for index, info in enumerate(infos)]
        order = [index for _, index in sorted(keys)]
        origin = infos[order[0]].position if infos[order[0]].position is not None else np.zeros(3)
        step = normal * default_step

    row_spacing, column_spacing = infos[order[0]].pixel_spacing or (1.0, 1.0)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, 0] = row_direction * column_spacing
    ijk_to_lps[:3, 1] = column_direction * row_spacing
    ijk_to_lps[:3, 2] = step
    ijk_to_lps[:3, 3] = origin
    spacing = (float(np.linalg.norm(step)), float(row_spacing), float(column_spacing))
    return order, ijk_to_lps, spacing


# --- NIfTI / NRRD ------------------------------------------------------------------------------


def itk_ijk_to_lps(image: sitk.Image) -> np.ndarray:
    """4x4 (i, j, k) → LPS matrix of a SimpleITK image (ITK already works in LPS); 2-D gets a unit k."""
    dimension = image.GetDimension()
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(dimension, dimension)
    matrix = np.eye(4)
    matrix[:dimension, :dimension] = direction @ np.diag(image.GetSpacing())
    matrix[:dimension, 3] = image.GetOrigin()
    return matrix


def itk_error_message(exc: Exception) -> str:
    """SimpleITK errors span many lines of C++ context; keep the sentence that says what went wrong."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "Description:" in line:
            return line.split("Description:", 1)[1].strip()
    return lines[-1] if lines else type(exc).__name__


def read_itk_image(path: Path, what: str) -> sitk.Image:
    """Read a NIfTI/NRRD file with SimpleITK, turning its errors into an InputError.

    The header is read first and its size checked against the limits, so a header that lies about
    its size cannot make the reader allocate it.
    """
    check_regular_file(path, what)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with captured_native_stderr():  # ITK's warnings and niftilib's "** ERROR" lines
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(path, f"cannot read {what}: {itk_error_message(exc)}", reason="damaged") from exc
    size = [int(n) for n in reader.GetSize()]
    if len(size) not in (2, 3, 4) or any(n < 1 for n in size):
        raise InputError(path, f"{what} header gives the size {size}", reason="dimensions" if size else "damaged")
    frames = int(np.prod(size[2:])) if len(size) > 2 else 1
    check_size(path, rows=size[1], columns=size[0], frames=frames,
               samples=int(reader.GetNumberOfComponents()))
    try:
        with captured_native_stderr():
            return reader.Execute()
    except RuntimeError as exc:
        raise InputError(path, f"cannot read {what}: {itk_error_message(exc)}", reason="damaged") from exc


def is_slicer_segmentation(path: Path) -> bool:
    """True for a .seg.nrrd-style NRRD (Segment0_* header fields), which is a mask, not an image."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with captured_native_stderr():
            reader.ReadImageInformation()
    except RuntimeError:
        return False
    return any(key.startswith("Segment0_") for key in reader.GetMetaDataKeys())


def _read_itk_volume(path: Path, source_format: SourceFormat) -> Volume:
    what = "NIfTI image" if source_format is SourceFormat.NIFTI else "NRRD image"
    if source_format is SourceFormat.NRRD and is_slicer_segmentation(path):
        raise InputError(path, "is a Slicer segmentation (.seg.nrrd), not an image; pass it as the mask",
                         reason="segmentation-as-input")
    image = read_itk_image(path, what)
    if image.GetDimension() not in (2, 3):
        raise InputError(path, f"{image.GetDimension()}-D images are not supported; extract one 3-D volume first",
                         reason="dimensions")
    if image.GetNumberOfComponentsPerPixel() not in (1, 3):
        raise InputError(path, f"{image.GetNumberOfComponentsPerPixel()} components per voxel are not supported",
                         reason="dimensions")

    pixels = sitk.GetArrayFromImage(image)  # (k, j, i[, c])
    if image.GetDimension() == 2:
        pixels = pixels[np.newaxis]
    ijk_to_lps = itk_ijk_to_lps(image)
    check_geometry(path, ijk_to_lps, "the image's")
    spacing = tuple(float(np.linalg.norm(ijk_to_lps[:3, axis])) for axis in (2, 1, 0))
    count = pixels.shape[0]
    return Volume(
        pixels=pixels,
        spacing=spacing,
        ijk_to_lps=ijk_to_lps,
        modality=_itk_modality(image),
        pixel_format=None,
        rescale_slope=np.ones(count),
        rescale_intercept=np.zeros(count),
        source_format=source_format,
        source_paths=[path],
        itk_image=image,
    )


def _itk_modality(image: sitk.Image) -> str:
    """A Modality entry in the header (some converters write one), else OT."""
    for key in image.GetMetaDataKeys():
        if key.lower() == "modality":
            value = image.GetMetaData(key).strip().upper()
            if value.isalpha() and 1 < len(value) <= 4:
                return value
    return "OT"


# --- PNG / JPEG --------------------------------------------------------------------------------


def read_plain_image_pixels(path: Path, what: str) -> np.ndarray:
    """A PNG/JPEG as a 2-D array (colour reduced to luma); its size is checked before decoding."""
    check_regular_file(path, what)
    try:
        with Image.open(path) as image:
            columns, rows = image.size
            check_size(path, rows=rows, columns=columns, samples=len(image.getbands()))
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I", "L", "F"):
                return np.array(image)
            return np.array(image.convert("L"))
    except InputError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow refuses a claimed size far over its own limit at open
        raise InputError(path, f"image header claims more pixels than the limit: {first_line(exc)}",
                         reason="too-large") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(path, f"cannot read {what}: {first_line(exc)}", reason="damaged") from exc


def _read_plain_image(path: Path) -> Volume:
    """A 2-D image as one grayscale slice; colour is reduced to BT.601 luma (Pillow's 'L')."""
    pixels = read_plain_image_pixels(path, "image")
    if pixels.dtype == np.int32 and pixels.min() >= 0 and pixels.max() <= np.iinfo(np.uint16).max:
        pixels = pixels.astype(np.uint16)  # 16-bit PNGs open as mode 'I' on some Pillow versions
    return Volume(
        pixels=pixels[np.newaxis],
        spacing=(1.0, 1.0, 1.0),
        ijk_to_lps=np.eye(4),
        modality="OT",
        pixel_format=None,
        rescale_slope=np.ones(1),
        rescale_intercept=np.zeros(1),
        source_format=SourceFormat.PNG,
        source_paths=[path],
    )
