"""Training pairs for the demo model, cropped and resized exactly as the engine crops at inference.

One pair is a model-space crop (the CT soft-tissue window mapped to [-1, 1]) around a mask, and the
lesion type that fills the mask (or none: healthy tissue). Outside the mask every pair shows healthy
tissue, as the engine's input does after a lesion is removed, so the model cannot learn to read the
lesion type from the surroundings; the prompt is the only place it can come from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medgen.imaging.crop import mask_crop_box, resize_image, resize_mask
from medgen.phantom.anatomy import (
    Grid,
    Tissue,
    blur,
    lesion_site,
    object_slice,
    paint_lesion,
    random_body,
    scan,
)
from medgen.phantom.lesions import BASE_TYPES, LesionType, random_lesion

SOFT_TISSUE_WINDOW = (40.0, 400.0)
"""(center, width) in HU: the engine's default CT window, so training sees what inference sees."""

CROP_PADDING_RANGE_PX = (8, 32)
"""Training draws the crop padding from this range (32 is the engine's default), so the model knows
lesions both small in a wide crop and large in a tight one."""
HEALTHY = -1  # lesion-type code of a pair whose mask holds healthy tissue


def hu_to_model(hu: np.ndarray, window: tuple[float, float] = SOFT_TISSUE_WINDOW) -> np.ndarray:
    """HU -> [-1, 1] through a window, clipped: (HU - center) / (width / 2)."""
    center, width = window
    return np.clip((np.asarray(hu, dtype=np.float64) - center) / (width / 2.0), -1.0, 1.0)


def model_to_hu(values: np.ndarray, window: tuple[float, float] = SOFT_TISSUE_WINDOW) -> np.ndarray:
    center, width = window
    return np.asarray(values, dtype=np.float64) * (width / 2.0) + center


@dataclass
class TrainingPairs:
    """N model-space crops with their masks and what fills each mask."""

    images: np.ndarray  # (N, R, R) float16 in [-1, 1]
    masks: np.ndarray  # (N, R, R) bool, the mask as the model receives it
    lesion_types: np.ndarray  # (N,) int: index into BASE_TYPES, or HEALTHY
    organs: np.ndarray  # (N,) int Tissue value
    radii_mm: np.ndarray  # (N,) the lesion's in-plane radius, for size words in prompts

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class LesionDraw:
    """One random slice with a lesion site: what every rendering (CT here, MR and X-ray in
    ``phantom.modalities``) starts from."""

    grid: Grid
    body: object  # anatomy.Body
    z_mm: float
    hu: np.ndarray  # the healthy object slice (HU)
    labels: np.ndarray
    organ: Tissue
    healthy: bool
    type_index: int
    lesion: object  # lesions.Lesion
    with_lesion: np.ndarray  # the object slice with the lesion painted in
    footprint: np.ndarray


def draw_lesion_slice(rng: np.random.Generator, healthy_fraction: float, types=BASE_TYPES) -> LesionDraw | None:
    """A body, a slice, an organ and a lesion in it; None when the draw gave no usable lesion site."""
    grid = Grid(spacing_mm=float(rng.uniform(2.5, 3.1)))
    body = random_body(rng)
    z = float(rng.uniform(-30, 30))
    hu, labels = object_slice(body, z, grid)
    organ = Tissue.LIVER if rng.random() < 0.75 else Tissue.SPLEEN
    healthy = rng.random() < healthy_fraction
    # A healthy pair still needs a lesion-shaped mask: draw the shape from a random type.
    type_index = int(rng.integers(len(types)))
    lesion_type = LesionType(types[type_index])
    probe = random_lesion(lesion_type, (0.0, 0.0, 0.0), rng)
    site = lesion_site(labels, organ, probe.radius_mm, grid, rng)
    if site is None:
        return None
    # Cut the lesion off-centre in z so edge slices (small footprints) are seen too.
    dz = float(rng.uniform(-0.6, 0.6)) * probe.radius_z_mm
    lesion = random_lesion(lesion_type, (site[0], site[1], z + dz), rng, radius_mm=probe.radius_mm)
    with_lesion = hu.copy()
    footprint = paint_lesion(with_lesion, lesion, z, grid)
    if footprint.sum() < 6:
        return None
    return LesionDraw(grid, body, z, hu, labels, organ, healthy, type_index, lesion, with_lesion, footprint)


def crop_pair(rng: np.random.Generator, model_image: np.ndarray, footprint: np.ndarray, resolution: int):
    """The model-space image cropped around the footprint as the engine crops, resized; and the mask."""
    box = mask_crop_box(footprint, int(rng.integers(CROP_PADDING_RANGE_PX[0], CROP_PADDING_RANGE_PX[1] + 1)))
    crop = resize_image(model_image[box.slices].astype(np.float32), (resolution, resolution))
    crop = np.clip(crop, -1.0, 1.0)  # bicubic overshoot next to saturated bone; the model space is [-1, 1]
    return crop, resize_mask(footprint[box.slices], (resolution, resolution))


def make_pair(rng: np.random.Generator, resolution: int, healthy_fraction: float, types=BASE_TYPES):
    """One random CT pair, or None when the draw gave no usable lesion site (the caller draws again)."""
    draw = draw_lesion_slice(rng, healthy_fraction, types)
    if draw is None:
        return None
    blurred_healthy, noise = scan(draw.hu, draw.body, rng)
    image = blurred_healthy + noise
    if not draw.healthy:
        image = np.where(draw.footprint, blur(draw.with_lesion, draw.body) + noise, image)
    crop, crop_mask = crop_pair(rng, hu_to_model(image), draw.footprint, resolution)
    code = HEALTHY if draw.healthy else draw.type_index
    return crop, crop_mask, code, int(draw.organ), draw.lesion.radius_mm


def make_training_pairs(
    count: int, *, seed: int, resolution: int = 64, healthy_fraction: float = 0.2, progress=None
) -> TrainingPairs:
    """``count`` pairs drawn from one seeded stream: the same seed gives the same pairs."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, resolution, resolution), np.float16)
    masks = np.zeros((count, resolution, resolution), bool)
    types = np.zeros(count, np.int64)
    organs = np.zeros(count, np.int64)
    radii = np.zeros(count, np.float32)
    n = 0
    while n < count:
        pair = make_pair(rng, resolution, healthy_fraction)
        if pair is None or not pair[1].any():
            continue
        images[n], masks[n], types[n], organs[n], radii[n] = pair
        n += 1
        if progress is not None:
            progress(1)
    return TrainingPairs(images, masks, types, organs, radii)
