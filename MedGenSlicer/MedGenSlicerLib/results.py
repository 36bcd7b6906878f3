"""Decode a job's results: the manifest, each variant's array back on the source grid, the DICOM zip.

The engine returns stored values on the slab it was sent; Slicer shows a DICOM CT in modality values
(HU) on the whole volume. `variant_on_source` does both steps, exactly, so a variant can be shown
beside its source with linked slices.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .geometry import paste_on_grid
from .nrrd import RAS_FROM_LPS, NrrdImage, read_nrrd


@dataclass
class SourceInfo:
    format: str
    shape: List[int]
    dtype: str
    modality: str
    ijk_to_ras: np.ndarray
    rescale_slope: List[float]
    rescale_intercept: List[float]
    slices: List[int]

    @classmethod
    def from_json(cls, data: dict) -> "SourceInfo":
        return cls(
            format=data["format"],
            shape=list(data["shape"]),
            dtype=data["dtype"],
            modality=data["modality"],
            ijk_to_ras=RAS_FROM_LPS @ np.array(data["ijk_to_lps"], dtype=np.float64),
            rescale_slope=[float(v) for v in data["rescale_slope"]],
            rescale_intercept=[float(v) for v in data["rescale_intercept"]],
            slices=[int(k) for k in data["slices"]],
        )


@dataclass
class VariantInfo:
    index: int
    seed: int
    array_url: str
    dicom_zip_url: str
    preview_url: str
    provenance_url: str


@dataclass
class JobResult:
    """The manifest of `GET /v1/jobs/{id}/result`: the variants ready so far."""

    job_id: str
    state: str
    complete: bool
    num_variants: int
    source: SourceInfo
    variants: List[VariantInfo]
    preview_url: Optional[str]
    provenance_url: Optional[str]

    @classmethod
    def from_json(cls, data: dict) -> "JobResult":
        return cls(
            job_id=data["job_id"],
            state=data["state"],
            complete=bool(data["complete"]),
            num_variants=int(data["num_variants"]),
            source=SourceInfo.from_json(data["source"]),
            variants=[
                VariantInfo(
                    index=int(v["index"]),
                    seed=int(v["seed"]),
                    array_url=v["array"],
                    dicom_zip_url=v["dicom_zip"],
                    preview_url=v["preview"],
                    provenance_url=v["provenance"],
                )
                for v in data["variants"]
            ],
            preview_url=data.get("preview"),
            provenance_url=data.get("provenance"),
        )


def decode_variant(data: bytes) -> NrrdImage:
    """A variant's NRRD (stored values, the grid of the slab that was sent)."""
    return read_nrrd(data)


CONVERSION_CHUNK_VOXELS = 1 << 20  # float64 work per step: 8 MB whatever the slab's size


def to_modality_values(
    stored: np.ndarray, slopes: Sequence[float], intercepts: Sequence[float], dtype
) -> np.ndarray:
    """Stored values → modality values per slice (HU for CT), in ``dtype`` (Slicer's volume's type).

    Converted a few rows at a time into the result, so the float work costs at most
    CONVERSION_CHUNK_VOXELS doubles beside the input and the output, never eight times the slab.
    Integer targets are rounded and must fit: a result that does not is refused rather than wrapped.
    """
    stored = np.asarray(stored)
    slopes = np.asarray(slopes, dtype=np.float64).reshape(-1)
    intercepts = np.asarray(intercepts, dtype=np.float64).reshape(-1)
    target = np.dtype(dtype)
    if np.all(slopes == 1.0) and np.all(intercepts == 0.0) and np.can_cast(stored.dtype, target, "safe"):
        return stored.astype(target)
    if stored.ndim < 2 or len(slopes) not in (1, stored.shape[0]) or len(intercepts) not in (1, stored.shape[0]):
        raise ValueError(f"{len(slopes)} rescale slopes and {len(intercepts)} intercepts for slices of shape {stored.shape}")
    result = np.empty(stored.shape, dtype=target)
    limits = np.iinfo(target) if target.kind in "iu" else None
    row_voxels = int(np.prod(stored.shape[2:], dtype=np.int64))
    rows_per_chunk = max(1, CONVERSION_CHUNK_VOXELS // max(1, row_voxels))
    for k in range(stored.shape[0]):
        slope, intercept = slopes[k % len(slopes)], intercepts[k % len(intercepts)]
        for row in range(0, stored.shape[1], rows_per_chunk):
            rows = slice(row, row + rows_per_chunk)
            values = stored[k, rows] * slope + intercept  # float64 for one chunk only
            if limits is not None:
                np.round(values, out=values)
                if values.size and (values.min() < limits.min or values.max() > limits.max):
                    raise ValueError(f"modality values {values.min()}..{values.max()} do not fit the volume's {target}")
            result[k, rows] = values
    return result


def variant_on_source(
    source: np.ndarray,
    source_ijk_to_ras: np.ndarray,
    variant: NrrdImage,
    result_source: SourceInfo,
) -> np.ndarray:
    """The variant as a whole volume like ``source`` (same shape, dtype, grid): the source, with the slab replaced.

    ``result_source`` is the manifest's description of what the engine read (for the rescale per slice).
    """
    values = to_modality_values(
        variant.array, result_source.rescale_slope, result_source.rescale_intercept, np.asarray(source).dtype
    )
    return paste_on_grid(source, source_ijk_to_ras, values, variant.ijk_to_ras)


def extract_zip(data: bytes, folder: Path) -> List[Path]:
    """Unpack a result's DICOM zip into ``folder``; refuses entries that would land outside it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    root = folder.resolve()
    written = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for entry in archive.infolist():
            if entry.is_dir():
                continue
            target = (root / entry.filename).resolve()
            if root not in target.parents:
                raise ValueError(f"zip entry {entry.filename!r} would be written outside {folder}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(entry))
            written.append(target)
    return written


def write_private_report(html: bytes, job_id: str, folder: Optional[Path] = None) -> Path:
    """Save a job's HTML report where only this user can read it (a 0600 file in ``folder``, else in a new
    0700 folder), for the system browser to open: the report shows the patient's images."""
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="medgenslicer-report-"))
    folder = Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / _report_name(job_id)
    safe_id = path.stem[len("report-"):]
    partial = folder / f".report-{safe_id}.html.partial"
    descriptor = os.open(str(partial), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(html)
    os.replace(partial, path)
    return path


def remove_private_report(folder: Optional[Path], job_id: str) -> None:
    """The report `write_private_report` saved for ``job_id`` in ``folder``, removed (the job was deleted)."""
    if folder is None:
        return
    (Path(folder) / _report_name(job_id)).unlink(missing_ok=True)


def _report_name(job_id: str) -> str:
    return f"report-{re.sub(r'[^A-Za-z0-9_-]', '_', job_id)[:64] or 'job'}.html"
