"""The lesion as drawn: where a variant departs from its source beyond the noise, near the request's mask.

A generator does not fill a mask edge to edge. It may draw a lesion smaller than the mask, round off
its corners, or let it spill into the dilated blend zone. A training pair labelled with the request's
mask then teaches a boundary the pixels do not show. The label is therefore taken from the pixels:

1. the difference output - source, smoothed by a Gaussian (the narrowest of ``SMOOTH_PX`` at which
   the lesion stands out of the noise) so the two noise fields average out;
2. the noise level of that smoothed difference, from the source's own high-pass residual in the
   tissue ring around the mask (two independent noise fields: sqrt(2) times one);
3. the lesion's contrast: the quartile of the smoothed difference inside the request's mask that is
   furthest from zero (`_contrast`); its sign says
   whether the lesion is brighter or darker than what it replaced;
4. drawn = same-signed difference beyond the larger of ``PIXEL_SIGMAS`` noise levels and
   ``CONTRAST_FRACTION`` of the contrast (the half-maximum border a reader would trace), opened so
   single noise pixels drop out, holes filled, only pieces that touch the request's mask kept.

A variant that drew nothing beyond the noise has an empty label. Everything here is computed from the
source and the written output alone, so a label can be recomputed from files at any time.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medgen.imaging.texture import highpass, homogeneous, robust_std

SMOOTH_PX = (1.0, 2.0, 3.0, 4.0)
"""Gaussian sigmas (pixels) of the difference smoothing, tried in turn: the first at which the lesion's
contrast stands out of the noise is used, so a faint lesion is traced with more smoothing."""
NOISE_SIGMAS = 2.0
"""The lesion stands out at a smoothing when its contrast is beyond this many noise levels..."""
PIXEL_SIGMAS = 1.5
"""...and a pixel is drawn only where the smoothed difference is beyond this many."""
CONTRAST_FRACTION = 0.5
"""...and beyond this share of the lesion's contrast: its half-maximum border."""
NOISE_RING_PX = 12
"""Width of the tissue ring around the changed region in which the noise is measured."""
RING_DILATION_PX = 6
"""Where no dilated mask is known, the noise ring starts this far outside the request's mask."""


def drawn_lesion_mask(
    source: np.ndarray, output: np.ndarray, requested: np.ndarray, dilated: np.ndarray | None = None
) -> np.ndarray:
    """The drawn lesion of one slice (see the module doc); ``source`` and ``output`` in modality units."""
    source = np.asarray(source, dtype=np.float64)
    output = np.asarray(output, dtype=np.float64)
    requested = np.asarray(requested, dtype=bool)
    changed = output != source
    if not requested.any() or not changed.any():
        return np.zeros(requested.shape, dtype=bool)
    if dilated is None:
        dilated = ndimage.binary_dilation(requested, iterations=RING_DILATION_PX)
    ring = _noise_ring(requested, np.asarray(dilated, dtype=bool) | changed)
    for sigma in SMOOTH_PX:
        difference = ndimage.gaussian_filter(output - source, sigma)
        noise = _difference_noise(source, ring, sigma)
        contrast = _contrast(difference[requested])
        if abs(contrast) > NOISE_SIGMAS * noise:
            break
    floor = PIXEL_SIGMAS * noise
    if abs(contrast) > NOISE_SIGMAS * noise:
        sign = 1.0 if contrast > 0 else -1.0
        drawn = sign * difference > max(floor, CONTRAST_FRACTION * abs(contrast))
    else:  # no lesion of one sign fills the mask: whatever stands out of the noise, either sign
        drawn = np.abs(difference) > NOISE_SIGMAS * noise
    drawn = ndimage.binary_opening(drawn)  # single pixels of noise are not a lesion
    drawn &= ndimage.binary_dilation(changed, iterations=int(np.ceil(sigma)))  # smoothing spreads a little
    drawn = ndimage.binary_fill_holes(drawn)
    pieces, count = ndimage.label(drawn)
    if count == 0:
        return drawn
    touching = np.unique(pieces[requested & drawn])
    return np.isin(pieces, touching[touching > 0])


def _noise_ring(requested: np.ndarray, dilated: np.ndarray) -> np.ndarray:
    """Tissue around the changed region, wide enough (``NOISE_RING_PX`` or the mask's diameter) for a
    steady noise figure next to a small lesion."""
    distance = ndimage.distance_transform_edt(~dilated)
    diameter = 2.0 * np.sqrt(max(int(np.count_nonzero(requested)), 1) / np.pi)
    return (distance > 1.0) & (distance <= 1.0 + max(float(NOISE_RING_PX), diameter))


def _contrast(values: np.ndarray) -> float:
    """The lesion's signed contrast: the difference at the 25th or 75th percentile inside the mask,
    whichever is further from zero (a lesion that fills most of its mask, not only its median)."""
    low, high = np.percentile(values, [25, 75])
    return float(low if abs(low) > abs(high) else high)


def _difference_noise(source: np.ndarray, ring: np.ndarray, sigma: float) -> float:
    """Std, in ``ring``, of the difference of two independent noise fields like the source's own,
    smoothed by ``sigma``."""
    residual = ndimage.gaussian_filter(highpass(source), sigma)
    values = residual[homogeneous(source, ring)]  # organ borders in the ring are not noise
    if values.size < 16:
        return 0.0
    return float(np.sqrt(2.0) * robust_std(values))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; two empty masks agree (1.0)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else float(2.0 * np.count_nonzero(a & b) / total)


def drawn_label_figures(drawn: dict[int, np.ndarray], requested: dict[int, np.ndarray]) -> dict:
    """Per variant: the drawn and requested voxel counts and their Dice over every slice."""
    keys = sorted(requested)
    drawn_all = np.stack([drawn[k] for k in keys])
    requested_all = np.stack([requested[k] for k in keys])
    return {
        "drawn_voxels": int(drawn_all.sum()),
        "requested_voxels": int(requested_all.sum()),
        "dice_drawn_vs_requested": round(dice(drawn_all, requested_all), 4),
    }
