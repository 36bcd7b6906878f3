"""A contact sheet for visual QA: source, mask outline, each variant and its difference map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

MAX_PREVIEW_ROWS = 8
TILE = 192
LABEL_HEIGHT = 16


def _to_uint8(model_space: np.ndarray) -> np.ndarray:
    return np.clip((model_space + 1.0) * 127.5, 0, 255).round().astype(np.uint8)


def _tile(rgb: np.ndarray) -> Image.Image:
    image = Image.fromarray(rgb, mode="RGB")
    scale = TILE / max(image.size)
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    return image.resize(size, Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR)


def _gray_rgb(model_space: np.ndarray) -> np.ndarray:
    gray = _to_uint8(model_space)
    return np.stack([gray] * 3, axis=-1)


def _outline_rgb(model_space: np.ndarray, mask: np.ndarray) -> np.ndarray:
    rgb = _gray_rgb(model_space)
    edge = mask & ~ndimage.binary_erosion(mask)
    rgb[edge] = (255, 40, 40)
    return rgb


def _difference_rgb(difference: np.ndarray) -> np.ndarray:
    """Signed difference in model space: red brighter than the source, blue darker, black unchanged."""
    scale = max(float(np.abs(difference).max()), 1e-6)
    magnitude = np.clip(np.abs(difference) / scale * 255.0, 0, 255).astype(np.uint8)
    rgb = np.zeros(difference.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = np.where(difference > 0, magnitude, 0)
    rgb[..., 2] = np.where(difference < 0, magnitude, 0)
    return rgb


def write_preview(
    path: Path,
    *,
    slice_indices: list[int],
    sources: list[np.ndarray],
    masks: list[np.ndarray],
    variants: list[list[np.ndarray]],
) -> None:
    """Write ``preview.png``: one row per inpainted slice (at most ``MAX_PREVIEW_ROWS``, evenly chosen).

    ``sources[i]`` and ``variants[v][i]`` are model-space slices in [-1, 1] (as the model saw them,
    after writing back to stored values); ``masks[i]`` the boolean mask of that slice.
    """
    rows = list(range(len(slice_indices)))
    if len(rows) > MAX_PREVIEW_ROWS:
        rows = sorted({round(x) for x in np.linspace(0, len(rows) - 1, MAX_PREVIEW_ROWS)})
    headers = ["source", "mask"] + [f"variant {v + 1:02d}" for v in range(len(variants))]
    headers += [f"diff {v + 1:02d}" for v in range(len(variants))]
    tiles_per_row = [
        [
            _tile(_gray_rgb(sources[i])),
            _tile(_outline_rgb(sources[i], masks[i])),
            *[_tile(_gray_rgb(variant[i])) for variant in variants],
            *[_tile(_difference_rgb(variant[i] - sources[i])) for variant in variants],
        ]
        for i in rows
    ]
    tile_h = max(t.size[1] for row in tiles_per_row for t in row)
    label_w = 72
    sheet = Image.new(
        "RGB",
        (label_w + TILE * len(headers), LABEL_HEIGHT + (tile_h + LABEL_HEIGHT) * len(rows)),
        (24, 24, 24),
    )
    draw = ImageDraw.Draw(sheet)
    for column, header in enumerate(headers):
        draw.text((label_w + column * TILE + 4, 2), header, fill=(230, 230, 230))
    for row_number, (i, tiles) in enumerate(zip(rows, tiles_per_row)):
        top = LABEL_HEIGHT + row_number * (tile_h + LABEL_HEIGHT)
        draw.text((4, top + tile_h // 2), f"slice {slice_indices[i]}", fill=(230, 230, 230))
        for column, tile in enumerate(tiles):
            sheet.paste(tile, (label_w + column * TILE, top))
    sheet.save(path)
