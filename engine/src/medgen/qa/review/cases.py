"""Cases for a study: lesion-centred crops of real scans (with a lesion mask) and of `medgen inpaint` runs.

Real and synthetic crops are made by the same code with the same window rule, in radiological
orientation, as plain 8-bit PNGs with no text chunks: nothing but the pixels can tell them apart.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from medgen.errors import InputError
from medgen.imaging.intensity import choose_window, modality_gray
from medgen.imaging.masks import read_mask
from medgen.imaging.read import read_volume
from medgen.imaging.volume import Volume
from medgen.qa.images import radiological_view, square_box
from medgen.qa.review.store import Study

CROP_SIDE_PX = 256
FULL_MAX_PX = 512
CROP_PADDING_FRACTION = 0.75
"""Padding around the lesion on each side, as a fraction of its extent (at least 12 pixels)."""


def _png(gray: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def case_images(volume: Volume, image: np.ndarray, mask: np.ndarray, k: int,
                window: tuple[float, float] | None = None) -> tuple[bytes, bytes]:
    """(crop PNG, full-slice PNG) of modality ``image`` (slice k of ``volume``) around ``mask``."""
    if window is not None:
        center, width = window
    else:
        chosen = choose_window(volume, [k])
        center, width = chosen.center, chosen.width
    gray = np.clip((image - (center - width / 2)) / width * 255.0, 0, 255).round().astype(np.uint8)
    view = radiological_view(volume.ijk_to_lps)
    gray, mask = view.apply(gray), view.apply(mask)
    rows, cols = np.nonzero(mask)
    extent = max(int(np.ptp(rows)) + 1, int(np.ptp(cols)) + 1)
    r0, r1, c0, c1 = square_box(mask, padding=max(12, int(extent * CROP_PADDING_FRACTION)), minimum=32)
    crop = Image.fromarray(gray[r0:r1, c0:c1]).resize((CROP_SIDE_PX, CROP_SIDE_PX), Image.Resampling.BICUBIC)
    full = Image.fromarray(gray)
    scale = FULL_MAX_PX / max(full.size)
    full = full.resize((round(full.size[0] * scale), round(full.size[1] * scale)), Image.Resampling.BICUBIC)
    return _png(np.asarray(crop)), _png(np.asarray(full))


def _largest_slice(mask3d: np.ndarray, among: list[int] | None = None) -> int:
    areas = mask3d.reshape(len(mask3d), -1).sum(axis=1)
    candidates = among if among is not None else range(len(mask3d))
    best = max(candidates, key=lambda k: areas[k])
    if areas[best] == 0:
        raise ValueError("empty mask")
    return int(best)


def add_real_case(study: Study, image: str | Path, mask: str | Path, *, segment: str | None = None,
                  label: int | None = None, window: tuple[float, float] | None = None) -> list[str]:
    """One real case: the slice where the lesion mask is largest."""
    volume = read_volume(image)
    mask3d = np.asarray(read_mask(mask, volume, segment=segment, label=label), dtype=bool)
    if not mask3d.any():
        raise InputError(mask, "the mask is empty: nothing to centre a crop on")
    k = _largest_slice(mask3d)
    crop, full = case_images(volume, modality_gray(volume, k), mask3d[k], k, window)
    return [study.add_case(truth="real", origin=f"{image} slice {k}", crop_png=crop, full_png=full)]


def add_run_cases(study: Study, run_dir: str | Path, *, source: str | Path | None = None,
                  window: tuple[float, float] | None = None) -> list[str]:
    """One synthetic case per variant of a run: its inpainted slice where the mask is largest."""
    from medgen.qa.run import load_run

    run = load_run(run_dir, source=source)
    k = _largest_slice(run.mask, run.slices)
    keys = []
    for variant in run.variants:
        crop, full = case_images(run.source, variant.modality_slice(k, run.source), run.mask[k], k, window)
        keys.append(study.add_case(truth="synthetic", origin=f"{run.run_dir} {variant.name} slice {k}",
                                   crop_png=crop, full_png=full))
    return keys
