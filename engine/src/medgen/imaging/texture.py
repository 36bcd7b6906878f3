"""Noise and seam figures of an inpainted slice: can a reader find the generated region by its texture?

- noise std ratio: the robust standard deviation of the high-pass residual (image minus its 5x5
  median, which removes the lesion's own signal, edges included) inside the mask, over the same
  inside a ring of surrounding tissue just outside the pasted (dilated) region. 1 means the same
  graininess; a smooth pasted-in blob gives well below 1.
- seam strength ratio: the mean gradient magnitude in a band across the outer border of the pasted
  (dilated) region, where generated and source meet (less the mask and one pixel around it: the
  lesion's own rim is no seam), over the same in the next band of equal width further out. A visible edge gives above 1, a smooth halo below 1.

Both are computed in modality units on a box around the mask, so a 2000-pixel radiograph costs no
more than a 128-pixel CT. `measure_texture` is the one entry point; `medgen validate` and the run
report use it too. Pure numpy/scipy: no torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

NOISE_SPLIT_SIGMA_PX = 1.5
"""Gaussian sigma (pixels) of the low-pass that separates signal from noise: CT, MR and CR noise is
correlated over about one to three pixels; lesion signal varies over more."""

NOISE_MEDIAN_PX = 5
"""Side of the median filter whose residual is the measured noise: larger than the noise grain, smaller
than a lesion."""

MAD_TO_STD = 1.4826  # robust std of a normal variable from its median absolute deviation
TRIM_PERCENTILES = (5.0, 95.0)
TRIMMED_NORMAL_STD = 0.7893  # std of a standard normal variable restricted to its central 90 %

SURROUND_MIN_PX = 6
"""Width of the surrounding-tissue ring in pixels at least; larger masks get a ring of half their
equivalent radius."""

NOISE_RATIO_BAND = (0.8, 1.25)
SEAM_RATIO_BAND = (0.8, 1.25)


@dataclass(frozen=True)
class TextureFigures:
    """The two figures of one slice (or their median over slices), with the stds behind the first."""

    noise_std_ratio: float
    seam_strength_ratio: float
    inside_noise_std: float
    surround_noise_std: float

    @property
    def in_band(self) -> bool:
        return (
            NOISE_RATIO_BAND[0] <= self.noise_std_ratio <= NOISE_RATIO_BAND[1]
            and SEAM_RATIO_BAND[0] <= self.seam_strength_ratio <= SEAM_RATIO_BAND[1]
        )

    def to_json(self) -> dict:
        return {k: (None if not np.isfinite(v) else round(float(v), 4)) for k, v in asdict(self).items()}


def highpass(image: np.ndarray, size: int = NOISE_MEDIAN_PX) -> np.ndarray:
    """The noise part of an image: the image minus its median over ``size`` x ``size`` pixels. A median
    keeps edges and ramps (a lesion's rim, an organ border), so what remains is graininess, not signal."""
    image = np.asarray(image, dtype=np.float64)
    return image - ndimage.median_filter(image, size=size, mode="reflect")


def robust_std(values: np.ndarray) -> float:
    """The std of the central 90 % of the values, scaled to a normal variable's std: edges and outliers
    barely move it, and unlike the median absolute deviation it is not stuck on the integer steps of
    stored values (an MR's noise can be one or two units)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size < 2:
        return float("nan")
    # trimmed by rank, not by value: integer data has many ties at the cut
    ordered = np.sort(values)
    first = int(round(ordered.size * TRIM_PERCENTILES[0] / 100.0))
    last = int(round(ordered.size * TRIM_PERCENTILES[1] / 100.0))
    central = ordered[first:last]
    return float(central.std() / TRIMMED_NORMAL_STD) if central.size >= 2 else 0.0


EDGE_SIGMA_PX = 2.0
"""Gaussian sigma of the low-pass whose gradient finds edges (lesion rims, bone, organ borders)."""
EDGE_MADS = 3.0
"""A pixel is on an edge when its low-pass gradient exceeds the region's median by this many MADs."""


def homogeneous(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``region`` without its edges: where the low-pass gradient is not an outlier for the region.
    Noise is measured there, so a lesion's rim or a bone edge does not count as graininess."""
    region = np.asarray(region, bool)
    if np.count_nonzero(region) < 16:
        return region
    gradient = gradient_magnitude(ndimage.gaussian_filter(np.asarray(image, np.float64), EDGE_SIGMA_PX))
    values = gradient[region]
    median = np.median(values)
    mad = np.median(np.abs(values - median))
    flat = region & (gradient <= median + EDGE_MADS * MAD_TO_STD * mad)
    return flat if np.count_nonzero(flat) >= max(16, np.count_nonzero(region) // 4) else region


def noise_std(image: np.ndarray, region: np.ndarray, residual: np.ndarray | None = None) -> float:
    """Robust std of the high-pass residual over the homogeneous part of ``region``."""
    residual = highpass(image) if residual is None else residual
    return robust_std(residual[homogeneous(image, region)])


def surround_ring(mask: np.ndarray, dilated: np.ndarray, gap_px: float = 1.0) -> np.ndarray:
    """Tissue around the pasted region: from ``gap_px`` outside the dilated mask, ``SURROUND_MIN_PX``
    wide or half the mask's equivalent radius, whichever is more."""
    distance = ndimage.distance_transform_edt(~np.asarray(dilated, bool))
    radius = np.sqrt(max(int(np.count_nonzero(mask)), 1) / np.pi)
    width = max(float(SURROUND_MIN_PX), radius / 2.0)
    return (distance > gap_px) & (distance <= gap_px + width)


SEAM_BAND_PX = 2.0
"""Half-width of the band across the pasted region's outer edge in which the seam is measured."""


def border_bands(dilated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(band across the pasted region's outer edge, the next band of equal width further out).

    The border band reaches ``SEAM_BAND_PX`` pixels inside the dilated mask and one pixel outside it:
    where generated and source meet. The lesion's own rim lies at the painted mask's edge, the
    dilation further in, so a lesion that fills its mask is not mistaken for a seam.
    """
    dilated = np.asarray(dilated, bool)
    outside = ndimage.distance_transform_edt(~dilated)
    inside = ndimage.distance_transform_edt(dilated)
    border = (dilated & (inside <= SEAM_BAND_PX)) | (~dilated & (outside <= 1.0))
    width = SEAM_BAND_PX + 1.0
    outer = (outside > 1.0) & (outside <= 1.0 + width)
    return border, outer


def gradient_magnitude(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    return np.hypot(ndimage.sobel(image, axis=0, mode="reflect"), ndimage.sobel(image, axis=1, mode="reflect")) / 8.0


def analysis_box(dilated: np.ndarray, margin_px: int) -> tuple[slice, slice]:
    """A box around the dilated mask with a margin, clamped to the slice."""
    rows, cols = np.nonzero(dilated)
    if rows.size == 0:
        raise ValueError("the mask is empty")
    r0, r1 = max(int(rows.min()) - margin_px, 0), min(int(rows.max()) + 1 + margin_px, dilated.shape[0])
    c0, c1 = max(int(cols.min()) - margin_px, 0), min(int(cols.max()) + 1 + margin_px, dilated.shape[1])
    return slice(r0, r1), slice(c0, c1)


def measure_texture(
    image: np.ndarray,
    mask: np.ndarray,
    dilated: np.ndarray | None = None,
) -> TextureFigures:
    """Noise std ratio and seam strength ratio of one 2D slice (modality units or any linear map of
    them), for the region ``mask`` pasted under ``dilated`` (see the module doc).

    Pass the source slice instead of the output to get the figures a perfect paste would reach.
    """
    mask = np.asarray(mask, bool)
    dilated = mask if dilated is None else np.asarray(dilated, bool)
    radius = np.sqrt(max(int(np.count_nonzero(mask)), 1) / np.pi)
    margin = int(np.ceil(max(SURROUND_MIN_PX, radius / 2.0) + 16 + 4 * NOISE_SPLIT_SIGMA_PX))
    box = analysis_box(dilated, margin)
    image = np.asarray(image, dtype=np.float64)[box]
    mask, dilated = mask[box], dilated[box]

    residual = highpass(image)
    inside_std = noise_std(image, mask, residual)
    surround_std = noise_std(image, surround_ring(mask, dilated), residual)
    gradient = gradient_magnitude(image)
    border, outer = border_bands(dilated)
    border &= ~ndimage.binary_dilation(mask)  # the lesion's own rim, where a small dilation brings it close
    if not border.any():
        border, _ = border_bands(dilated)
    border_mean = float(gradient[border].mean()) if border.any() else float("nan")
    outer_mean = float(gradient[outer].mean()) if outer.any() else float("nan")
    return TextureFigures(
        noise_std_ratio=_ratio(inside_std, surround_std),
        seam_strength_ratio=_ratio(border_mean, outer_mean),
        inside_noise_std=inside_std,
        surround_noise_std=surround_std,
    )


def median_figures(figures: list[TextureFigures]) -> TextureFigures:
    """One figure per field over several slices: the median, ignoring slices where it is undefined."""
    def median(name: str) -> float:
        values = [getattr(f, name) for f in figures if np.isfinite(getattr(f, name))]
        return float(np.median(values)) if values else float("nan")

    return TextureFigures(*(median(name) for name in TextureFigures.__dataclass_fields__))


def _ratio(numerator: float, denominator: float) -> float:
    if not np.isfinite(numerator) or not np.isfinite(denominator) or denominator <= 0:
        return float("nan")
    return numerator / denominator
