"""Turn a job's multipart upload into the files `medgen inpaint` reads, and check them before queueing.

The form has these parts:

- ``parameters``: JSON of :class:`JobParameters`;
- ``source``: the DICOM instances of the slices (one part per file), or one NRRD, NIfTI or NPY volume;
- ``source_geometry``: for an NPY source only, JSON ``{"ijk_to_lps": 4x4}`` or ``{"ijk_to_ras": 4x4}``
  taking (column i, row j, slice k) to millimetres; the array is indexed (k, j, i);
- ``mask``: a labelmap on the source's grid (NRRD, .seg.nrrd, NIfTI or NPY of the source's shape) or
  a DICOM SEG;
- ``source_pixels``: optional, beside DICOM ``source`` parts: the voxels the client actually shows (NPY);
  the DICOM files are then header templates only, and must agree with these voxels outside the mask
  (medgen.server.template_check).

Nothing the client names is used as a path: files are saved under names the server chooses. Every
problem becomes a 4xx with a sentence that says what to fix, before the job takes a place in the queue.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from medgen.server.errors import ApiError
from medgen.server.schemas import JobParameters, Limits, SourceInfo
from medgen.server.template_check import check_sent_pixels, save_sent_pixels

logger = logging.getLogger(__name__)

FORM_FIELDS = ("parameters", "source", "source_geometry", "mask", "source_pixels")
_MAX_TEXT_PART_BYTES = 64 * 1024
_COPY_CHUNK = 1 << 20
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class ReceivedUpload:
    parameters: JobParameters
    source_path: Path
    mask_path: Path


async def receive_upload(request: Request, limits: Limits, input_dir: Path) -> ReceivedUpload:
    """Read the form, save the files under ``input_dir`` and return where they are."""
    # 1. Read the form; Starlette spools file parts to disk and caps their number
    form = await request.form(max_files=limits.max_files + 2,  # the DICOM files, the mask, the sent voxels
                              max_fields=len(FORM_FIELDS), max_part_size=_MAX_TEXT_PART_BYTES)
    try:
        unknown = sorted(set(form.keys()) - set(FORM_FIELDS))
        if unknown:
            raise _bad(f"unknown form field(s) {', '.join(unknown)}; expected {', '.join(FORM_FIELDS)}")

        # 2. Parameters first: a typo fails before any file is written
        parameters = parse_parameters(_single_text(form, "parameters", required=True))

        # 3. The files, saved under names of our choosing
        sources = _files(form, "source")
        masks = _files(form, "mask")
        if not sources:
            raise _bad("the form has no 'source' file: send the DICOM instances of the slices or one NRRD/NIfTI/NPY volume")
        if len(masks) != 1:
            raise _bad(f"send exactly one 'mask' file (a labelmap on the source's grid or a DICOM SEG), got {len(masks)}")
        geometry_text = _single_text(form, "source_geometry", required=False)
        input_dir.mkdir(parents=True, exist_ok=False)
        source_path = await _save_source(sources, geometry_text, input_dir, limits)
        mask_path = await _save_mask(masks[0], input_dir)
        await save_sent_pixels(form, input_dir)  # voxels beside DICOM header templates, if sent
    finally:
        await form.close()
    return ReceivedUpload(parameters=parameters, source_path=source_path, mask_path=mask_path)


def parse_parameters(text: str) -> JobParameters:
    """The job's parameters; 400 for text that is not JSON, 422 naming each field whose value is refused."""
    try:
        return JobParameters.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(_validation_sentence(error) for error in exc.errors())
        if any(error.get("type") == "json_invalid" for error in exc.errors()):
            raise _bad(f"invalid parameters: {problems}") from None
        raise ApiError(422, "invalid_parameters", f"invalid parameters: {problems}") from None


def _validation_sentence(error: dict) -> str:
    where = ".".join(str(part) for part in error.get("loc", ())) or "parameters"
    if error.get("type") == "extra_forbidden":
        return f"unknown parameter {where!r}"
    if error.get("type") == "json_invalid":
        return f"not valid JSON ({error.get('msg')})"
    return f"{where}: {error.get('msg')}"


def _single_text(form, name: str, *, required: bool) -> str | None:
    values = form.getlist(name)
    if not values:
        if required:
            raise _bad(f"the form has no '{name}' field")
        return None
    if len(values) > 1 or not isinstance(values[0], str):
        raise _bad(f"'{name}' must be one text field")
    return values[0]


def _files(form, name: str) -> list[UploadFile]:
    values = form.getlist(name)
    for value in values:
        if not isinstance(value, UploadFile):
            raise _bad(f"'{name}' must be sent as a file part (with a filename), not as a text field")
    return values


# --- sources -----------------------------------------------------------------------------------


def sniff(head: bytes, filename: str) -> str:
    """The kind of an uploaded file from its first bytes (its name only breaks NIfTI ties)."""
    name = filename.lower()
    if head.startswith(b"NRRD000"):
        return "nrrd"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "nifti"
    if head.startswith(b"\x1f\x8b") and name.endswith(".nii.gz"):
        return "nifti.gz"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG"):
        return "png"
    return "unknown"


async def _head(upload: UploadFile) -> bytes:
    await upload.seek(0)
    head = await upload.read(512)
    await upload.seek(0)
    return head


async def _copy(upload: UploadFile, target: Path) -> None:
    await upload.seek(0)
    with open(target, "wb") as out:
        while chunk := await upload.read(_COPY_CHUNK):
            out.write(chunk)


async def _save_source(sources: list[UploadFile], geometry_text: str | None, input_dir: Path, limits: Limits) -> Path:
    kinds = [sniff(await _head(upload), upload.filename or "") for upload in sources]
    if len(sources) == 1 and kinds[0] in ("nrrd", "nifti", "nifti.gz", "npy"):
        kind = kinds[0]
        if kind == "npy":
            raw = input_dir / "source.npy"
            await _copy(sources[0], raw)
            matrix = parse_geometry(geometry_text)
            return npy_to_nrrd(raw, input_dir / "source.nrrd", matrix, what="source", limits=limits)
        if geometry_text is not None:
            raise _bad("'source_geometry' is only for an NPY source; an NRRD or NIfTI file carries its own geometry")
        target = input_dir / {"nrrd": "source.nrrd", "nifti": "source.nii", "nifti.gz": "source.nii.gz"}[kind]
        await _copy(sources[0], target)
        return target

    # DICOM instances: anything else must be one, each checked by the reader
    for upload, kind in zip(sources, kinds, strict=True):
        if kind in ("nrrd", "nifti", "nifti.gz", "npy", "png"):
            raise _bad(
                f"source file {upload.filename!r} is {kind.upper()}; send either DICOM instances or one volume file"
            )
    if geometry_text is not None:
        raise _bad("'source_geometry' is only for an NPY source; DICOM carries its own geometry")
    dicom_dir = input_dir / "dicom"
    dicom_dir.mkdir()
    for number, upload in enumerate(sources, start=1):
        await _copy(upload, dicom_dir / f"{number:05d}.dcm")
    return dicom_dir


async def _save_mask(upload: UploadFile, input_dir: Path) -> Path:
    kind = sniff(await _head(upload), upload.filename or "")
    suffix = {"nrrd": ".nrrd", "nifti": ".nii", "nifti.gz": ".nii.gz", "npy": ".npy", "png": ".png"}.get(kind, ".dcm")
    target = input_dir / f"mask{suffix}"
    await _copy(upload, target)
    return target


def parse_geometry(text: str | None) -> np.ndarray:
    """The IJK-to-LPS matrix of an NPY upload from ``{"ijk_to_lps": ...}`` or ``{"ijk_to_ras": ...}``."""
    if text is None:
        raise _bad("an NPY source needs 'source_geometry': JSON {\"ijk_to_ras\": 4x4} (or ijk_to_lps)")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(f"'source_geometry' is not valid JSON: {exc}") from None
    if not isinstance(value, dict) or len(value) != 1 or not set(value) <= {"ijk_to_lps", "ijk_to_ras"}:
        raise _bad("'source_geometry' must be an object with one key, ijk_to_lps or ijk_to_ras")
    (key, rows), = value.items()
    try:
        matrix = np.array(rows, dtype=np.float64)
    except (TypeError, ValueError):
        matrix = np.zeros(0)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise _bad(f"'source_geometry.{key}' must be a 4x4 matrix of finite numbers")
    if not np.allclose(matrix[3], [0, 0, 0, 1]) or abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise _bad(f"'source_geometry.{key}' must be affine (last row 0 0 0 1) and invertible")
    return LPS_FROM_RAS @ matrix if key == "ijk_to_ras" else matrix


def npy_to_nrrd(
    npy_path: Path, nrrd_path: Path, ijk_to_lps: np.ndarray, *, what: str, limits: Limits,
    expected_shape: tuple | None = None,
) -> Path:
    """Write an uploaded (k, j, i) array as NRRD with the given geometry, so the engine reads one format.

    The shape its header declares is checked against the limits (and the source grid) before loading.
    """
    import SimpleITK as sitk

    shape = _npy_declared_shape(npy_path, what)
    if len(shape) not in (2, 3):
        raise _bad(f"the {what} array must be 2-D or 3-D numbers, got shape {shape}")
    _check_shape(shape[0] if len(shape) == 3 else 1, shape[-2], shape[-1], limits=limits, what=f"the {what} array")
    try:
        array = np.load(npy_path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _bad(f"the {what} is not a readable .npy array: {exc}") from None
    if array.dtype.kind not in "biuf" or array.ndim not in (2, 3) or 0 in array.shape:
        raise _bad(f"the {what} array must be 2-D or 3-D numbers, got shape {array.shape} of {array.dtype}")
    if array.ndim == 2:
        array = array[np.newaxis]
    if expected_shape is not None and array.shape != tuple(expected_shape):
        raise _bad(
            f"the {what} array has shape {array.shape} but the source grid is {tuple(expected_shape)} "
            f"(slices, rows, columns); an NPY {what} must lie on the source's grid voxel for voxel"
        )
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (ijk_to_lps[:3, :3] / spacing).flatten()])
    image.SetOrigin([float(v) for v in ijk_to_lps[:3, 3]])
    sitk.WriteImage(image, str(nrrd_path))
    npy_path.unlink()
    return nrrd_path


# --- sizes declared in headers, checked before anything is decoded ----------------------------


def _npy_declared_shape(path: Path, what: str) -> tuple[int, ...]:
    """The shape an .npy header declares, read without loading the array."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, _ = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, _ = np.lib.format.read_array_header_2_0(handle)
            else:
                shape, _, _ = np.lib.format._read_array_header(handle, version)  # 3.0: no public reader
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise _bad(f"the {what} is not a readable .npy array: {exc}") from None
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise _bad(f"the {what} .npy header declares an impossible shape {shape}")
    return tuple(shape)


def _check_shape(slices: int, rows: int, columns: int, *, limits: Limits, what: str, extra: int = 1) -> None:
    """413 when a declared size passes the engine's limits (``extra``: samples or further axes)."""
    if rows * columns * extra > limits.max_slice_pixels:
        raise ApiError(413, "image_too_large",
                       f"{what} declares slices of {rows}x{columns}" + (f"x{extra}" if extra > 1 else "")
                       + f" values, over this engine's limit of {limits.max_slice_pixels} pixels per slice; "
                       f"refused before decoding")
    if slices > limits.max_slices:
        raise ApiError(413, "image_too_large",
                       f"{what} declares {slices} slices, over this engine's limit of {limits.max_slices}; "
                       f"send only the slices around the mask")


def check_declared_size(path: Path, limits: Limits, what: str) -> None:
    """Refuse a saved upload whose header declares more pixels or slices than the limits, before any
    decoding (a 7 kB RLE file may claim 65535x65535 pixels). Headers that cannot be read are left to
    the reader, which refuses them with its own message."""
    if path.is_dir():
        frames = 0
        for number, item in enumerate(sorted(path.iterdir()), start=1):
            rows, columns, count = _dicom_declared_size(item)
            _check_shape(1, rows, columns, limits=limits, what=f"{what} file {number}")
            frames += count
            _check_shape(frames, 1, 1, limits=limits, what=f"the {what} files together")
        return
    kind = sniff(_read_head(path), path.name)
    if kind in ("nrrd", "nifti", "nifti.gz"):
        size = _itk_declared_size(path)
        if size is not None:
            columns, rows = size[0], size[1] if len(size) > 1 else 1
            slices = int(np.prod(size[2:], dtype=object)) if len(size) > 2 else 1
            _check_shape(slices, rows, columns, limits=limits, what=f"the {what}")
    elif kind == "png":
        from PIL import Image

        try:
            with Image.open(path) as image:
                columns, rows = image.size
        except Image.DecompressionBombError:
            raise ApiError(413, "image_too_large", f"the {what} PNG declares more pixels than an image may have; "
                                                   f"refused before decoding") from None
        except (OSError, ValueError):
            return
        _check_shape(1, rows, columns, limits=limits, what=f"the {what}")
    elif kind == "dicom" or path.suffix == ".dcm":
        rows, columns, frames = _dicom_declared_size(path)
        _check_shape(frames, rows, columns, limits=limits, what=f"the {what}")


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(512)


def _dicom_declared_size(path: Path) -> tuple[int, int, int]:
    """(Rows, Columns, frames) from a DICOM header, without the pixel data; (0, 0, 0) if unreadable."""
    import pydicom

    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                                  specific_tags=["Rows", "Columns", "NumberOfFrames", "SamplesPerPixel"])
        rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
        frames = int(str(dataset.get("NumberOfFrames", 1) or 1).strip() or 1)
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    except Exception:  # noqa: BLE001 - an unreadable header is the reader's to report, with its own message
        return 0, 0, 0
    return rows, columns * max(samples, 1), max(frames, 1)


def _itk_declared_size(path: Path) -> tuple[int, ...] | None:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return tuple(int(n) for n in reader.GetSize()) + ((reader.GetNumberOfComponents(),)
                                                      if reader.GetNumberOfComponents() > 1 else ())


# --- checking what was saved -------------------------------------------------------------------


def inspect_inputs(
    source_path: Path, mask_path: Path, parameters: JobParameters, limits: Limits, model_path: Path | None = None
) -> tuple[SourceInfo, Path]:
    """Read the saved source and mask as the engine will, so a bad upload fails now with a 400; a source
    whose modality the model (``model_path``'s medgen.json) does not cover is refused here too.

    Returns what the client needs to know about the source, and the mask file the engine should read.
    """
    from medgen.imaging.masks import read_mask, select_slices
    from medgen.imaging.read import read_volume

    check_declared_size(source_path, limits, "source")
    if mask_path.suffix != ".npy":
        check_declared_size(mask_path, limits, "mask")
    volume = read_volume(source_path)
    slices, rows, columns = volume.pixels.shape[:3]
    if rows * columns > limits.max_slice_pixels:
        raise ApiError(413, "image_too_large", f"slices of {rows}x{columns} pixels exceed this engine's limit of "
                                               f"{limits.max_slice_pixels} pixels per slice")
    if slices > limits.max_slices:
        raise ApiError(413, "image_too_large", f"{slices} slices exceed this engine's limit of {limits.max_slices}; "
                                               f"send only the slices around the mask")
    if mask_path.suffix == ".npy":
        mask_path = npy_to_nrrd(mask_path, mask_path.with_suffix(".nrrd"), volume.ijk_to_lps, what="mask", limits=limits,
                                expected_shape=volume.pixels.shape[:3])
    mask = read_mask(mask_path, volume, segment=parameters.segment, label=parameters.label,
                     resample=parameters.resample_mask)
    check_sent_pixels(source_path, volume, mask, parameters.strength)
    chosen = select_slices(mask, parameters.slices, parameters.all_slices, volume)
    if model_path is not None and Path(model_path).is_dir():
        from medgen.generate.settings import read_model_contracts
        from medgen.imaging.intensity import resolve_window

        resolve_window(volume, chosen, read_model_contracts(model_path), preset=parameters.window,
                       center=parameters.window_center, width=parameters.window_width,
                       force_modality=parameters.force_modality, source="source",
                       force_option='"force_modality": true', stated_modality=parameters.source_modality)
    info = SourceInfo(
        format=volume.source_format.value,
        shape=[int(n) for n in volume.pixels.shape],
        dtype=str(volume.pixels.dtype),
        modality=volume.modality,
        ijk_to_lps=np.asarray(volume.ijk_to_lps, dtype=float).tolist(),
        rescale_slope=[float(v) for v in volume.rescale_slope],
        rescale_intercept=[float(v) for v in volume.rescale_intercept],
        slices=chosen,
    )
    return info, mask_path


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_upload", message)
