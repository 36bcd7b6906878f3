"""The one in-memory form of a scan: stored values, geometry, and what is needed to write it back."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np


class SourceFormat(str, Enum):
    DICOM = "dicom"
    NIFTI = "nifti"
    NRRD = "nrrd"
    PNG = "png"


@dataclass(frozen=True)
class PixelFormat:
    """How stored values are encoded, so written values can use exactly the source's encoding."""

    bits_allocated: int
    bits_stored: int
    signed: bool  # PixelRepresentation == 1
    photometric: str  # as in the source file, e.g. MONOCHROME2, MONOCHROME1, RGB
    samples_per_pixel: int = 1

    @property
    def stored_min(self) -> int:
        return -(1 << (self.bits_stored - 1)) if self.signed else 0

    @property
    def stored_max(self) -> int:
        return (1 << (self.bits_stored - 1)) - 1 if self.signed else (1 << self.bits_stored) - 1


@dataclass
class Volume:
    """A stack of slices in stored values.

    ``pixels`` has shape (slices, rows, columns) for grayscale and (slices, rows, columns, 3) for
    colour sources; its dtype is the source's (for DICOM the dtype pydicom decodes to). Slice ``k``
    is the k-th position along the slice axis: DICOM slices and frames sorted by position along the
    plane's normal (row x column direction), lowest first, else by InstanceNumber or frame order
    when positions are missing (so a multi-frame file's slice k need not be frame k+1: see
    ``frame_numbers``); the last ITK axis for NIfTI/NRRD. This is the index ``--slice`` takes.
    """

    pixels: np.ndarray
    # (slice, row, column) spacing in millimetres
    spacing: tuple[float, float, float]
    # 4x4 matrix taking (column i, row j, slice k, 1) to patient LPS millimetres
    ijk_to_lps: np.ndarray
    modality: str  # DICOM Modality, "OT" when unknown
    pixel_format: PixelFormat | None  # None for NIfTI/NRRD/PNG: values are kept in the array's dtype
    # per slice: modality value = stored * slope + intercept (ones / zeros where absent)
    rescale_slope: np.ndarray
    rescale_intercept: np.ndarray
    source_format: SourceFormat
    source_paths: list[Path]
    # DICOM only: one dataset per slice for a classic series; for a multi-frame instance the single
    # dataset, with ``frame_numbers`` giving the 1-based frame of each slice
    datasets: list = field(default_factory=list)
    frame_numbers: list[int] | None = None
    # window stored in the source (center, width) in modality values, if any
    source_window: tuple[float, float] | None = None
    # the original image object for NIfTI/NRRD (a SimpleITK image) so it can be written back alike
    itk_image: object | None = None

    def reader_grids(self) -> list[tuple[str, np.ndarray]]:
        """The grids other readers give these same voxels, ``ijk_to_lps`` first.

        ``ijk_to_lps`` steps from slice to slice by the mean step between the first and last slice
        positions, as Slicer 5.8 and later read a series (itk::ImageSeriesReader with
        ForceOrthogonalDirection off); on a gantry-tilted or sheared series that step leaves the plane's
        normal. ITK's default (SimpleITK, Slicer up to 5.6) puts the slice axis on the normal with the
        length of that step as spacing, and nibabel-style affines use the normal with the step's
        component along it; such a grid starts at whichever end slice its reader sorts first. Slice k
        is the same image in all of them, so a mask drawn on any of them means the same voxels.
        """
        grids = [("slice positions (as Slicer 5.8+ reads a series)", self.ijk_to_lps)]
        step = self.ijk_to_lps[:3, 2]
        normal = np.cross(self.ijk_to_lps[:3, 0], self.ijk_to_lps[:3, 1])
        normal /= np.linalg.norm(normal)
        if np.dot(step, normal) < 0:
            normal = -normal
        for name, length in (
            ("plane normal, spacing = slice step length (as ITK/SimpleITK and Slicer 5.6 read a series)",
             float(np.linalg.norm(step))),
            ("plane normal, spacing = slice step along the normal (nibabel-style affine)", float(np.dot(step, normal))),
        ):
            for end, anchor in (("first", 0), ("last", self.num_slices - 1)):
                grid = self.ijk_to_lps.copy()
                grid[:3, 2] = normal * length
                grid[:3, 3] = self.ijk_to_lps[:3, 3] + anchor * (step - grid[:3, 2])  # slice `anchor` in place
                if not any(np.allclose(grid, other, atol=1e-6) for _, other in grids):
                    grids.append((f"{name}, from the {end} slice", grid))
        return grids

    @property
    def num_slices(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def shape2d(self) -> tuple[int, int]:
        return int(self.pixels.shape[1]), int(self.pixels.shape[2])

    @property
    def is_color(self) -> bool:
        return self.pixels.ndim == 4

    @property
    def is_multiframe(self) -> bool:
        return self.frame_numbers is not None

    def modality_values(self, k: int) -> np.ndarray:
        """Slice k in modality units (HU for CT): the input to windowing."""
        stored = self.pixels[k].astype(np.float64)
        return stored * float(self.rescale_slope[k]) + float(self.rescale_intercept[k])
