"""The voxels a client sends beside DICOM files that serve only as header templates.

Slicer keeps a volume's ``DICOM.instanceUIDs`` through in-place edits and through clones (Segment
Editor's "Mask volume" makes one), so the files a client finds for a volume need not hold the voxels the
user sees. A client therefore sends both: the DICOM instances (``source``, for the study, patient and
frame of reference of the synthetic series) and the voxels (``source_pixels``, one NRRD of the same
slab in modality values, as Slicer shows them). The engine inpaints the files, so it first checks that
the two agree outside the mask, and refuses the job with a 400 where they do not, rather than inpaint
pixels the user never saw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from starlette.datastructures import UploadFile

from medgen.server.errors import ApiError

PIXELS_FIELD = "source_pixels"
PIXELS_FILE = "source_pixels.nrrd"
MISMATCH_CODE = "pixels_differ_from_dicom"
_COPY_CHUNK = 1 << 20
_GRID_TOLERANCE = 1e-3  # of a voxel
_LISTED_SLICES = 8


async def save_sent_pixels(form, input_dir: Path) -> Path | None:
    """Save the form's ``source_pixels`` NRRD under ``input_dir``; None when the form has none."""
    values = form.getlist(PIXELS_FIELD)
    if not values:
        return None
    if len(values) != 1 or not isinstance(values[0], UploadFile):
        raise _bad(f"'{PIXELS_FIELD}' must be one file part (an NRRD of the slab's voxels)")
    upload = values[0]
    await upload.seek(0)
    if not (await upload.read(8)).startswith(b"NRRD000"):
        raise _bad(f"'{PIXELS_FIELD}' file {upload.filename!r} is not an NRRD")
    await upload.seek(0)
    target = Path(input_dir) / PIXELS_FILE
    with open(target, "wb") as out:
        while chunk := await upload.read(_COPY_CHUNK):
            out.write(chunk)
    return target


def check_sent_pixels(source_path: Path, volume, mask: np.ndarray, strength: float) -> None:
    """Refuse the job when the saved ``source_pixels`` and the DICOM ``volume`` disagree outside ``mask``
    (or inside it too when ``strength`` < 1, where the inpainting starts from the files' pixels).

    ``source_path`` is the saved source; the pixels, if sent, lie beside it. ``mask`` is the job's
    mask (bool, on the volume's grid). Values agree when they differ by at most half a stored step.
    """
    from medgen.imaging.read import read_volume
    from medgen.imaging.volume import SourceFormat

    path = Path(source_path).parent / PIXELS_FILE
    if not path.exists():
        return
    if volume.source_format is not SourceFormat.DICOM:
        raise _bad(f"'{PIXELS_FIELD}' goes with DICOM instances sent as templates; this source is "
                   f"{volume.source_format.value.upper()}, which carries its own voxels")
    if volume.is_color:
        raise _bad(f"'{PIXELS_FIELD}' is for grayscale DICOM; this series is colour")
    sent = _on_volume_grid(read_volume(path), volume)

    # 1. The DICOM slices in modality values (what Slicer shows), and how far a stored step reaches
    slopes = np.asarray(volume.rescale_slope, dtype=np.float64).reshape(-1, 1, 1)
    intercepts = np.asarray(volume.rescale_intercept, dtype=np.float64).reshape(-1, 1, 1)
    expected = volume.pixels.astype(np.float64) * slopes + intercepts
    tolerance = 0.5 * np.maximum(np.abs(slopes), 1.0) + 1e-3 * np.maximum(np.abs(expected), 1.0)
    differ = np.abs(sent.astype(np.float64) - expected) > tolerance

    # 2. Outside the mask they must agree; inside too when the inpainting keeps part of the source
    outside = differ & ~mask
    if outside.any():
        raise _mismatch(outside, "outside the mask")
    if strength < 1.0 and (differ & mask).any():
        raise _mismatch(differ & mask, f"inside the mask, where strength {strength:g} keeps part of the files' pixels")


def _on_volume_grid(sent, volume) -> np.ndarray:
    """The sent voxels reordered onto the DICOM volume's (k, j, i) grid; 400 if they lie elsewhere.

    Any grid a reader gives these instances counts (`Volume.reader_grids`): Slicer 5.6 puts a tilted
    series' slice axis on the plane's normal, so its slab of a tilted series lies on that grid."""
    if sent.pixels.ndim != 3:
        raise _bad(f"'{PIXELS_FIELD}' must be a grayscale volume, got shape {sent.pixels.shape}")
    for _, grid in volume.reader_grids():
        placed = _on_grid(sent, grid, volume.pixels.shape)
        if placed is not None:
            return placed
    raise _bad(f"'{PIXELS_FIELD}' does not lie on the grid of the DICOM instances sent with it (other "
               f"slices, spacing or orientation); send the instances of exactly the slab whose voxels you send")


def _on_grid(sent, grid: np.ndarray, volume_shape) -> np.ndarray | None:
    """The sent voxels on ``grid``'s (k, j, i) order when they cover it exactly, else None."""
    transform = np.linalg.solve(np.asarray(grid, float), np.asarray(sent.ijk_to_lps, float))
    linear, offset = transform[:3, :3], transform[:3, 3]
    axes = np.argmax(np.abs(linear), axis=0)
    signs = np.sign(linear[axes, [0, 1, 2]])
    expected = np.zeros((3, 3))
    expected[axes, [0, 1, 2]] = signs
    sent_sizes = np.array(sent.pixels.shape[::-1])  # i, j, k
    volume_sizes = np.array(volume_shape[:3][::-1])
    if sorted(axes.tolist()) != [0, 1, 2] or not np.allclose(linear, expected, atol=_GRID_TOLERANCE):
        return None
    # each sent axis must run over the whole volume axis it lands on, from one end to the other
    ends = offset + signs * (sent_sizes - 1)
    starts, stops = np.minimum(offset, ends), np.maximum(offset, ends)
    if not (np.allclose(starts, 0, atol=_GRID_TOLERANCE) and np.allclose(stops, volume_sizes[axes] - 1, atol=_GRID_TOLERANCE)):
        return None
    # (i, j, k) of the sent array → the volume's axes, flipped where the sign says
    array = np.moveaxis(sent.pixels, [0, 1, 2], [2, 1, 0])  # → (i, j, k)
    for axis in range(3):
        if signs[axis] < 0:
            array = np.flip(array, axis=axis)
    order = [int(np.flatnonzero(axes == target)[0]) for target in range(3)]
    return np.moveaxis(np.transpose(array, order), [0, 1, 2], [2, 1, 0])


def _mismatch(where: np.ndarray, region: str) -> ApiError:
    slices = [int(k) for k in np.flatnonzero(where.reshape(where.shape[0], -1).any(axis=1))]
    listed = ", ".join(str(k) for k in slices[:_LISTED_SLICES]) + (", …" if len(slices) > _LISTED_SLICES else "")
    return ApiError(
        400, MISMATCH_CODE,
        f"the voxels sent differ from the DICOM files sent with them in {int(where.sum())} voxel(s) {region} "
        f"(slab slice {listed}): the volume was changed after it was loaded (edited, or a copy that kept its "
        f"DICOM reference); send its voxels without the DICOM files",
    )


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_upload", message)
