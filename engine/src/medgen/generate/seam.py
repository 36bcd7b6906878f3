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
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medgen.imaging.texture import NOISE_SPLIT_SIGMA_PX

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
