"""Size limits checked from headers before any pixel is decoded, so a small file cannot claim gigabytes.

Defaults fit every real scan we know (a 4096-frame whole-body series, a 16k x 16k slide tile); each
can be changed with an environment variable for the process (CLI and server alike).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from medgen.errors import InputError


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    try:
        number = int(value)
    except ValueError:
        raise InputError(None, f"environment variable {name} must be a whole number, got {value!r}") from None
    if number < 1:
        raise InputError(None, f"environment variable {name} must be at least 1, got {number}")
    return number


@dataclass(frozen=True)
class SizeLimits:
    """Largest image side (pixels), frame/slice count and voxel count (slices x rows x columns x samples)."""

    max_side: int = 16384  # MEDGEN_MAX_IMAGE_SIDE
    max_frames: int = 4096  # MEDGEN_MAX_FRAMES
    max_voxels: int = 1 << 30  # MEDGEN_MAX_VOXELS (1 Gi voxels: 2 GiB at 16 bits)

    @classmethod
    def from_environment(cls) -> "SizeLimits":
        return cls(
            max_side=_env_int("MEDGEN_MAX_IMAGE_SIDE", cls.max_side),
            max_frames=_env_int("MEDGEN_MAX_FRAMES", cls.max_frames),
            max_voxels=_env_int("MEDGEN_MAX_VOXELS", cls.max_voxels),
        )

    def check(self, source, *, rows: int, columns: int, frames: int = 1, samples: int = 1) -> None:
        """Refuse a header whose claimed size is over a limit (or not a positive size at all)."""
        if rows < 1 or columns < 1 or frames < 1 or samples < 1:
            raise InputError(source, f"header claims an empty image ({rows} x {columns}, {frames} frame(s))",
                             reason="damaged")
        if max(rows, columns) > self.max_side:
            raise InputError(source, f"image of {rows} x {columns} pixels is over the limit of {self.max_side} per "
                             "side (MEDGEN_MAX_IMAGE_SIDE)", reason="too-large")
        if frames > self.max_frames:
            raise InputError(source, f"{frames} frames/slices are over the limit of {self.max_frames} "
                             "(MEDGEN_MAX_FRAMES)", reason="too-large")
        voxels = rows * columns * frames * samples
        if voxels > self.max_voxels:
            raise InputError(source, f"{voxels} voxels are over the limit of {self.max_voxels} (MEDGEN_MAX_VOXELS)",
                             reason="too-large")


def check_size(source, *, rows: int, columns: int, frames: int = 1, samples: int = 1) -> None:
    """Check a claimed size against the limits in force for this process."""
    SizeLimits.from_environment().check(source, rows=rows, columns=columns, frames=frames, samples=samples)


# Farthest a position, and largest a spacing, may be in mm (1 km): beyond it a header value is damage,
# not anatomy, and arithmetic on it overflows
MAX_COORDINATE_MM = 1e6
# Smallest |determinant| of the unit voxel axes: below it they lie (almost) in one plane
_MIN_AXES_VOLUME = 1e-6


def check_geometry(source, ijk_to_lps, what: str) -> None:
    """Refuse an ijk-to-LPS matrix that is not finite or reaches beyond MAX_COORDINATE_MM, as damaged."""
    import numpy as np

    matrix = np.asarray(ijk_to_lps, dtype=np.float64)
    if not np.isfinite(matrix).all() or np.abs(matrix).max() > MAX_COORDINATE_MM:
        raise InputError(source, f"{what} geometry (position, spacing, orientation) is not finite or lies beyond "
                         f"{MAX_COORDINATE_MM:g} mm", reason="damaged")
    axes = matrix[:3, :3]
    lengths = np.linalg.norm(axes, axis=0)
    # Axes of no length, or lying in one plane, map no voxel to a point of its own: nothing can be placed on them
    if lengths.min() == 0 or abs(np.linalg.det(axes / lengths)) < _MIN_AXES_VOLUME:
        raise InputError(source, f"{what} geometry is degenerate: its voxel axes (orientation and spacing) have "
                         "zero length or are parallel", reason="damaged")
