"""One 3D lesion across slices: the generated signal is smoothed along the slice axis.

Each slice is generated on its own (with shared seeds), so neighbouring slices can disagree on the
lesion's brightness and shape more than a real object's cross-sections would. After generation, the
generated low-pass signal of each slice is replaced by a mask-weighted Gaussian average over its
neighbours along the slice axis (sigma ``SLICE_SIGMA_MM``, at least one slice), computed only where
that slice's own blend weight is above zero: the lesion stays inside each slice's mask, but its
interior varies smoothly from slice to slice like a real object. Non-adjacent slices (a gap in the
selection) are never mixed. Noise is added afterwards, per slice, by `generate.noise`.
"""

from __future__ import annotations

import numpy as np

SLICE_SIGMA_MM = 2.0
"""Gaussian sigma along the slice axis; with thick slices (> 2 mm) one slice."""


def smooth_along_slices(
    indices: list[int],
    signals: list[np.ndarray],
    weights: list[np.ndarray],
    slice_spacing_mm: float,
    sigma_mm: float = SLICE_SIGMA_MM,
) -> list[np.ndarray]:
    """Mask-weighted Gaussian average of full-slice ``signals`` along the slice axis (see the module doc).

    ``indices`` are the slices' positions, ``weights`` their blend weights; returns new arrays, equal to
    the input wherever a slice's weight is 0 or it has no adjacent neighbour.
    """
    sigma = max(float(sigma_mm) / max(float(slice_spacing_mm), 1e-6), 1.0)
    reach = int(np.ceil(2 * sigma))
    position = {k: n for n, k in enumerate(indices)}
    out = []
    for n, k in enumerate(indices):
        total = np.zeros_like(signals[n], dtype=np.float64)
        norm = np.zeros_like(total)
        for offset in range(-reach, reach + 1):
            # only neighbours connected through a run of selected slices
            if any(k + step not in position for step in _steps(offset)):
                continue
            m = position[k + offset]
            g = float(np.exp(-0.5 * (offset / sigma) ** 2))
            total += g * weights[m] * signals[m]
            norm += g * weights[m]
        inside = (weights[n] > 0) & (norm > 0)
        smoothed = np.array(signals[n], dtype=np.float64, copy=True)
        smoothed[inside] = total[inside] / norm[inside]
        out.append(smoothed)
    return out


def _steps(offset: int) -> range:
    """Offsets from 0 to ``offset`` (inclusive), excluding 0."""
    return range(1, offset + 1) if offset > 0 else range(offset, 0)
