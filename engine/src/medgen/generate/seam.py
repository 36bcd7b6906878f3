"""No seam at the pasted region's edge: the generated background meets the source's brightness there.

A model used outside what it was trained on (a CT model on an MR, say) often shifts the whole
background it generates, and blending such a crop into the source leaves a ring a reader sees at once.
Here the offset between the source's low-pass and the generated signal is taken on the outermost
pixels of the pasted (dilated) region, where the blend weight is small and the model was asked for
surrounding tissue, and its median is added to the generated signal. A median of one number per slice
keeps every gradient the model drew (the lesion's contrast, shape and rim) and ignores the part of the
ring a lesion may reach into; a model whose background already matches gets an offset near zero.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medgen.imaging.texture import NOISE_SPLIT_SIGMA_PX

RING_PX = 2.0
"""Depth in pixels of the ring inside the dilated mask's edge where the offset is measured."""


def border_offset(source_model: np.ndarray, signal: np.ndarray, dilated: np.ndarray) -> float:
    """Median of (source low-pass - generated signal) over the outermost ``RING_PX`` of ``dilated``."""
    dilated = np.asarray(dilated, bool)
    ring = dilated & (ndimage.distance_transform_edt(dilated) <= RING_PX)
    if not ring.any():
        return 0.0
    source_low = ndimage.gaussian_filter(np.asarray(source_model, np.float64), NOISE_SPLIT_SIGMA_PX, mode="reflect")
    return float(np.median(source_low[ring] - np.asarray(signal, np.float64)[ring]))


def harmonize_border(
    source_model: np.ndarray, signal: np.ndarray, mask: np.ndarray, dilated: np.ndarray
) -> np.ndarray:
    """``signal`` (full slice, model space) shifted by `border_offset` inside ``dilated``; unchanged outside."""
    dilated = np.asarray(dilated, bool)
    out = np.array(signal, dtype=np.float64, copy=True)
    out[dilated] += border_offset(source_model, signal, dilated)
    return out
