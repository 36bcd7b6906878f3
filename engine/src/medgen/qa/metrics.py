"""Per-variant figures of a run: intensity inside the lesion and around it, outside-mask identity,
and the synthetic marks found in the written DICOM files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medgen.imaging.crop import dilate_mask
from medgen.imaging.intensity import modality_gray
from medgen.imaging.volume import SourceFormat
from medgen.qa.run import RunData, VariantData

SURROUNDING_RING_MM = 5.0
"""Width of the ring of surrounding tissue, just outside the region the run may change."""


@dataclass(frozen=True)
class RegionStats:
    mean: float
    std: float
    pixels: int

    @classmethod
    def of(cls, values: np.ndarray) -> "RegionStats":
        if values.size == 0:
            return cls(float("nan"), float("nan"), 0)
        return cls(float(values.mean()), float(values.std()), int(values.size))


@dataclass
class MarkCount:
    """How many written files passed one synthetic-DICOM check, and the first problem seen."""

    check: str
    passed: int
    files: int
    problem: str = ""


@dataclass
class VariantFigures:
    name: str
    inside: RegionStats  # under the segment, on the inpainted slices
    surrounding: RegionStats  # the ring around the dilated mask
    outside_identical: int  # stored values equal to the source outside the dilated mask
    outside_total: int
    marks: list[MarkCount] = field(default_factory=list)
    marks_note: str = ""
    extra: dict[str, float] = field(default_factory=dict)  # noise and seam figures, where available

    @property
    def outside_identity(self) -> float:
        return self.outside_identical / self.outside_total if self.outside_total else 1.0

    @property
    def contrast(self) -> float:
        return self.inside.mean - self.surrounding.mean


def surrounding_ring(run: RunData, k: int) -> np.ndarray:
    """Made once per slice and kept on the run: the source and every variant are measured on it."""
    if k not in run.rings:
        spacing = (run.source.spacing[1], run.source.spacing[2])
        run.rings[k] = dilate_mask(run.allowed[k], SURROUNDING_RING_MM, spacing) & ~run.allowed[k]
    return run.rings[k]


def region_values(run: RunData, image_of_slice, region_of_slice) -> np.ndarray:
    parts = [image_of_slice(k)[region_of_slice(k)] for k in run.slices]
    return np.concatenate(parts) if parts else np.zeros(0)


def source_figures(run: RunData) -> VariantFigures:
    """The source's own figures on the same regions: the row every variant is compared with."""
    image = lambda k: modality_gray(run.source, k)  # noqa: E731
    figures = VariantFigures(
        name="source",
        inside=RegionStats.of(region_values(run, image, lambda k: run.mask[k])),
        surrounding=RegionStats.of(region_values(run, image, lambda k: surrounding_ring(run, k))),
        outside_identical=0,
        outside_total=0,
    )
    figures.extra = noise_and_seam_figures(run, image)  # what a perfect paste would reach
    return figures


def variant_figures(run: RunData, variant: VariantData) -> VariantFigures:
    image = lambda k: variant.modality_slice(k, run.source)  # noqa: E731
    identical = total = 0
    for k, j in variant.slice_of_source.items():
        written, source = variant.volume.pixels[j], run.source.pixels[k]
        same = written == source
        if same.ndim == 3:
            same = same.all(axis=-1)
        outside = ~run.allowed[k]
        identical += int((same & outside).sum())
        total += int(outside.sum())
    figures = VariantFigures(
        name=variant.name,
        inside=RegionStats.of(region_values(run, image, lambda k: run.mask[k])),
        surrounding=RegionStats.of(region_values(run, image, lambda k: surrounding_ring(run, k))),
        outside_identical=identical,
        outside_total=total,
    )
    figures.marks, figures.marks_note = synthetic_marks(variant)
    figures.extra = noise_and_seam_figures(run, image)
    return figures


def synthetic_marks(variant: VariantData) -> tuple[list[MarkCount], str]:
    """The checks of `medgen validate` (without dciodvfy) tallied over the variant's DICOM files."""
    from medgen.dicom.validate import CheckStatus, validate_paths

    folder = variant.folder
    if variant.volume.source_format is not SourceFormat.DICOM:
        folder = variant.folder / "dicom"
        if not folder.is_dir():
            return [], "written as the source's format (no DICOM asked for): the file header says SYNTHETIC"
    report = validate_paths([folder], run_dciodvfy=False)
    counts: dict[str, MarkCount] = {}
    for file_report in report.files:
        for result in file_report.checks:
            count = counts.setdefault(result.check, MarkCount(result.check, 0, 0))
            count.files += 1
            if result.status is CheckStatus.PASS:
                count.passed += 1
            elif not count.problem:
                count.problem = f"{result.status.value}: {result.message}"
    return list(counts.values()), f"{len(report.files)} DICOM file(s) in {Path(folder).name}/"


def noise_and_seam_figures(run: RunData, image_of_slice) -> dict[str, float]:
    """Noise std ratio and seam strength ratio (imaging.texture) of the written variant, median over the
    inpainted slices; 1 means the generated region has the surrounding tissue's texture. Empty where the
    engine has no texture module."""
    try:
        from medgen.imaging.texture import measure_texture, median_figures
    except ImportError:
        return {}
    figures = median_figures([
        measure_texture(image_of_slice(k), run.mask[k], run.allowed[k])
        for k in run.slices if run.mask[k].any()
    ])
    return {"noise std ratio": figures.noise_std_ratio, "seam strength ratio": figures.seam_strength_ratio}
