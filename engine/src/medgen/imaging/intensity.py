"""Stored values ⇄ model space [-1, 1], exact both ways wherever nothing was generated.

The forward map is: stored → modality value (rescale; RGB → BT.601 luma) → window → [-1, 1],
inverted for MONOCHROME1 so that model space always means "higher is brighter on screen".
The inverse map rounds to the stored grid and clips to the stored range, and it gives back the
source value itself wherever the model value says "unchanged" (see :meth:`IntensityMap.from_model`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medgen.errors import InputError
from medgen.imaging.volume import Volume

# ITU-R BT.601 luma weights, the ones DICOM and Pillow use for RGB → gray.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)

# A model value this close to ±1 sits at the clip bound.
SATURATION_TOLERANCE = 1e-6

PERCENTILE_RANGE = (0.5, 99.5)
# Percentiles over more values than this use an evenly strided sample (same result to a voxel).
_PERCENTILE_SAMPLE = 4_000_000


@dataclass(frozen=True)
class Window:
    """A display window in modality units (HU for CT): values in [lower, upper] span model [-1, 1]."""

    center: float
    width: float

    def __post_init__(self):
        if not np.isfinite(self.center) or not np.isfinite(self.width) or self.width <= 0:
            raise InputError(
                "window", f"width must be > 0 and both values finite, got center {self.center}, width {self.width}"
            )

    @property
    def lower(self) -> float:
        return self.center - self.width / 2.0

    @property
    def upper(self) -> float:
        return self.center + self.width / 2.0


CT_PRESETS: dict[str, Window] = {
    "soft_tissue": Window(40, 400),
    "lung": Window(-600, 1500),
    "bone": Window(400, 1800),
    "brain": Window(40, 80),
    "liver": Window(60, 160),
    "mediastinum": Window(50, 350),
}
DEFAULT_CT_PRESET = "soft_tissue"


def choose_window(
    volume: Volume,
    slices: list[int],
    *,
    preset: str | None = None,
    center: float | None = None,
    width: float | None = None,
) -> Window:
    """Explicit center/width first, then a CT preset, else the 0.5–99.5 percentiles of the chosen slices."""
    if center is not None or width is not None:
        if center is None or width is None:
            raise InputError("window", f"give both center and width, got center {center}, width {width}")
        return Window(float(center), float(width))
    if preset is not None:
        preset = preset.strip().lower().replace("-", "_")  # "Soft-Tissue" reads as soft_tissue
        if preset not in CT_PRESETS:
            raise InputError("window", f"unknown preset {preset!r}; choose one of {', '.join(CT_PRESETS)}")
        return CT_PRESETS[preset]
    if volume.modality == "CT":
        return CT_PRESETS[DEFAULT_CT_PRESET]
    return _percentile_window(volume, slices)


def _percentile_window(volume: Volume, slices: list[int]) -> Window:
    """Robust range of modality values; MONOCHROME1 needs nothing special since the range is symmetric."""
    if not slices:
        raise InputError("window", "no slices to choose a window from")
    values = np.concatenate([modality_gray(volume, k).ravel() for k in slices])
    if values.size > _PERCENTILE_SAMPLE:
        values = values[:: values.size // _PERCENTILE_SAMPLE + 1]
    lower, upper = np.percentile(values, PERCENTILE_RANGE)
    if upper <= lower:  # a flat image: any width keeps it exact; centre it
        return Window(float(lower), 1.0)
    return Window(float((lower + upper) / 2.0), float(upper - lower))


def modality_gray(volume: Volume, k: int, stored: np.ndarray | None = None) -> np.ndarray:
    """Slice k (or ``stored`` values of that slice) in modality units, colour reduced to luma (float64)."""
    stored = volume.pixels[k] if stored is None else stored
    values = stored.astype(np.float64)
    if volume.is_color:
        values = values @ LUMA_WEIGHTS
    return values * float(volume.rescale_slope[k]) + float(volume.rescale_intercept[k])


def model_channels(gray: np.ndarray) -> np.ndarray:
    """(R, C) model-space gray → (3, R, C), the three channels a Stable Diffusion VAE expects."""
    return np.repeat(np.asarray(gray, dtype=np.float32)[np.newaxis], 3, axis=0)


class IntensityMap:
    """The window-based map between one volume's stored values and model space."""

    def __init__(self, volume: Volume, window: Window):
        self.volume = volume
        self.window = window
        photometric = volume.pixel_format.photometric if volume.pixel_format else None
        self.inverted = photometric == "MONOCHROME1"
        self.stored_range = _stored_range(volume)

    # stored → model -------------------------------------------------------------------------

    def to_model(self, k: int) -> np.ndarray:
        """Slice k as float32 (R, C) in [-1, 1]."""
        return self.to_model_array(self.volume.pixels[k], k)

    def to_model_array(self, stored: np.ndarray, k: int) -> np.ndarray:
        """Any stored values of slice k's encoding (e.g. a crop) as clipped float32 model values."""
        return np.clip(self._unclipped_model(stored, k), -1.0, 1.0).astype(np.float32)

    def _unclipped_model(self, stored: np.ndarray, k: int) -> np.ndarray:
        scaled = (modality_gray(self.volume, k, stored) - self.window.lower) / self.window.width * 2.0 - 1.0
        return -scaled if self.inverted else scaled

    # model → stored -------------------------------------------------------------------------

    def from_model(self, model: np.ndarray, k: int, reference_stored: np.ndarray | None = None) -> np.ndarray:
        """Model values (R, C) → stored values in slice k's dtype and shape.

        ``reference_stored`` (default: the source slice) decides where nothing changed: a pixel
        keeps its reference value when (1) the model value equals the reference's own model value,
        or (2) both sit at the same clip bound (saturation keeps the source, even outside the
        window), or (3) for RGB, the rounded gray equals the reference's rounded luma. So a round
        trip with no generation changes no value, and an RGB pixel keeps its colour.
        """
        slice_shape = self.volume.pixels.shape[1:]
        reference = self.volume.pixels[k] if reference_stored is None else np.asarray(reference_stored)
        if reference.shape != slice_shape:
            raise ValueError(f"reference_stored must have shape {slice_shape}, got {reference.shape}")
        model = np.asarray(model)
        if model.shape != slice_shape[:2]:
            raise ValueError(f"model must have shape {slice_shape[:2]}, got {model.shape}")

        # 1. Invert the window and the rescale in float64.
        m = np.clip(model.astype(np.float64), -1.0, 1.0)
        if self.inverted:
            m = -m
        modality = self.window.lower + (m + 1.0) / 2.0 * self.window.width
        gray = (modality - float(self.volume.rescale_intercept[k])) / float(self.volume.rescale_slope[k])

        # 2. Quantise to the stored grid and range.
        dtype = self.volume.pixels.dtype
        if np.issubdtype(dtype, np.integer):
            gray = np.rint(gray)
        if self.stored_range is not None:
            gray = np.clip(gray, *self.stored_range)

        # 3. Where nothing changed, keep the reference value.
        reference_model = self._unclipped_model(reference, k)
        unchanged = model.astype(np.float32) == np.clip(reference_model, -1.0, 1.0).astype(np.float32)
        bound = 1.0 - SATURATION_TOLERANCE
        unchanged |= (model >= bound) & (reference_model >= bound)
        unchanged |= (model <= -bound) & (reference_model <= -bound)

        if self.volume.is_color:
            reference_gray = modality_gray(self.volume, k, reference)
            if np.issubdtype(dtype, np.integer):
                reference_gray = np.rint(reference_gray)
            unchanged |= gray == reference_gray
            written = np.repeat(gray[..., np.newaxis], 3, axis=-1).astype(dtype)
            return np.where(unchanged[..., np.newaxis], reference, written).astype(dtype, copy=False)
        return np.where(unchanged, reference, gray.astype(dtype)).astype(dtype, copy=False)


def _stored_range(volume: Volume) -> tuple[float, float] | None:
    """BitsStored/PixelRepresentation range for DICOM, the dtype's range otherwise (None for floats)."""
    if volume.pixel_format is not None:
        return float(volume.pixel_format.stored_min), float(volume.pixel_format.stored_max)
    dtype = volume.pixels.dtype
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    if dtype == np.float32:
        info = np.finfo(dtype)
        return float(info.min), float(info.max)
    return None
