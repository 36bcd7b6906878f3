"""Give a generated lesion the scanner's own edge: blurred like the source's edges, spilling past the mask.

A real lesion is an object seen through the scanner's point-spread function: its border is as soft as
every other edge in the image, and its contrast reaches a pixel or two past the outline a reader
draws. A generated lesion, pasted under its mask, stops at the mask with the model's own sharpness.
`medgen bench detect --diagnose` found that border the strongest cue a classifier uses to tell
synthetic lesions from real ones.

So, per slice:
1. the source's edge spread: at the strongest edges in the tissue around the mask, the profile
   across the edge is fitted with a blurred step (an error function); the median fitted sigma is
   the scanner's blur there (`measure_edge_spread`);
2. the room the lesion's tail needs: ``SPILL_SIGMAS`` sigmas past the mask. The blend region is the
   user's (--mask-dilate): nothing outside it ever changes. Where it leaves the tail less room, the
   border is left as generated (a blur cut off at the mask would soften the lesion inside and add no
   spill), and the provenance says so (`has_room`);
3. the generated lesion's contrast (its signal less the source's low-pass) is measured the same way
   along the mask's own border and blurred by the Gaussian that brings its edge to the source's
   (sigma_add^2 = sigma_source^2 - sigma_generated^2; `match_edge_spread`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize, special

PROFILE_HALF_PX = 5
"""Half-length of each profile across an edge, in pixels."""
MAX_EDGES = 40
"""Edges fitted per slice (the strongest, at least ``EDGE_SPACING_PX`` apart)."""
EDGE_SPACING_PX = 3
SEARCH_RING_PX = 24
"""Edges are looked for within this distance of the mask."""
MIN_STEP_NOISE = 5.0
"""A fitted edge counts when its step is at least this many noise std."""
SIGMA_RANGE_PX = (0.25, 5.0)
SPILL_SIGMAS = 2.5
"""A blurred lesion's contrast is below 1% of its step beyond this many sigmas: the room its tail needs."""
GENERATED_DEFAULT_SIGMA_PX = 0.7
"""The generated signal's own edge when its border gives no fit (the signal smoothing of `noise`)."""


@dataclass(frozen=True)
class EdgeSpread:
    """A slice's measured edge blur: Gaussian sigma in pixels and how many edges it rests on."""

    sigma_px: float
    edges: int

    def describe(self) -> dict:
        return {"edge_sigma_px": round(float(self.sigma_px), 3), "edges_fitted": int(self.edges)}


def measure_edge_spread(values: np.ndarray, mask: np.ndarray, noise_std: float) -> EdgeSpread | None:
    """The source's edge blur around ``mask`` (see the module doc); None where no edge stands out."""
    values = np.asarray(values, dtype=np.float64)
    distance = ndimage.distance_transform_edt(~np.asarray(mask, dtype=bool))
    region = (distance > 2.0) & (distance <= SEARCH_RING_PX)
    smoothed = ndimage.gaussian_filter(values, 1.0)
    gy, gx = ndimage.sobel(smoothed, axis=0), ndimage.sobel(smoothed, axis=1)
    magnitude = np.hypot(gy, gx)
    points = _strongest(magnitude, region)
    sigmas = []
    for row, col in points:
        norm = magnitude[row, col]
        normal = (gy[row, col] / norm, gx[row, col] / norm)
        fit = fit_edge(values, (row, col), normal)
        if fit is not None and abs(fit[1]) >= MIN_STEP_NOISE * max(noise_std, 1e-9):
            sigmas.append(fit[0])
    if len(sigmas) < 3:
        return None
    return EdgeSpread(float(np.median(sigmas)), len(sigmas))


def fit_edge(values: np.ndarray, point: tuple[int, int], normal: tuple[float, float]) -> tuple[float, float] | None:
    """(sigma, step) of a blurred step fitted to the profile through ``point`` along ``normal``."""
    offsets = np.arange(-PROFILE_HALF_PX, PROFILE_HALF_PX + 1, dtype=np.float64)
    rows = point[0] + offsets * normal[0]
    cols = point[1] + offsets * normal[1]
    profile = ndimage.map_coordinates(values, [rows, cols], order=1, mode="nearest")
    start = (float(profile[:3].mean()), float(profile[-3:].mean() - profile[:3].mean()), 0.0, 1.0)
    low, high = SIGMA_RANGE_PX
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = optimize.curve_fit(
                _blurred_step, offsets, profile, p0=start,
                bounds=([-np.inf, -np.inf, -2.0, low], [np.inf, np.inf, 2.0, high]), maxfev=400,
            )
    except (RuntimeError, ValueError):
        return None
    sigma = float(params[3])
    if not low * 1.01 < sigma < high * 0.99:  # pinned to a bound: not an edge of this kind
        return None
    return sigma, float(params[1])


def _blurred_step(x, base, step, centre, sigma):
    return base + step * 0.5 * (1.0 + special.erf((x - centre) / (sigma * np.sqrt(2.0))))


def _strongest(magnitude: np.ndarray, region: np.ndarray) -> list[tuple[int, int]]:
    """Up to ``MAX_EDGES`` points of largest gradient in ``region``, ``EDGE_SPACING_PX`` apart."""
    candidates = np.flatnonzero(region)
    order = candidates[np.argsort(magnitude.ravel()[candidates])[::-1]]
    taken: list[tuple[int, int]] = []
    for flat in order[: 40 * MAX_EDGES]:
        row, col = divmod(int(flat), magnitude.shape[1])
        if all(max(abs(row - r), abs(col - c)) >= EDGE_SPACING_PX for r, c in taken):
            taken.append((row, col))
            if len(taken) == MAX_EDGES:
                break
    return taken


def spill_room_px(spread: EdgeSpread | None) -> float:
    """How far past the mask the lesion's blurred tail reaches, in pixels (0 without a measure)."""
    return 0.0 if spread is None else SPILL_SIGMAS * spread.sigma_px


def has_room(mask: np.ndarray, allowed: np.ndarray, spread: EdgeSpread | None) -> bool:
    """Whether the blend region reaches the tail's extent past the mask all around it."""
    if spread is None:
        return False
    reach = ndimage.distance_transform_edt(~np.asarray(mask, dtype=bool)) <= spill_room_px(spread)
    return bool(np.all(np.asarray(allowed, dtype=bool)[reach]))


def generated_edge_sigma(contrast: np.ndarray, mask: np.ndarray) -> float:
    """The generated lesion's own edge blur, fitted across the mask's border (median over its points)."""
    mask = np.asarray(mask, dtype=bool)
    border = mask & ~ndimage.binary_erosion(mask)
    outside = ndimage.distance_transform_edt(~mask) - ndimage.distance_transform_edt(mask)
    gy, gx = np.gradient(ndimage.gaussian_filter(outside, 1.0))
    sigmas = []
    points = np.argwhere(border)
    for row, col in points[:: max(1, len(points) // MAX_EDGES)]:
        norm = np.hypot(gy[row, col], gx[row, col])
        if norm == 0:
            continue
        fit = fit_edge(contrast, (int(row), int(col)), (gy[row, col] / norm, gx[row, col] / norm))
        if fit is not None:
            sigmas.append(fit[0])
    return float(np.median(sigmas)) if len(sigmas) >= 3 else GENERATED_DEFAULT_SIGMA_PX


def match_edge_spread(signal: np.ndarray, background: np.ndarray, mask: np.ndarray, spread: EdgeSpread | None,
                      allowed: np.ndarray) -> np.ndarray:
    """``signal`` whose lesion contrast (``signal - background``) is blurred to the source's edge
    spread, only within ``allowed`` (the blend region); unchanged without a measure or the room."""
    if not has_room(mask, allowed, spread):
        return signal
    contrast = np.where(allowed, np.asarray(signal, dtype=np.float64) - background, 0.0)
    own = generated_edge_sigma(contrast, mask)
    added = np.sqrt(max(spread.sigma_px**2 - own**2, 0.0))
    if added < 0.1:
        return signal
    blurred = ndimage.gaussian_filter(contrast, added, mode="constant")
    return np.where(allowed, background + blurred, signal)
