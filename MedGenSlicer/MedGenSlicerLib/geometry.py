"""Slices, slabs and masks of (k, j, i) arrays placed in space by their IJK-to-RAS matrix.

These are the steps between Slicer's nodes and the upload: which slice the Red view shows, which slices
a segment touches, the smallest slab of slices to send, and putting a result back on the full grid.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

_PARALLEL_COS = 0.999  # a view counts as along an axis within about 2.5 degrees
_ON_SLICE_TOLERANCE = 0.1  # of a slice spacing
_GRID_TOLERANCE = 1e-3  # of a voxel


class GeometryError(ValueError):
    """The request does not fit the volume's grid; the message says what to change."""


def touched_slices(mask: np.ndarray) -> List[int]:
    """The k indices on which ``mask`` has any nonzero voxel."""
    mask = np.asarray(mask)
    return [int(k) for k in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))]


def slice_in_view(
    ijk_to_ras: np.ndarray, shape: Sequence[int], slice_to_ras: np.ndarray
) -> int:
    """The k index of the volume slice a slice view shows (``slice_to_ras`` is the view's SliceToRAS).

    The engine inpaints along the volume's slice axis, so the view must look along it.
    """
    matrix = np.asarray(ijk_to_ras, dtype=np.float64)
    view = np.asarray(slice_to_ras, dtype=np.float64)
    k_axis = matrix[:3, 2] / np.linalg.norm(matrix[:3, 2])
    view_normal = view[:3, 2] / np.linalg.norm(view[:3, 2])
    if abs(float(k_axis @ view_normal)) < _PARALLEL_COS:
        raise GeometryError(
            "the Red view is not aligned with the volume's slices (it shows an oblique or other plane); "
            "use 'every slice the segment touches', or set the Red view to the volume's acquisition plane "
            "(Reformat → Reset to the volume's orientation)"
        )
    ijk = np.linalg.solve(matrix, np.append(view[:3, 3], 1.0))
    k = int(round(float(ijk[2])))
    if abs(float(ijk[2]) - k) > _ON_SLICE_TOLERANCE * 5 or not 0 <= k < int(shape[0]):
        raise GeometryError(
            f"the Red view is between or outside the volume's slices (at k = {ijk[2]:.2f} of 0..{int(shape[0]) - 1}); "
            f"scroll it onto a slice of the volume"
        )
    return k


def mask_on_slices(mask: np.ndarray, slices: Sequence[int]) -> np.ndarray:
    """A copy of ``mask`` (as uint8 0/1) kept only on ``slices``; refuses when that leaves nothing."""
    mask = np.asarray(mask)
    kept = np.zeros(mask.shape, dtype=np.uint8)
    for k in slices:
        kept[k] = mask[k] != 0
    if not kept.any():
        listing = ", ".join(str(k) for k in slices)
        raise GeometryError(f"the segment is empty on slice {listing}; paint it there or choose another slice")
    return kept


def slab_range(mask: np.ndarray, margin: int = 0) -> Tuple[int, int]:
    """[k0, k1): the contiguous run of slices covering every touched slice, widened by ``margin``."""
    touched = touched_slices(mask)
    if not touched:
        raise GeometryError("the segment is empty; paint the region to inpaint first")
    k0 = max(0, touched[0] - margin)
    k1 = min(int(np.asarray(mask).shape[0]), touched[-1] + 1 + margin)
    return k0, k1


def crop_slab(array: np.ndarray, ijk_to_ras: np.ndarray, k0: int, k1: int) -> Tuple[np.ndarray, np.ndarray]:
    """Slices [k0, k1) of ``array`` and the matrix that places them where they were."""
    matrix = np.array(ijk_to_ras, dtype=np.float64)
    matrix[:3, 3] = matrix[:3, 3] + k0 * matrix[:3, 2]
    return np.asarray(array)[k0:k1], matrix


def crop_rows_columns(array: np.ndarray, ijk_to_ras: np.ndarray, box: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Rows [j0, j1) and columns [i0, i1) of every slice of ``array`` (``box`` = (j0, j1, i0, i1)), copied,
    and the matrix that places them where they were."""
    j0, j1, i0, i1 = (int(v) for v in box)
    matrix = np.array(ijk_to_ras, dtype=np.float64)
    matrix[:3, 3] = matrix[:3, 3] + j0 * matrix[:3, 1] + i0 * matrix[:3, 0]
    return np.array(np.asarray(array)[:, j0:j1, i0:i1], copy=True), matrix


def changed_region(mask: np.ndarray, ijk_to_ras: np.ndarray, margin_mm: float, extra_voxels: int = 3) -> Tuple[int, int, int, int]:
    """(j0, j1, i0, i1): the rows and columns a job on ``mask`` (k, j, i) may change, the mask's box grown by
    ``margin_mm`` (the engine's mask dilation) and ``extra_voxels``. The engine leaves every voxel outside
    its dilated mask as it was, so a variant is kept as this box alone, not as its whole slab."""
    mask = np.asarray(mask)
    rows = np.flatnonzero(mask.any(axis=(0, 2)))
    columns = np.flatnonzero(mask.any(axis=(0, 1)))
    if rows.size == 0:
        raise GeometryError("the segment is empty; paint the region to inpaint first")
    spacing = np.linalg.norm(np.asarray(ijk_to_ras, dtype=np.float64)[:3, :2], axis=0)  # i, j
    grow_i, grow_j = (int(np.ceil(max(float(margin_mm), 0.0) / s)) + int(extra_voxels) for s in spacing)
    return (max(0, int(rows[0]) - grow_j), min(mask.shape[1], int(rows[-1]) + 1 + grow_j),
            max(0, int(columns[0]) - grow_i), min(mask.shape[2], int(columns[-1]) + 1 + grow_i))


def on_own_slab_grid(returned_ijk_to_ras: np.ndarray, slab_ijk_to_ras: np.ndarray) -> np.ndarray:
    """The grid to place a returned slab on: the volume's own grid of that slab (``slab_ijk_to_ras``) where
    the two differ only in how they step across a gantry tilt (same rows and columns, slices in the same
    direction), as the engine's grid of a tilted DICOM series and Slicer 5.6's grid of it do; else the
    returned grid, which then must lie on the volume's voxels."""
    returned = np.asarray(returned_ijk_to_ras, dtype=np.float64)
    own = np.asarray(slab_ijk_to_ras, dtype=np.float64)
    same_plane = np.allclose(returned[:3, :2], own[:3, :2], atol=1e-3)
    if same_plane and float(returned[:3, 2] @ own[:3, 2]) > 0 and not np.allclose(returned[:3, 2], own[:3, 2], atol=1e-3):
        return own
    return returned


def grid_mapping(
    target_ijk_to_ras: np.ndarray, piece_ijk_to_ras: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How a piece's (i, j, k) axes land on a target grid: for each piece axis, the target axis, sign, offset.

    Works when the piece lies on the target's voxels (same spacing, axes parallel, maybe flipped or
    permuted, as a DICOM series read back in another slice order); anything else is refused.
    """
    transform = np.linalg.solve(np.asarray(target_ijk_to_ras, float), np.asarray(piece_ijk_to_ras, float))
    linear, offset = transform[:3, :3], transform[:3, 3]
    axes = np.argmax(np.abs(linear), axis=0)
    signs = np.sign(linear[axes, [0, 1, 2]])
    expected = np.zeros((3, 3))
    expected[axes, [0, 1, 2]] = signs
    if sorted(axes.tolist()) != [0, 1, 2] or not np.allclose(linear, expected, atol=_GRID_TOLERANCE):
        raise GeometryError("the result does not lie on the source volume's voxels (different spacing or rotation)")
    if not np.allclose(offset, np.round(offset), atol=_GRID_TOLERANCE):
        raise GeometryError("the result is shifted by a fraction of a voxel from the source volume")
    return axes, signs.astype(int), np.round(offset).astype(int)


def paste_on_grid(
    target: np.ndarray, target_ijk_to_ras: np.ndarray, piece: np.ndarray, piece_ijk_to_ras: np.ndarray
) -> np.ndarray:
    """A copy of ``target`` with ``piece`` written where it lies in space (both (k, j, i[, c]))."""
    result = np.array(target, copy=True)
    paste_into(result, target_ijk_to_ras, piece, piece_ijk_to_ras)
    return result


def paste_into(
    target: np.ndarray, target_ijk_to_ras: np.ndarray, piece: np.ndarray, piece_ijk_to_ras: np.ndarray
) -> None:
    """Write ``piece`` into ``target`` in place, where it lies in space; only the piece's voxels are touched,
    so a slab costs a slab of memory however large the target is."""
    where, order = placement(target.shape, target_ijk_to_ras, np.shape(piece), piece_ijk_to_ras)
    piece = np.asarray(piece)
    piece_ijk = np.moveaxis(piece, [0, 1, 2], [2, 1, 0])  # → (i, j, k[, c])
    in_target_ijk = np.transpose(piece_ijk, list(order) + list(range(3, piece.ndim)))
    target[where] = np.moveaxis(in_target_ijk, [0, 1, 2], [2, 1, 0]).astype(target.dtype, copy=False)


def placement(
    target_shape: Sequence[int], target_ijk_to_ras: np.ndarray, piece_shape: Sequence[int], piece_ijk_to_ras: np.ndarray
) -> Tuple[tuple, Tuple[int, int, int]]:
    """Where a piece lands in a target: the target's (k, j, i) index (for ``target[index]``) and, for each
    target axis (i, j, k), the piece axis that runs along it."""
    axes, signs, offset = grid_mapping(target_ijk_to_ras, piece_ijk_to_ras)
    piece_sizes = (piece_shape[2], piece_shape[1], piece_shape[0])  # i, j, k
    target_sizes = (target_shape[2], target_shape[1], target_shape[0])
    index = [None, None, None]
    for piece_axis in range(3):
        target_axis = axes[piece_axis]
        positions = offset[target_axis] + signs[piece_axis] * np.arange(piece_sizes[piece_axis])
        if positions.min() < 0 or positions.max() >= target_sizes[target_axis]:
            raise GeometryError("the result reaches outside the source volume")
        index[target_axis] = (piece_axis, positions)
    i_pos, j_pos, k_pos = (index[axis][1] for axis in range(3))
    return np.ix_(k_pos, j_pos, i_pos), tuple(index[axis][0] for axis in range(3))


def instances_in_slab(
    positions_lps: Sequence[Sequence[float]], ijk_to_ras: np.ndarray, k0: int, k1: int
) -> List[int]:
    """Which DICOM instances (by ImagePositionPatient, LPS) are slices [k0, k1) of the volume."""
    matrix = np.asarray(ijk_to_ras, dtype=np.float64)
    chosen = []
    for number, position in enumerate(positions_lps):
        ras = np.array([-float(position[0]), -float(position[1]), float(position[2]), 1.0])
        k = float(np.linalg.solve(matrix, ras)[2])
        if abs(k - round(k)) <= _ON_SLICE_TOLERANCE and k0 <= round(k) < k1:
            chosen.append(number)
    if len(chosen) != k1 - k0:
        raise GeometryError(
            f"found {len(chosen)} DICOM instances for the {k1 - k0} slices {k0}..{k1 - 1}; the volume does not match "
            f"its DICOM series one instance per slice (send it as an array instead)"
        )
    return chosen
