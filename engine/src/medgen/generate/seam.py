"""No seam at the pasted region's edge: the generated signal meets the source's own brightness there.

A model often shifts the background it generates around a lesion (brighter, darker, another tissue
texture's mean), and blending such a crop into the source leaves a ring a reader sees at once. Here
the offset between the source's low-pass and the generated signal is taken on the band between the
painted mask and the dilated edge (tissue the model was asked to keep), and carried into the mask as
a harmonic (membrane) interpolation, as in seamless cloning: on the band the generated signal becomes
the source's, inside the mask every gradient the model drew (the lesion's own contrast and shape) is
kept, shifted by the smoothest field that makes the border match.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.linalg import spsolve

from medgen.imaging.texture import NOISE_SPLIT_SIGMA_PX

BORDER_MIN_PX = 2
"""Band width in pixels when the mask was not dilated: its own outermost pixels."""


def harmonize_border(
    source_model: np.ndarray, signal: np.ndarray, mask: np.ndarray, dilated: np.ndarray
) -> np.ndarray:
    """``signal`` (full slice, model space) with its offset from the source's low-pass on the border band
    removed, and that offset interpolated harmonically inside the mask. Outside ``dilated``: unchanged."""
    mask = np.asarray(mask, bool)
    dilated = np.asarray(dilated, bool)
    band = dilated & ~mask
    if not band.any():
        band = mask & ~ndimage.binary_erosion(mask, iterations=BORDER_MIN_PX)
    interior = dilated & ~band
    source_low = ndimage.gaussian_filter(np.asarray(source_model, np.float64), NOISE_SPLIT_SIGMA_PX, mode="reflect")
    offset = np.zeros(signal.shape, np.float64)
    offset[band] = source_low[band] - signal[band]
    if interior.any():
        offset[interior] = _harmonic_fill(offset, band, interior)
    out = np.array(signal, dtype=np.float64, copy=True)
    out[dilated] += offset[dilated]
    return out


def _harmonic_fill(values: np.ndarray, known: np.ndarray, unknown: np.ndarray) -> np.ndarray:
    """Solve Laplace's equation on ``unknown`` pixels with ``values`` fixed on ``known`` ones (4-neighbour;
    a neighbour that is neither counts as a free edge). Returns the unknown pixels' values in order."""
    rows, cols = np.nonzero(unknown)
    index = -np.ones(unknown.shape, np.int64)
    index[rows, cols] = np.arange(rows.size)
    diagonal = np.zeros(rows.size)
    rhs = np.zeros(rows.size)
    entries_i, entries_j = [], []
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        r, c = rows + dr, cols + dc
        inside = (r >= 0) & (r < unknown.shape[0]) & (c >= 0) & (c < unknown.shape[1])
        r, c = np.where(inside, r, 0), np.where(inside, c, 0)
        neighbour_unknown = inside & unknown[r, c]
        neighbour_known = inside & known[r, c]
        diagonal += neighbour_unknown | neighbour_known
        rhs += np.where(neighbour_known, values[r, c], 0.0)
        entries_i.append(np.nonzero(neighbour_unknown)[0])
        entries_j.append(index[r, c][neighbour_unknown])
    i, j = np.concatenate(entries_i), np.concatenate(entries_j)
    # a pixel cut off from every known one is pulled gently towards zero offset instead of left singular
    matrix = sparse.csr_matrix(
        (np.concatenate([diagonal + 1e-6, -np.ones(i.size)]), (np.concatenate([np.arange(rows.size), i]),
                                                             np.concatenate([np.arange(rows.size), j]))),
        shape=(rows.size, rows.size),
    )
    return spsolve(matrix, rhs)
