"""Procedural abdominal CT in Hounsfield units: body, fat, organs, spine, ribs, vessels, bowel.

A phantom is drawn in two steps, like a scanner sees a patient: first the true attenuation of
every structure ("object"), then the scanner's blur and noise. Lesions are painted into the object
before the blur, so a case and its healthy twin share the same noise and differ only at the lesion.

Coordinates are millimetres in a body frame: x to the patient's left, y to the back (DICOM LPS),
z up; image column 0 is the patient's right, row 0 the front (radiological convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import ndimage

from medgen.phantom.lesions import Lesion


class Tissue(IntEnum):
    """Labels of the organ map; a lesion may only be placed in LIVER or SPLEEN."""

    AIR = 0
    SUBCUTANEOUS_FAT = 1
    MUSCLE = 2
    VISCERAL_FAT = 3
    LIVER = 4
    SPLEEN = 5
    KIDNEY = 6
    VESSEL = 7
    BONE = 8
    BOWEL = 9
    GAS = 10
    CSF = 11


HU = {
    Tissue.AIR: -1000.0,
    Tissue.SUBCUTANEOUS_FAT: -100.0,
    Tissue.MUSCLE: 50.0,
    Tissue.VISCERAL_FAT: -90.0,
    Tissue.LIVER: 60.0,
    Tissue.SPLEEN: 50.0,
    Tissue.KIDNEY: 35.0,
    Tissue.VESSEL: 45.0,
    Tissue.BONE: 700.0,
    Tissue.BOWEL: 30.0,
    Tissue.GAS: -1000.0,
    Tissue.CSF: 10.0,
}
"""Typical unenhanced values; each body draws small per-organ offsets around them."""

LESION_ORGANS = (Tissue.LIVER, Tissue.SPLEEN)


@dataclass(frozen=True)
class Grid:
    """The pixel grid of one axial slice: size and spacing, centred on the body frame's origin."""

    rows: int = 128
    cols: int = 128
    spacing_mm: float = 2.8

    def coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) millimetres of every pixel centre, each of shape (rows, cols)."""
        y = (np.arange(self.rows) - (self.rows - 1) / 2.0) * self.spacing_mm
        x = (np.arange(self.cols) - (self.cols - 1) / 2.0) * self.spacing_mm
        return np.meshgrid(x, y)


@dataclass(frozen=True)
class Body:
    """The random make-up of one patient; all shapes follow from these numbers and z."""

    half_width: float  # body ellipse semi-axes (mm)
    half_depth: float
    fat_mm: float  # subcutaneous fat thickness
    wall_mm: float  # abdominal wall muscle thickness
    organ_hu: dict  # Tissue -> HU for this patient
    liver_shift: tuple[float, float]
    spleen_shift: tuple[float, float]
    liver_scale: float
    spleen_scale: float
    rib_angles: tuple[float, ...]
    bowel_loops: tuple[tuple[float, float, float, int], ...]  # (x, y, radius, content: 0 gas, 1 fluid, 2 mixed)
    vessels: tuple[tuple[float, float, float], ...]  # hepatic vessels (x, y, radius) relative to the liver
    noise_hu: float  # scanner noise standard deviation
    blur_px: float  # scanner point-spread (Gaussian sigma, pixels)


def random_body(rng: np.random.Generator) -> Body:
    """Draw one patient. Sizes fit a 128 x 2.8 mm field of view."""
    organ_hu = {tissue: value for tissue, value in HU.items()}
    organ_hu[Tissue.LIVER] = HU[Tissue.LIVER] + rng.uniform(-5, 5)
    organ_hu[Tissue.SPLEEN] = HU[Tissue.SPLEEN] + rng.uniform(-4, 4)
    organ_hu[Tissue.KIDNEY] = HU[Tissue.KIDNEY] + rng.uniform(-4, 4)
    organ_hu[Tissue.MUSCLE] = HU[Tissue.MUSCLE] + rng.uniform(-5, 5)
    organ_hu[Tissue.SUBCUTANEOUS_FAT] = HU[Tissue.SUBCUTANEOUS_FAT] + rng.uniform(-10, 10)
    loops = []
    for _ in range(int(rng.integers(3, 7))):
        loops.append(
            (float(rng.uniform(-40, 70)), float(rng.uniform(-70, -10)), float(rng.uniform(7, 14)), int(rng.integers(0, 3)))
        )
    vessels = tuple(
        (float(rng.uniform(-30, 30)), float(rng.uniform(-30, 30)), float(rng.uniform(2.0, 4.5)))
        for _ in range(int(rng.integers(3, 7)))
    )
    return Body(
        half_width=float(rng.uniform(145, 170)),
        half_depth=float(rng.uniform(105, 125)),
        fat_mm=float(rng.uniform(8, 24)),
        wall_mm=float(rng.uniform(5, 9)),
        organ_hu=organ_hu,
        liver_shift=(float(rng.uniform(-8, 8)), float(rng.uniform(-8, 8))),
        spleen_shift=(float(rng.uniform(-6, 6)), float(rng.uniform(-6, 6))),
        liver_scale=float(rng.uniform(0.9, 1.1)),
        spleen_scale=float(rng.uniform(0.85, 1.15)),
        rib_angles=tuple(float(a) for a in np.sort(rng.uniform(-np.pi, np.pi, int(rng.integers(8, 13))))),
        bowel_loops=tuple(loops),
        vessels=vessels,
        noise_hu=float(rng.uniform(10, 15)),
        blur_px=float(rng.uniform(0.5, 0.8)),
    )


def _ellipse(x, y, cx, cy, ax, ay, angle=0.0) -> np.ndarray:
    cos_a, sin_a = np.cos(angle), np.sin(angle)
    u = cos_a * (x - cx) + sin_a * (y - cy)
    v = -sin_a * (x - cx) + cos_a * (y - cy)
    return (u / ax) ** 2 + (v / ay) ** 2 <= 1.0


def object_slice(body: Body, z_mm: float, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """True attenuation (HU, float) and tissue labels of one axial slice at height z, before the scanner.

    z runs over roughly [-40, 40] mm: organs shrink and shift a little with z so neighbouring slices
    differ the way real ones do.
    """
    x, y = grid.coordinates()
    labels = np.full((grid.rows, grid.cols), Tissue.AIR, dtype=np.uint8)
    t = float(np.clip(z_mm / 60.0, -1.0, 1.0))  # -1 low ... +1 high
    a, b = body.half_width, body.half_depth

    def paint(region, tissue):
        labels[region] = tissue

    # Body outline, fat layer, muscle wall, then the visceral space
    cy = 5.0
    paint(_ellipse(x, y, 0, cy, a, b), Tissue.SUBCUTANEOUS_FAT)
    paint(_ellipse(x, y, 0, cy, a - body.fat_mm, b - body.fat_mm), Tissue.MUSCLE)
    inner_a, inner_b = a - body.fat_mm - body.wall_mm, b - body.fat_mm - body.wall_mm
    visceral = _ellipse(x, y, 0, cy, inner_a, inner_b)
    paint(visceral, Tissue.VISCERAL_FAT)

    # Ribs sit in the muscle wall, away from the front midline
    rib_radius = 1.0 - (body.fat_mm + 0.5 * body.wall_mm) / min(a, b)
    for angle in body.rib_angles:
        if abs(np.sin(angle) + 1.0) < 0.35:  # no ribs in the front midline
            continue
        rx, ry = a * rib_radius * np.cos(angle), cy + b * rib_radius * np.sin(angle)
        paint(_ellipse(x, y, rx, ry, 5.5, 4.0, angle), Tissue.BONE)

    # Spine: vertebral body, canal, posterior arch; paraspinal muscles beside it
    spine_y = cy + b - body.fat_mm - 55.0
    for side in (-1, 1):
        paint(_ellipse(x, y, side * 32.0, spine_y + 32.0, 24.0, 20.0), Tissue.MUSCLE)
    paint(_ellipse(x, y, 0, spine_y, 19.0, 16.0), Tissue.BONE)
    paint(_ellipse(x, y, 0, spine_y + 26.0, 12.0, 10.0), Tissue.BONE)
    paint(_ellipse(x, y, 0, spine_y + 38.0, 3.5, 12.0), Tissue.BONE)
    paint(_ellipse(x, y, 0, spine_y + 25.0, 7.0, 6.0), Tissue.CSF)

    # Liver (right lobe plus a left lobe crossing the midline in front), spleen, kidneys
    s = body.liver_scale * (1.0 + 0.08 * t)
    lx, ly = -0.45 * inner_a + body.liver_shift[0], cy - 0.05 * inner_b + body.liver_shift[1]
    liver = _ellipse(x, y, lx, ly, 0.48 * inner_a * s, 0.72 * inner_b * s, 0.25)
    liver |= _ellipse(x, y, lx + 0.42 * inner_a, ly - 0.45 * inner_b, 0.35 * inner_a * s * (0.6 + 0.4 * (t + 1) / 2), 0.2 * inner_b * s, -0.2)
    paint(liver & visceral, Tissue.LIVER)
    ss = body.spleen_scale * (1.0 - 0.1 * t)
    sx, sy = 0.62 * inner_a + body.spleen_shift[0], cy + 0.3 * inner_b + body.spleen_shift[1]
    paint(_ellipse(x, y, sx, sy, 0.2 * inner_a * ss, 0.38 * inner_b * ss, -0.6) & visceral, Tissue.SPLEEN)
    kidney_size = 1.0 - 0.5 * max(t, 0.0) ** 2
    for side in (-1, 1):
        kx, ky = side * 0.42 * inner_a, spine_y - 5.0
        paint(_ellipse(x, y, kx, ky, 22.0 * kidney_size, 30.0 * kidney_size, side * 0.5), Tissue.KIDNEY)
        paint(_ellipse(x, y, kx - side * 8.0, ky, 5.0 * kidney_size, 9.0 * kidney_size, side * 0.5), Tissue.VISCERAL_FAT)

    # Vessels: aorta left-front of the spine, IVC to its right, hepatic vessels in the liver
    paint(_ellipse(x, y, 12.0, spine_y - 28.0, 11.0, 11.0), Tissue.VESSEL)
    paint(_ellipse(x, y, -22.0, spine_y - 28.0, 12.0, 9.0), Tissue.VESSEL)
    for vx, vy, vr in body.vessels:
        vessel = _ellipse(x, y, lx + vx + 6.0 * t, ly + vy, vr, vr)
        paint(vessel & (labels == Tissue.LIVER), Tissue.VESSEL)

    # Bowel loops in the front of the abdomen: wall, then gas, fluid or an air-fluid level
    for bx, by, br, content in body.bowel_loops:
        loop = _ellipse(x, y, bx + 4.0 * t, by, br, br * 0.85) & (labels == Tissue.VISCERAL_FAT)
        paint(loop, Tissue.BOWEL)
        lumen = _ellipse(x, y, bx + 4.0 * t, by, br - 2.5, br * 0.85 - 2.5) & loop
        if content == 0:
            paint(lumen, Tissue.GAS)
        elif content == 2:
            paint(lumen & (y < by), Tissue.GAS)

    hu = np.zeros(labels.shape, dtype=np.float64)
    for tissue in Tissue:
        hu[labels == tissue] = body.organ_hu[tissue]
    # Bone: dense cortex, lighter marrow inside thick bone
    bone = labels == Tissue.BONE
    marrow = ndimage.binary_erosion(bone, iterations=2)
    hu[marrow] = 250.0
    return hu, labels


def paint_lesion(hu: np.ndarray, lesion: Lesion, z_mm: float, grid: Grid) -> np.ndarray:
    """Paint a lesion into an object slice (in place) and return its footprint in that slice."""
    x, y = grid.coordinates()
    footprint = lesion.footprint(x, y, z_mm)
    hu[footprint] = lesion.hu
    return footprint


def scan(objects: np.ndarray, body: Body, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The scanner: blur each slice by its point-spread, then add slightly correlated noise.

    Returns (blurred object, noise) so callers can add the same noise to a healthy and a lesion
    version of one object; the image is ``blurred + noise``.
    """
    objects = np.asarray(objects, dtype=np.float64)
    sigma = (0, body.blur_px, body.blur_px) if objects.ndim == 3 else body.blur_px
    blurred = ndimage.gaussian_filter(objects, sigma=sigma)
    noise = ndimage.gaussian_filter(rng.standard_normal(objects.shape), sigma=(0, 0.6, 0.6) if objects.ndim == 3 else 0.6)
    noise *= body.noise_hu / noise.std()
    return blurred, noise


def blur(objects: np.ndarray, body: Body) -> np.ndarray:
    """The scanner's blur alone (for re-rendering a lesion into an existing noise field)."""
    sigma = (0, body.blur_px, body.blur_px) if np.ndim(objects) == 3 else body.blur_px
    return ndimage.gaussian_filter(np.asarray(objects, dtype=np.float64), sigma=sigma)


def lesion_site(
    labels: np.ndarray, organ: Tissue, radius_mm: float, grid: Grid, rng: np.random.Generator
) -> tuple[float, float] | None:
    """A random (x, y) in mm where a lesion of this radius lies inside the organ with a margin."""
    inside = labels == organ
    if not inside.any():
        return None
    depth_mm = ndimage.distance_transform_edt(inside) * grid.spacing_mm
    candidates = np.argwhere(depth_mm >= radius_mm * 1.15 + 3.0)
    if len(candidates) == 0:
        return None
    row, col = candidates[rng.integers(len(candidates))]
    x, y = grid.coordinates()
    return float(x[row, col]), float(y[row, col])
