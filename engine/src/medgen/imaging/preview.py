"""A contact sheet for visual QA, in the radiological convention a reader expects.

Every slice is shown with the patient's anterior up and the patient's right on the viewer's left for
an axial slice (superior up for coronal and sagittal, anterior on the left for sagittal), however the
source stored its rows and columns: `display_transform` works that out from the IJK-to-LPS matrix.
One row per inpainted slice: the full slice with the mask outlined and the zoom box drawn, then a
zoomed crop around the mask of the source, of each variant and of each difference map. The title
states the prompt and the window; a colour key under the sheet gives the difference maps' scale in
modality units (HU for CT).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

MAX_PREVIEW_ROWS = 8
TILE = 192
LABEL_HEIGHT = 16
TITLE_HEIGHT = 34
KEY_HEIGHT = 40
ZOOM_MARGIN = 0.6
"""The zoomed crop reaches this fraction of the mask's extent beyond it on each side (at least 8 px)."""
OUTLINE_COLOUR = (255, 220, 0)
BOX_COLOUR = (0, 200, 255)
TEXT_COLOUR = (230, 230, 230)
BACKGROUND = (24, 24, 24)


@dataclass(frozen=True)
class DisplayTransform:
    """How to turn a stored (row, column) slice into the radiological view: transpose first, then flips."""

    transpose: bool
    flip_rows: bool
    flip_cols: bool
    plane: str  # axial, coronal or sagittal
    labels: tuple[str, str, str, str]  # patient direction at the top, bottom, left and right of the screen

    def apply(self, image: np.ndarray) -> np.ndarray:
        out = np.swapaxes(image, 0, 1) if self.transpose else image
        if self.flip_rows:
            out = out[::-1]
        if self.flip_cols:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)


# Screen right and screen down in LPS for each plane: axial (A up, R on the viewer's left), coronal
# (S up, R left), sagittal (S up, A left).
_SCREEN_AXES = {
    "axial": (np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), ("A", "P", "R", "L")),
    "coronal": (np.array([1.0, 0, 0]), np.array([0, 0, -1.0]), ("S", "I", "R", "L")),
    "sagittal": (np.array([0, 1.0, 0]), np.array([0, 0, -1.0]), ("S", "I", "A", "P")),
}


AS_STORED = "as stored"


def display_transform(ijk_to_lps: np.ndarray | None) -> DisplayTransform:
    """The radiological view of a slice from the volume's IJK-to-LPS matrix; None (a projection
    radiograph, or no geometry) shows the slice as stored, with no patient directions."""
    if ijk_to_lps is None:
        return DisplayTransform(False, False, False, AS_STORED, ("", "", "", ""))
    matrix = np.asarray(ijk_to_lps, dtype=float)[:3, :3]
    col_axis, row_axis = matrix[:, 0], matrix[:, 1]
    normal = np.cross(col_axis, row_axis)
    if not np.any(normal):
        return DisplayTransform(False, False, False, "axial", ("A", "P", "R", "L"))
    plane = ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]
    right, down, labels = _SCREEN_AXES[plane]
    transpose = abs(col_axis @ right) + abs(row_axis @ down) < abs(row_axis @ right) + abs(col_axis @ down)
    if transpose:
        col_axis, row_axis = row_axis, col_axis
    return DisplayTransform(transpose, bool(row_axis @ down < 0), bool(col_axis @ right < 0), plane, labels)


def _to_uint8(model_space: np.ndarray) -> np.ndarray:
    return np.clip((model_space + 1.0) * 127.5, 0, 255).round().astype(np.uint8)


def _gray_rgb(model_space: np.ndarray) -> np.ndarray:
    gray = _to_uint8(model_space)
    return np.stack([gray] * 3, axis=-1)


def _outline(mask: np.ndarray, thickness: int) -> np.ndarray:
    mask = np.asarray(mask, bool)
    return ndimage.binary_dilation(mask, iterations=thickness) & ~ndimage.binary_erosion(mask, iterations=1)


def _difference_colours(difference: np.ndarray, scale: float) -> np.ndarray:
    """Signed difference: red brighter than the source, blue darker, black unchanged (see the key)."""
    magnitude = np.clip(np.abs(difference) / max(scale, 1e-12) * 255.0, 0, 255).astype(np.uint8)
    rgb = np.zeros(difference.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = np.where(difference > 0, magnitude, 0)
    rgb[..., 2] = np.where(difference < 0, magnitude, 0)
    return rgb


def _zoom_box(mask: np.ndarray) -> tuple[slice, slice]:
    """A square-ish box around the mask with a margin, clamped to the slice."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return slice(0, mask.shape[0]), slice(0, mask.shape[1])
    extent = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
    margin = max(8, int(round(extent * ZOOM_MARGIN)))
    half = extent / 2.0 + margin
    centre_r, centre_c = (rows.min() + rows.max()) / 2.0, (cols.min() + cols.max()) / 2.0
    r0, r1 = max(int(centre_r - half), 0), min(int(np.ceil(centre_r + half)) + 1, mask.shape[0])
    c0, c1 = max(int(centre_c - half), 0), min(int(np.ceil(centre_c + half)) + 1, mask.shape[1])
    return slice(r0, r1), slice(c0, c1)


def _tile(rgb: np.ndarray, nearest: bool = False) -> Image.Image:
    image = Image.fromarray(rgb, mode="RGB")
    scale = TILE / max(image.size)
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    resample = Image.Resampling.NEAREST if nearest or scale >= 1 else Image.Resampling.BILINEAR
    return image.resize(size, resample)


def _full_slice_tile(source: np.ndarray, mask: np.ndarray, box: tuple[slice, slice], view: DisplayTransform):
    """The whole slice, mask outlined and zoom box drawn, with the patient directions at the edges."""
    thickness = max(1, int(round(max(source.shape) / TILE)))  # at least one screen pixel after shrinking
    rgb = _gray_rgb(source)
    rgb[_outline(mask, thickness)] = OUTLINE_COLOUR
    frame = np.zeros(mask.shape, bool)
    frame[box] = True
    rgb[_outline(frame, thickness) & ~ndimage.binary_dilation(mask, iterations=thickness)] = BOX_COLOUR
    tile = _tile(np.stack([view.apply(rgb[..., c]) for c in range(3)], axis=-1))
    draw = ImageDraw.Draw(tile)
    w, h = tile.size
    top, bottom, left, right = view.labels
    draw.text((w // 2 - 3, 1), top, fill=TEXT_COLOUR)
    draw.text((w // 2 - 3, h - 12), bottom, fill=TEXT_COLOUR)
    draw.text((2, h // 2 - 6), left, fill=TEXT_COLOUR)
    draw.text((w - 9, h // 2 - 6), right, fill=TEXT_COLOUR)
    return tile


def _zoom_tile(rgb: np.ndarray, mask: np.ndarray | None, box, view: DisplayTransform) -> Image.Image:
    """The crop magnified to a tile; the mask's outline drawn after magnifying, two screen pixels wide,
    so it marks the border without hiding the pixels next to it."""
    tile = _tile(np.stack([view.apply(rgb[box][..., c]) for c in range(3)], axis=-1), nearest=True)
    if mask is None:
        return tile
    shown = Image.fromarray(view.apply(mask[box]).astype(np.uint8) * 255).resize(tile.size, Image.Resampling.NEAREST)
    pixels = np.array(tile)
    pixels[_outline(np.asarray(shown) > 0, 1)] = OUTLINE_COLOUR
    return Image.fromarray(pixels)


def _colour_key(width: int, scale: float, unit: str) -> Image.Image:
    """A bar from blue (darker than the source) through black to red (brighter), with its values."""
    key = Image.new("RGB", (width, KEY_HEIGHT), BACKGROUND)
    bar_w = min(360, width - 160)
    ramp = np.linspace(-1.0, 1.0, bar_w)[np.newaxis].repeat(12, axis=0)
    key.paste(Image.fromarray(_difference_colours(ramp, 1.0)), (80, 6))
    draw = ImageDraw.Draw(key)
    draw.text((4, 6), "difference", fill=TEXT_COLOUR)
    draw.text((80, 22), f"-{scale:.4g} {unit} (darker)", fill=TEXT_COLOUR)
    draw.text((80 + bar_w // 2 - 4, 22), "0", fill=TEXT_COLOUR)
    draw.text((80 + bar_w - 90, 22), f"+{scale:.4g} {unit} (brighter)", fill=TEXT_COLOUR)
    return key


def write_preview(
    path: Path,
    *,
    slice_indices: list[int],
    sources: list[np.ndarray],
    masks: list[np.ndarray],
    variants: list[list[np.ndarray]],
    ijk_to_lps: np.ndarray | None = None,
    prompt: str | None = None,
    window: tuple[float, float] | None = None,
    unit: str = "",
) -> None:
    """Write ``preview.png``: one row per inpainted slice (at most ``MAX_PREVIEW_ROWS``, evenly chosen).

    ``sources[i]`` and ``variants[v][i]`` are model-space slices in [-1, 1] (as the model saw them,
    after writing back to stored values); ``masks[i]`` the boolean mask of that slice. ``window``
    (centre, width) in modality units, with ``unit`` (HU for CT), titles the sheet and scales the
    colour key; ``ijk_to_lps`` orients every tile radiologically.
    """
    view = display_transform(ijk_to_lps)
    rows = list(range(len(slice_indices)))
    if len(rows) > MAX_PREVIEW_ROWS:
        rows = sorted({round(x) for x in np.linspace(0, len(rows) - 1, MAX_PREVIEW_ROWS)})
    headers = ["slice + mask", "source (zoom)"] + [f"variant {v + 1:02d}" for v in range(len(variants))]
    headers += [f"diff {v + 1:02d}" for v in range(len(variants))]

    # 1. One colour scale for every difference map, in modality units
    to_units = (window[1] / 2.0) if window is not None else 1.0
    differences = [[variant[i] - sources[i] for i in rows] for variant in variants]
    scale_model = max([float(np.abs(d).max()) for ds in differences for d in ds] + [1e-6])
    scale_units = scale_model * to_units

    # 2. Tiles: full slice, zoomed source, zoomed variants, zoomed differences
    tiles_per_row = []
    for n, i in enumerate(rows):
        box = _zoom_box(masks[i])
        tiles_per_row.append(
            [
                _full_slice_tile(sources[i], masks[i], box, view),
                _zoom_tile(_gray_rgb(sources[i]), masks[i], box, view),
                *[_zoom_tile(_gray_rgb(variant[i]), None, box, view) for variant in variants],
                *[_zoom_tile(_difference_colours(ds[n], scale_model), masks[i], box, view) for ds in differences],
            ]
        )

    # 3. The sheet: title, headers, rows, colour key
    tile_h = max(t.size[1] for row in tiles_per_row for t in row)
    label_w = 72
    width = max(label_w + TILE * len(headers), 560)
    top = TITLE_HEIGHT + LABEL_HEIGHT
    sheet = Image.new("RGB", (width, top + (tile_h + LABEL_HEIGHT) * len(rows) + KEY_HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 2), f"prompt: {prompt!r}" if prompt is not None else "prompt: -", fill=TEXT_COLOUR)
    window_text = (
        f"window: centre {window[0]:g} {unit}, width {window[1]:g} {unit}".replace("  ", " ")
        if window is not None
        else "window: -"
    )
    orientation = (
        "shown as stored (no patient orientation to turn it by)" if view.plane == AS_STORED
        else f"{view.plane}, radiological view (patient right on the viewer's left)"
    )
    draw.text((4, 18), f"{window_text}; {orientation}", fill=TEXT_COLOUR)
    for column, header in enumerate(headers):
        draw.text((label_w + column * TILE + 4, TITLE_HEIGHT + 2), header, fill=TEXT_COLOUR)
    for row_number, (i, tiles) in enumerate(zip(rows, tiles_per_row)):
        row_top = top + row_number * (tile_h + LABEL_HEIGHT)
        draw.text((4, row_top + tile_h // 2), f"slice {slice_indices[i]}", fill=TEXT_COLOUR)
        for column, tile in enumerate(tiles):
            sheet.paste(tile, (label_w + column * TILE, row_top))
    sheet.paste(_colour_key(width, scale_units, unit if window is not None else "model units"),
                (0, sheet.size[1] - KEY_HEIGHT))
    sheet.save(path)
