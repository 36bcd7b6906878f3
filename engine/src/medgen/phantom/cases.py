"""One phantom case: a small CT volume with one lesion, its healthy twin, and the lesion's ground truth.

The twin has the same anatomy and the same scanner noise; only the lesion is missing. The benchmark
and the demo inpaint into the twin under the true lesion mask, so whatever appears there came from
the prompt and not from the source.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medgen.phantom.anatomy import (
    Body,
    Grid,
    Tissue,
    blur,
    lesion_site,
    object_slice,
    paint_lesion,
    random_body,
    scan,
)
from medgen.phantom.lesions import LESION_SPECS, Lesion, LesionType, random_lesion

HU_MIN, HU_MAX = -1024, 3071  # what 12-bit stored values with intercept -1024 can hold
DEFAULT_SLICES = 8
DEFAULT_SLICE_THICKNESS_MM = 5.0


@dataclass
class PhantomCase:
    """A case's volumes (slice, row, column) in integer HU and everything known about its lesion."""

    case_id: str
    seed: tuple[int, ...]
    body: Body
    grid: Grid
    slice_thickness_mm: float
    z_mm: np.ndarray  # (slices,) height of each slice
    objects: np.ndarray  # (slices, rows, cols) true healthy attenuation before the scanner, float32
    labels: np.ndarray  # (slices, rows, cols) Tissue labels
    hu: np.ndarray  # (slices, rows, cols) int16: the scan with the lesion
    healthy_hu: np.ndarray  # (slices, rows, cols) int16: the same scan without it
    lesion: Lesion
    organ: Tissue
    lesion_mask: np.ndarray  # (slices, rows, cols) bool: the lesion's footprint

    @property
    def lesion_type(self) -> LesionType:
        return self.lesion.lesion_type

    @property
    def spacing(self) -> tuple[float, float, float]:
        return (self.slice_thickness_mm, self.grid.spacing_mm, self.grid.spacing_mm)

    @property
    def ijk_to_lps(self) -> np.ndarray:
        """(column, row, slice, 1) -> LPS mm; the image centre is at x = y = 0."""
        s = self.grid.spacing_mm
        matrix = np.diag([s, s, self.slice_thickness_mm, 1.0])
        matrix[:3, 3] = (-(self.grid.cols - 1) / 2.0 * s, -(self.grid.rows - 1) / 2.0 * s, float(self.z_mm[0]))
        return matrix

    @property
    def lesion_slices(self) -> list[int]:
        return [int(k) for k in np.nonzero(self.lesion_mask.any(axis=(1, 2)))[0]]


def make_case(
    seed: int | tuple[int, ...],
    lesion_type: LesionType | str,
    *,
    case_id: str = "case-001",
    num_slices: int = DEFAULT_SLICES,
    grid: Grid | None = None,
    slice_thickness_mm: float = DEFAULT_SLICE_THICKNESS_MM,
) -> PhantomCase:
    """Draw one case; the same seed and type give the same case, voxel for voxel."""
    lesion_type = LesionType(lesion_type)
    grid = grid or Grid()
    seed = tuple(np.atleast_1d(seed).tolist())
    rng = np.random.default_rng(list(seed))
    z = (np.arange(num_slices) - (num_slices - 1) / 2.0) * slice_thickness_mm
    for _attempt in range(100):
        body = random_body(rng)
        slices = [object_slice(body, float(zk), grid) for zk in z]
        objects = np.stack([hu for hu, _ in slices])
        labels = np.stack([lab for _, lab in slices])
        organ = Tissue.LIVER if rng.random() < 0.75 else Tissue.SPLEEN
        spec = LESION_SPECS[lesion_type]
        radius = float(rng.uniform(*spec.radius_mm))
        extent = radius * (2.2 if spec.spikes[1] else 1.0)  # spicules reach about one radius further
        middle = num_slices // 2
        site = lesion_site(labels[middle], organ, extent, grid, rng)
        if site is not None:
            break
    else:  # pragma: no cover - a 128-pixel body always has room in the liver
        raise RuntimeError(f"no room for a {lesion_type.value} lesion in case {seed}")
    # The lesion sits near the middle slice, so it spans several slices of the volume.
    center_z = float(z[middle] + rng.uniform(-0.4, 0.4) * slice_thickness_mm)
    lesion = random_lesion(lesion_type, (site[0], site[1], center_z), rng, radius_mm=radius)
    with_lesion = objects.copy()
    mask = np.stack([paint_lesion(with_lesion[k], lesion, float(z[k]), grid) for k in range(num_slices)])
    blurred, noise = scan(objects, body, rng)
    healthy = _to_stored_range(blurred + noise)
    sick = _to_stored_range(blur(with_lesion, body) + noise)
    return PhantomCase(
        case_id=case_id,
        seed=seed,
        body=body,
        grid=grid,
        slice_thickness_mm=slice_thickness_mm,
        z_mm=z,
        objects=objects.astype(np.float32),
        labels=labels,
        hu=sick,
        healthy_hu=healthy,
        lesion=lesion,
        organ=organ,
        lesion_mask=mask,
    )


def _to_stored_range(hu: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)


def reference_hu(case: PhantomCase, lesion_type: LesionType | None, window: tuple[float, float]) -> float:
    """Mean windowed HU inside the case's mask if the mask held a ``lesion_type`` lesion (None: healthy).

    The lesion is painted at the type's nominal HU into the true anatomy, blurred like the scanner
    and clipped to the window, without noise: it is the value a perfect generator would show in the
    mask after the engine's windowing (so a 700 HU calcification counts as the window's top, and the
    partial-volume rim of a small lesion is accounted for).
    """
    objects = case.objects.astype(np.float64)
    if lesion_type is not None:
        objects = objects.copy()
        objects[case.lesion_mask] = LESION_SPECS[LesionType(lesion_type)].hu
    center, width = window
    seen = np.clip(blur(objects, case.body), center - width / 2.0, center + width / 2.0)
    return float(seen[case.lesion_mask].mean())
