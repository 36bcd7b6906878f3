"""Crop a box around the mask, resize it to the model's resolution, and paste the result back.

Everything here works on one 2D slice. Paste-back never touches a pixel outside the dilated mask,
which is what keeps the output bit-identical to the source there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage


@dataclass(frozen=True)
class CropBox:
    """Half-open pixel box [row0, row1) x [col0, col1) inside a slice."""

    row0: int
    row1: int
    col0: int
    col1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.row0, self.row1), slice(self.col0, self.col1)

    @property
    def shape(self) -> tuple[int, int]:
        return self.row1 - self.row0, self.col1 - self.col0


def dilate_mask(mask: np.ndarray, radius_mm: float, pixel_spacing: tuple[float, float]) -> np.ndarray:
    """Grow a 2D mask by a radius in millimetres (an ellipse in pixels when spacing is anisotropic)."""
    mask = np.asarray(mask, dtype=bool)
    if radius_mm <= 0:
        return mask.copy()
    radius_rows = radius_mm / float(pixel_spacing[0])
    radius_cols = radius_mm / float(pixel_spacing[1])
    half_rows, half_cols = int(np.floor(radius_rows)), int(np.floor(radius_cols))
    if half_rows == 0 and half_cols == 0:
        return mask.copy()
    rr, cc = np.mgrid[-half_rows : half_rows + 1, -half_cols : half_cols + 1]
    ellipse = (rr / max(radius_rows, 1e-9)) ** 2 + (cc / max(radius_cols, 1e-9)) ** 2 <= 1.0
    return ndimage.binary_dilation(mask, structure=ellipse)


MIN_BLEND_PX = 2
"""The blend region reaches at least this many pixels past the mask (when any dilation is asked for):
room for the lesion's edge to spread as the scanner's blur spreads a real one's (`generate.edge_spread`),
which 2 mm leaves on fine grids but not on coarse ones (under one pixel at 2.8 mm)."""


def blend_region(mask: np.ndarray, radius_mm: float, pixel_spacing: tuple[float, float]) -> np.ndarray:
    """The region a run may change: the mask grown by ``radius_mm``, and by at least ``MIN_BLEND_PX``
    pixels when ``radius_mm`` > 0. Everything outside it stays bit-identical to the source."""
    if radius_mm > 0:
        radius_mm = max(float(radius_mm), MIN_BLEND_PX * max(float(pixel_spacing[0]), float(pixel_spacing[1])))
    return dilate_mask(mask, radius_mm, pixel_spacing)


def feather_weights(mask: np.ndarray, dilated: np.ndarray, blur_px: float) -> np.ndarray:
    """Blend weight of the generated image: 1 inside the mask, ramping to 0 at the dilated edge.

    The ramp is the distance from the outside of the dilated mask, divided by ``blur_px``, so the
    weight is exactly 0 outside the dilated mask.
    """
    mask = np.asarray(mask, dtype=bool)
    dilated = np.asarray(dilated, dtype=bool)
    if blur_px <= 0:
        weights = dilated.astype(np.float64)
    else:
        ramp = np.clip(ndimage.distance_transform_edt(dilated) / float(blur_px), 0.0, 1.0)
        weights = np.maximum(ramp, mask.astype(np.float64))
    weights[~dilated] = 0.0
    return weights


def mask_crop_box(mask: np.ndarray, padding_px: int) -> CropBox:
    """A square box around the mask with padding, clamped to the slice.

    Square so the resize to the model's square input keeps the aspect ratio; where the slice is too
    small for a square the box takes the whole extent on that axis.
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise ValueError("mask_crop_box needs a non-empty mask")
    height, width = mask.shape
    r0, r1 = int(rows.min()), int(rows.max()) + 1
    c0, c1 = int(cols.min()), int(cols.max()) + 1
    side = max(r1 - r0, c1 - c0) + 2 * max(int(padding_px), 0)
    return CropBox(*_centered_span(r0, r1, side, height), *_centered_span(c0, c1, side, width))


def _centered_span(start: int, stop: int, length: int, limit: int) -> tuple[int, int]:
    """A span of ``length`` centred on [start, stop), shifted to fit inside [0, limit)."""
    length = min(length, limit)
    begin = (start + stop - length) // 2
    begin = min(max(begin, 0), limit - length)
    return begin, begin + length


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of a float image to (rows, cols); float32 in, float32 out, no quantisation."""
    if image.shape == tuple(size):
        return image.astype(np.float32, copy=True)
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
    return np.asarray(pil.resize((size[1], size[0]), Image.Resampling.BICUBIC), dtype=np.float32)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a binary mask to (rows, cols); any covered fraction above a half counts as inside."""
    if mask.shape == tuple(size):
        return np.asarray(mask, dtype=bool).copy()
    pil = Image.fromarray(np.asarray(mask, dtype=np.float32), mode="F")
    return np.asarray(pil.resize((size[1], size[0]), Image.Resampling.BILINEAR)) >= 0.5


def paste_generated(
    source_model: np.ndarray, generated_crop: np.ndarray, box: CropBox, weights: np.ndarray
) -> np.ndarray:
    """Blend a generated crop (already resized to the box) into a model-space slice.

    Returns the blended model-space slice; callers keep source stored values wherever
    ``weights == 0`` instead of converting them, so those pixels stay bit-identical.
    """
    if generated_crop.shape != box.shape:
        raise ValueError(f"generated crop has shape {generated_crop.shape}, box is {box.shape}")
    generated_full = source_model.astype(np.float64, copy=True)
    generated_full[box.slices] = generated_crop
    return weights * generated_full + (1.0 - weights) * source_model
