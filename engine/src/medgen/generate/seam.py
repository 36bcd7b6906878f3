"""No seam at the pasted region's edge: the generated background meets the source's brightness there.

A model used outside what it was trained on (a CT model on an MR, say) often shifts the whole
background it generates, and blending such a crop into the source leaves a ring a reader sees at once.
Here the offset between the source's low-pass and the generated image is taken on a ring just outside
the pasted (dilated) region, inside the crop: there the model only redrew the source (an inpainting
model keeps it, a model out of its depth shifts it), and no lesion it was asked for can lie. Its
median is added to the generated signal: one number per slice keeps every gradient the model drew (the
lesion's contrast, shape and rim); a model whose background already matches gets an offset near zero.
Then, between the painted mask and the dilated edge (room to blend, not part of the lesion), the
signal tapers to the source's low-pass: unchanged at the mask's edge, the source's at the dilated edge.

A model run outside its intensity contract (``--force-modality``: a CT model on an MR) draws a
background of its own over the whole region, so its signal cannot be trusted anywhere near the border:
`harmonize_membrane` then makes the signal equal the source's low-pass on the whole band between mask
and dilated edge and carries that offset into the mask harmonically (seamless cloning), keeping only
the model's gradients inside the mask.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.linalg import spsolve

from medgen.imaging.texture import NOISE_SPLIT_SIGMA_PX

BORDER_MIN_PX = 2
"""Band width in pixels when the mask was not dilated: its own outermost pixels."""
RING_PX = 4.0
"""Width in pixels of the ring outside the dilated mask's edge where the offset is measured."""


def border_offset(
    source_model: np.ndarray, signal: np.ndarray, dilated: np.ndarray, box: tuple[slice, slice] | None = None
) -> float:
    """Median of (source low-pass - generated signal) over a ring ``RING_PX`` wide just outside ``dilated``
    and inside ``box`` (the crop the model drew; outside it the signal is the source itself)."""
    dilated = np.asarray(dilated, bool)
    outside = ndimage.distance_transform_edt(~dilated)
    ring = (outside > 1.0) & (outside <= 1.0 + RING_PX)
    if box is not None:
        in_box = np.zeros(dilated.shape, bool)
        in_box[box] = True
        ring &= in_box
    if np.count_nonzero(ring) < 8:
        return 0.0
    source_low = ndimage.gaussian_filter(np.asarray(source_model, np.float64), NOISE_SPLIT_SIGMA_PX, mode="reflect")
    return float(np.median(source_low[ring] - np.asarray(signal, np.float64)[ring]))


def harmonize_border(
    source_model: np.ndarray,
    signal: np.ndarray,
    mask: np.ndarray,
    dilated: np.ndarray,
    box: tuple[slice, slice] | None = None,
) -> np.ndarray:
    """``signal`` (full slice, model space) shifted by `border_offset` inside ``dilated``; unchanged outside."""
    # 1. The model's overall shift, read outside the pasted region
    dilated = np.asarray(dilated, bool)
    mask = np.asarray(mask, bool)
    out = np.array(signal, dtype=np.float64, copy=True)
    out[dilated] += border_offset(source_model, signal, dilated, box)

    # 2. Between the painted mask and the dilated edge the region only blends: the generated signal
    #    tapers to the source's low-pass there, fully at the dilated edge, not at all at the mask's edge
    band = dilated & ~mask
    if band.any():
        from_mask = ndimage.distance_transform_edt(~mask)
        to_edge = ndimage.distance_transform_edt(dilated) - 1.0  # 0 on the dilated mask's outermost pixels
        taper = np.clip(from_mask / np.maximum(from_mask + to_edge, 1e-9), 0.0, 1.0)
        source_low = ndimage.gaussian_filter(np.asarray(source_model, np.float64), NOISE_SPLIT_SIGMA_PX, mode="reflect")
        out[band] += taper[band] * (source_low[band] - out[band])
    return out


def harmonize_membrane(
    source_model: np.ndarray, signal: np.ndarray, mask: np.ndarray, dilated: np.ndarray
) -> np.ndarray:
    """``signal`` equal to the source's low-pass between mask and dilated edge, that offset interpolated
    harmonically inside the mask (see the module doc). Outside ``dilated``: unchanged."""
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
