"""Slices as browser images: radiological orientation, values packed losslessly into PNG or WebP, overlays."""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, features
from scipy import ndimage

# patient LPS axes and the letter of the direction each points to
_LETTERS = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "S", (2, -1): "I"}


@dataclass(frozen=True)
class DisplayView:
    """How to turn an array slice (rows, cols) into what a radiologist expects on screen: for an axial
    slice the patient's right on the viewer's left and anterior at the top."""

    transpose: bool
    flip_rows: bool
    flip_cols: bool
    edges: dict  # letter at "top", "bottom", "left", "right"

    def apply(self, image: np.ndarray) -> np.ndarray:
        if self.transpose:
            image = np.swapaxes(image, 0, 1)
        if self.flip_rows:
            image = image[::-1]
        if self.flip_cols:
            image = image[:, ::-1]
        return np.ascontiguousarray(image)


def _letter(vector: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(vector)))
    return _LETTERS[(axis, 1 if vector[axis] > 0 else -1)]


def radiological_view(ijk_to_lps: np.ndarray) -> DisplayView:
    matrix = np.asarray(ijk_to_lps, dtype=float)[:3, :3]
    col_dir = matrix[:, 0] / (np.linalg.norm(matrix[:, 0]) or 1.0)  # along a row, left to right
    row_dir = matrix[:, 1] / (np.linalg.norm(matrix[:, 1]) or 1.0)  # down the rows
    normal_axis = int(np.argmax(np.abs(np.cross(col_dir, row_dir))))
    x, y, z = np.eye(3)
    right, down = {2: (x, y), 1: (x, -z), 0: (y, -z)}[normal_axis]  # axial, coronal, sagittal
    transpose = abs(row_dir @ right) > abs(col_dir @ right)
    screen_x, screen_y = (row_dir, col_dir) if transpose else (col_dir, row_dir)
    flip_cols = screen_x @ right < 0
    flip_rows = screen_y @ down < 0
    screen_x = -screen_x if flip_cols else screen_x
    screen_y = -screen_y if flip_rows else screen_y
    edges = {"right": _letter(screen_x), "left": _letter(-screen_x), "bottom": _letter(screen_y),
             "top": _letter(-screen_y)}
    return DisplayView(bool(transpose), bool(flip_rows), bool(flip_cols), edges)


def png_data_uri(array: np.ndarray) -> str:
    """A data: URI of a uint8 gray, RGB or RGBA array as PNG (no text chunks: nothing but pixels)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


WEBP_LOSSLESS = {"lossless": True, "quality": 50, "method": 4}
"""Lossless WebP: on the packed values of a noisy CT slice about 30% smaller than PNG. Quality and
method set the encoder's effort only (never the pixels); 4 is within 1% of the smallest output at a
sixth of method 6's time."""


def lossless_data_uri(array: np.ndarray) -> str:
    """A data: URI of a uint8 RGB array as lossless WebP (every browser since 2020 decodes it to the
    same bytes), or as PNG where this Pillow was built without a WebP encoder."""
    if not features.check("webp"):
        return png_data_uri(array)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="WEBP", **WEBP_LOSSLESS)
    return "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def downscale_factor(shape: tuple[int, int], longest: int) -> int:
    """The smallest whole factor that brings a slice's long side to ``longest`` pixels or fewer."""
    return max(1, math.ceil(max(shape) / longest))


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """The mean of each ``factor`` x ``factor`` block (the last row and column of blocks padded with
    the edge values), so pixel (i, j) covers rows i*factor to (i+1)*factor - 1 of the image."""
    if factor == 1:
        return np.asarray(image, dtype=np.float64)
    rows, cols = image.shape
    padded = np.pad(np.asarray(image, dtype=np.float64),
                    ((0, -rows % factor), (0, -cols % factor)), mode="edge")
    return padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).mean(axis=(1, 3))


@dataclass(frozen=True)
class ValueCoding:
    """value = offset + scale * (256 * red + green): modality values in a lossless 8-bit RGB image,
    exact for integer HU; the page's script windows them into gray for any preset."""

    offset: float
    scale: float

    @classmethod
    def for_values(cls, images: list[np.ndarray]) -> "ValueCoding":
        """Whole steps for integer images (HU stays exact), 65536 steps over the range otherwise."""
        return cls.for_range(min(float(np.min(i)) for i in images), max(float(np.max(i)) for i in images),
                             integers=all(np.array_equal(i, np.round(i)) for i in images))

    @classmethod
    def for_range(cls, lower: float, upper: float, *, integers: bool) -> "ValueCoding":
        """The coding of images whose values span [lower, upper] (gathered a slice at a time)."""
        span = max(upper - lower, 1e-6)
        scale = max(1.0, np.ceil(span / 65535.0)) if integers else span / 65535.0
        return cls(float(np.floor(lower)) if integers else lower, float(scale))

    def encode(self, values: np.ndarray) -> np.ndarray:
        codes = np.clip(np.round((np.asarray(values, float) - self.offset) / self.scale), 0, 65535).astype(np.uint16)
        rgb = np.zeros(codes.shape + (3,), np.uint8)
        rgb[..., 0] = codes >> 8
        rgb[..., 1] = codes & 0xFF
        return rgb

    def encode_changes(self, values: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """``values`` packed like `encode`, except that a pixel equal to ``reference`` is sent as
        (0, 0, 255): "the reference's value". Still lossless; a variant's crop then costs little more
        than the pixels the run changed, since everything else is one flat colour."""
        rgb = self.encode(values)
        rgb[np.asarray(values) == np.asarray(reference)] = SAME_AS_REFERENCE
        return rgb


SAME_AS_REFERENCE = (0, 0, 255)
"""`ValueCoding.encode_changes`' mark: blue is never set by `ValueCoding.encode`."""


def outline_rgba(mask: np.ndarray, colour=(64, 230, 64)) -> np.ndarray:
    """The mask's one-pixel outline, transparent elsewhere; green, apart from the difference map's red and blue."""
    edge = mask & ~ndimage.binary_erosion(mask)
    rgba = np.zeros(mask.shape + (4,), np.uint8)
    rgba[edge] = (*colour, 255)
    return rgba


def difference_rgb(difference: np.ndarray, limit: float) -> np.ndarray:
    """variant - source: red brighter, blue darker, black unchanged; full colour at +-limit."""
    magnitude = np.clip(np.abs(difference) / max(limit, 1e-9) * 255.0, 0, 255).round().astype(np.uint8)
    rgb = np.zeros(difference.shape + (3,), np.uint8)
    rgb[..., 0] = np.where(difference > 0, magnitude, 0)
    rgb[..., 2] = np.where(difference < 0, magnitude, 0)
    return rgb


def square_box(region: np.ndarray, padding: int = 16, minimum: int = 32) -> list[int]:
    """[row0, row1, col0, col1] of a square around the region, padded, clamped to the image."""
    rows, cols = np.nonzero(region)
    height, width = region.shape
    if rows.size == 0:
        return [0, height, 0, width]
    side = max(int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)) + 2 * padding
    side = min(max(side, minimum), height, width)
    centre_r, centre_c = (rows.min() + rows.max() + 1) // 2, (cols.min() + cols.max() + 1) // 2
    r0 = int(np.clip(centre_r - side // 2, 0, height - side))
    c0 = int(np.clip(centre_c - side // 2, 0, width - side))
    return [r0, r0 + side, c0, c0 + side]
