"""`medgen bench quality`: does the model put the prompted lesion under the mask, and only there?

Each held-out phantom case is written as DICOM; its healthy twin is inpainted under the true lesion
mask through the whole engine (`Inpainter`: read, window, crop, generate, paste, write), once per
lesion-type prompt, and the written series are read back and measured:

- prompt fidelity: the share of outputs whose mean windowed HU inside the mask is nearest to the
  prompted type's ground truth, among the prompted type, the four base types and unchanged healthy
  tissue. Ground truth is what a perfect generator would show after the engine's window: the type's
  nominal HU painted into the case's true anatomy under the mask, blurred like the scanner, clipped to
  the window, averaged over the mask (`cases.reference_hu`). So a calcification counts at the window's
  top (240 HU), and a small lesion's partial-volume rim is accounted for.
- mask adherence: Dice between the mask and the voxels whose windowed HU changed by more than
  ``change_threshold_hu`` (about twice the phantom noise, so re-drawn noise does not count).
- outside-mask identity: the share of stored values outside the dilated mask that are bit-identical
  to the source, over the whole written series. Must be 100%.
- diversity: mean absolute windowed-HU difference inside the mask between variants of other seeds.
- baseline: the same cases with the prompt left empty (the model's "healthy" prompt); its fidelity
  is measured against the same base types, so it shows what the prompt adds.
- border irregularity: `lesions.border_irregularity` (1 - solidity) of the generated lesion on the
  true lesion's largest slice. The lesion there is the largest connected part of the inpainted
  (dilated) region whose windowed HU, smoothed by a 0.7 px Gaussian, differs from the median source
  HU under that region by more than ``lesion_threshold_hu`` (15 HU: the spiculated type is only
  about 20 HU below liver, so the Dice threshold of 25 HU would miss it). On ground truth (the
  lesion scan itself) this gives about 0.27 for spiculated masses and < 0.2 for the base types,
  a little below the mask's own values because thin faint spicules fall under the threshold.

- consistency across slices, on the outputs prompted with the case's own type (ground truth exists):
  the adjacent-slice difference inside the lesion (mean |HU(k) - HU(k+1)| over the mask on both
  slices, windowed HU) of the output over the same on the true lesion scan (goal [0.7, 1.4]), and the
  Pearson correlation of the generated lesion's per-slice area (voxels changed by more than
  ``change_threshold_hu``) with the mask's per-slice area (goal >= 0.9). Measured with the engine's
  slice consistency setting (off by default) and, in one more run per case with the same seeds, the
  other one (``compare_slice_consistency``), so the table shows what the smoothing changes.

``adapters``/``token`` are passed into the prompted rows' `InpaintRequest`s (the same cases, prompts
and seeds); with ``token`` set the spiculated row is prompted ``"<token> mass"`` (how
`medgen train textual-inversion --phantom-spiculated` trains it). Once loaded the adapters stay in
the model, so the baseline row runs with them too. ``mask_shape="disk"`` inpaints each lesion
slice under a round disk around the lesion (its farthest pixel from the centroid + 2 px) instead of
the true mask, so the border's shape has to come from the model, not from the mask.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pydicom
from scipy import ndimage

from medgen.imaging.crop import blend_region
from medgen.phantom.cases import make_case, reference_hu
from medgen.phantom.lesions import (
    BASE_TYPES,
    HELD_OUT_TYPES,
    LESION_SPECS,
    LesionType,
    border_irregularity,
    largest_slice,
)
from medgen.phantom.model import (
    DEMO_CROP_PADDING_PX,
    DEMO_GUIDANCE_SCALE,
    DEMO_STEPS,
    resolve_model_path,
)
from medgen.phantom.series import RESCALE_INTERCEPT, SOFT_TISSUE_WINDOW, write_case, write_seg_nrrd

BENCH_CASE_SEED = 1000
"""Bench cases come from `make_case((1000, i), ...)`, a stream training never draws from."""
ALL_TYPES = (*BASE_TYPES, LesionType.SPICULATED)
BASELINE = "baseline"
GOALS = {"fidelity": 0.90, "dice": 0.80, "identity": 1.0}
ADJACENT_RATIO_GOAL = (0.7, 1.4)
AREA_CORRELATION_GOAL = 0.9


@dataclass
class QualitySettings:
    """One bench run; the defaults are the numbers reported in PHANTOM.md."""

    cases: int = 10
    seed: int = BENCH_CASE_SEED
    variants: int = 2
    num_inference_steps: int = DEMO_STEPS
    guidance_scale: float = DEMO_GUIDANCE_SCALE
    crop_padding_px: int = DEMO_CROP_PADDING_PX
    mask_dilate_mm: float = 2.0  # the engine's default
    mask_blur_px: float = 4.0  # the engine's default
    change_threshold_hu: float = 25.0
    types: tuple[str, ...] = tuple(t.value for t in ALL_TYPES)
    baseline: bool = True
    model: str | None = None  # None: the shipped demo model
    device: str = "cpu"
    adapters: tuple[str, ...] = ()  # "PATH[:WEIGHT]" each, passed to the prompted rows' requests
    token: str | None = None  # a textual inversion's token; prompts the spiculated row "<token> mass"
    mask_shape: str = "lesion"  # "lesion": the true mask; "disk": a round disk around it
    lesion_threshold_hu: float = 15.0
    case_types: tuple[str, ...] | None = None  # the cases' own lesion types, in turn (None: all five)
    controlnet: str | None = None  # "PATH[:SCALE]", for every row (the baseline too)
    control_from: str = "mask-edges"
    match_noise: bool = True  # the engine's noise texture matching (generate.noise)
    slice_consistency: bool = False  # the engine's smoothing along the slice axis (generate.slice_consistency)
    compare_slice_consistency: bool = True  # one more run per case with the other slice consistency setting
    cache_interval: int = 1  # the whole UNet every N-th step only (generate.feature_cache; 1: every step)


@dataclass
class Output:
    """The measurements of one generated variant."""

    case_id: str
    case_type: str
    prompt_type: str
    prompt: str
    seed: int
    mean_hu: float
    nearest: str
    dice: float
    identical: int
    outside: int
    irregularity: float = float("nan")
    # 3D figures, only where the prompt is the case's own type (else NaN)
    adjacent_diff_hu: float = float("nan")
    truth_adjacent_diff_hu: float = float("nan")
    area_correlation: float = float("nan")
    slice_consistency: bool = False


@dataclass
class Row:
    """One line of the table: all outputs of one prompt type."""

    prompt_type: str
    prompt: str
    n: int
    fidelity: float
    mean_hu: float
    truth_hu: float
    dice: float
    identity: float
    diversity_hu: float
    irregularity: float = float("nan")


@dataclass
class QualityReport:
    settings: QualitySettings
    rows: list[Row]
    outputs: list[Output] = field(default_factory=list)
    seconds: float = 0.0
    # outputs of the extra runs with the other slice consistency setting (3D figures only)
    consistency_other: list[Output] = field(default_factory=list)

    def consistency(self) -> dict[str, dict[str, float]]:
        """3D figures of the table's outputs and of the extra runs, keyed "on" and "off" by their own
        slice consistency setting."""
        main = [o for o in self.outputs if o.prompt_type == o.case_type]
        label = "on" if self.settings.slice_consistency else "off"
        figures = {label: consistency_figures(main)}
        if self.consistency_other:
            figures["off" if self.settings.slice_consistency else "on"] = consistency_figures(self.consistency_other)
        return figures

    def row(self, prompt_type: str) -> Row:
        return next(r for r in self.rows if r.prompt_type == prompt_type)

    @property
    def base_rows(self) -> list[Row]:
        base = {t.value for t in BASE_TYPES}
        return [r for r in self.rows if r.prompt_type in base]

    @property
    def identity(self) -> float:
        """Identity over every output of every row, baseline included."""
        outside = sum(o.outside for o in self.outputs)
        return sum(o.identical for o in self.outputs) / outside if outside else 1.0

    def base_summary(self) -> dict[str, float]:
        rows = self.base_rows
        weights = np.array([r.n for r in rows], dtype=float)
        if not rows:
            return {}
        return {
            "fidelity": float(np.average([r.fidelity for r in rows], weights=weights)),
            "dice": float(np.average([r.dice for r in rows], weights=weights)),
            "diversity_hu": float(np.average([r.diversity_hu for r in rows], weights=weights)),
        }

    def goals_met(self) -> dict[str, bool]:
        summary = self.base_summary()
        return {
            "fidelity": summary.get("fidelity", 0.0) >= GOALS["fidelity"],
            "dice": summary.get("dice", 0.0) >= GOALS["dice"],
            "identity": self.identity >= GOALS["identity"],
            "diversity": summary.get("diversity_hu", 0.0) > 0.0,
        }

    def to_json(self) -> dict:
        return {
            "settings": asdict(self.settings),
            "rows": [asdict(r) for r in self.rows],
            "base_types": self.base_summary(),
            "identity": self.identity,
            "goals": GOALS,
            "goals_met": self.goals_met(),
            "seconds": self.seconds,
            "outputs": [asdict(o) for o in self.outputs],
            "consistency": self.consistency(),
            "consistency_goals": {"adjacent_ratio": ADJACENT_RATIO_GOAL, "area_correlation": AREA_CORRELATION_GOAL},
            "consistency_other_outputs": [asdict(o) for o in self.consistency_other],
        }


def run_quality_bench(settings: QualitySettings, work_dir: Path | None = None, progress=None) -> QualityReport:
    """Write the cases, run every prompt through the engine, read the results back and measure them."""
    from medgen.api import Inpainter

    # 1. Check inputs
    types = [LesionType(t) for t in settings.types]
    if settings.cases < 1:
        raise ValueError(f"cases must be at least 1, got {settings.cases}")
    if settings.mask_shape not in ("lesion", "disk"):
        raise ValueError(f"mask_shape must be 'lesion' or 'disk', got {settings.mask_shape!r}")
    if settings.variants < 2:
        raise ValueError(f"variants must be at least 2 to measure diversity, got {settings.variants}")
    start = time.perf_counter()
    model_path = resolve_model_path(settings.model)  # None or "demo": the shipped model
    inpainter = Inpainter(model_path, device=settings.device)
    with tempfile.TemporaryDirectory(prefix="medgen-quality-") as scratch:
        root = Path(work_dir) if work_dir is not None else Path(scratch)
        outputs: list[Output] = []
        consistency_other: list[Output] = []
        truths: dict[str, list[float]] = {t.value: [] for t in types}
        diversity: dict[str, list[float]] = {t.value: [] for t in types} | {BASELINE: []}
        compare = settings.compare_slice_consistency
        total = settings.cases * (len(types) + int(settings.baseline) + int(compare))
        done = 0
        for i in range(settings.cases):
            # 2. A held-out case, its types cycling so every mask shape is seen
            case_types = [LesionType(t) for t in settings.case_types] if settings.case_types else ALL_TYPES
            case_type = case_types[i % len(case_types)]
            case = make_case((settings.seed, i), case_type, case_id=f"case-{i + 1:03d}")
            files = write_case(case, root / case.case_id)
            references = {t.value: reference_hu(case, t, SOFT_TISSUE_WINDOW) for t in ALL_TYPES}
            references["healthy"] = reference_hu(case, None, SOFT_TISSUE_WINDOW)
            mask_path = files.seg_nrrd
            if settings.mask_shape == "disk":
                case_disk = dataclasses.replace(case, lesion_mask=disk_mask(case.lesion_mask))
                mask_path = write_seg_nrrd(case_disk, root / case.case_id / "disk.seg.nrrd")
                dilated = _dilated(case_disk.lesion_mask, settings.mask_dilate_mm, case.spacing)
            else:
                dilated = _dilated(case.lesion_mask, settings.mask_dilate_mm, case.spacing)
            source_stored = read_series_stored(files.healthy_dir)
            # 3. One engine run per prompt type, plus the unprompted baseline
            runs = [(t.value, _prompt(t, settings.token)) for t in types]
            if settings.baseline:
                runs.append((BASELINE, ""))
            for prompt_type, prompt in runs:
                seeds = [settings.seed * 1000 + i * 10 + v for v in range(settings.variants)]
                if prompt:
                    variants = _run_engine(
                        inpainter, files, mask_path, prompt, prompt_type, root / case.case_id, seeds, settings
                    )
                else:
                    variants = _run_unprompted(inpainter, files, mask_path, seeds, settings)
                candidates = _candidates(prompt_type, references)
                for stored, seed in zip(variants, seeds):
                    outputs.append(
                        _measure(case, source_stored, stored, dilated, prompt_type, prompt, seed, candidates, settings)
                    )
                inside = [_windowed_hu(stored)[case.lesion_mask] for stored in variants]
                diversity[prompt_type].append(float(np.mean([np.abs(a - b).mean() for a, b in combinations(inside, 2)])))
                if prompt_type in truths:
                    truths[prompt_type].append(references[prompt_type])
                done += 1
                if progress is not None:
                    progress(done, total)
            # 4. The case's own type once more with the other slice consistency setting: what it changes
            if compare:
                other = dataclasses.replace(settings, slice_consistency=not settings.slice_consistency)
                own = case.lesion_type
                seeds = [settings.seed * 1000 + i * 10 + v for v in range(settings.variants)]
                variants = _run_engine(
                    inpainter, files, mask_path, _prompt(own, settings.token), f"{own.value}-3d-other",
                    root / case.case_id, seeds, other,
                )
                candidates = _candidates(own.value, references)
                for stored, seed in zip(variants, seeds):
                    measured = _measure(
                        case, source_stored, stored, dilated, own.value, _prompt(own, settings.token), seed,
                        candidates, settings,
                    )
                    consistency_other.append(dataclasses.replace(measured, slice_consistency=other.slice_consistency))
                done += 1
                if progress is not None:
                    progress(done, total)
        rows = [_row(t.value, _prompt(t, settings.token), outputs, truths[t.value], diversity[t.value]) for t in types]
        if settings.baseline:
            rows.append(_baseline_row(outputs, diversity[BASELINE]))
    return QualityReport(
        settings=settings, rows=rows, outputs=outputs, seconds=time.perf_counter() - start,
        consistency_other=consistency_other,
    )


def _prompt(lesion_type: LesionType, token: str | None) -> str:
    if token and lesion_type in HELD_OUT_TYPES:
        return f"{token} mass"
    return LESION_SPECS[lesion_type].prompt


def disk_mask(mask: np.ndarray, margin_px: float = 2.0) -> np.ndarray:
    """Per slice, the disk around the lesion's centroid reaching its farthest pixel + ``margin_px``."""
    out = np.zeros_like(mask, dtype=bool)
    rows, cols = np.mgrid[: mask.shape[1], : mask.shape[2]]
    for k, m in enumerate(mask):
        if m.any():
            r, c = np.nonzero(m)
            cy, cx = r.mean(), c.mean()
            radius = np.sqrt((r - cy) ** 2 + (c - cx) ** 2).max() + margin_px
            out[k] = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
    return out


def generated_irregularity(
    out_stored: np.ndarray, source_stored: np.ndarray, region: np.ndarray, threshold_hu: float = 15.0
) -> float:
    """`border_irregularity` of the generated lesion in one slice (stored values), see the module doc."""
    smoothed = ndimage.gaussian_filter(_windowed_hu(out_stored), 0.7)
    background = float(np.median(_windowed_hu(source_stored)[region]))
    lesion = region & (np.abs(smoothed - background) > threshold_hu)
    labels, n = ndimage.label(lesion)
    if n == 0:
        return 0.0
    sizes = ndimage.sum(lesion, labels, range(1, n + 1))
    return border_irregularity(labels == 1 + int(np.argmax(sizes)))


def _dilated(mask: np.ndarray, radius_mm: float, spacing: tuple[float, float, float]) -> np.ndarray:
    """The engine's dilated mask, slice by slice: outside it nothing may change."""
    return np.stack([blend_region(m, radius_mm, spacing[1:]) if m.any() else m for m in mask])


def _windowed_hu(stored: np.ndarray) -> np.ndarray:
    """Stored values of a phantom series -> HU clipped to the soft-tissue window the engine used."""
    center, width = SOFT_TISSUE_WINDOW
    return np.clip(stored * 1.0 + RESCALE_INTERCEPT, center - width / 2.0, center + width / 2.0)


def _candidates(prompt_type: str, references: dict[str, float]) -> dict[str, float]:
    """The prompted type, every base type and healthy tissue: what an output may be nearest to."""
    names = {prompt_type, "healthy", *(t.value for t in BASE_TYPES)} - {BASELINE}
    return {name: references[name] for name in names}


def _run_engine(inpainter, files, mask_path, prompt, prompt_type, folder, seeds, settings) -> list[np.ndarray]:
    """One full engine request; returns the stored values of each written variant series."""
    from medgen.api import InpaintRequest

    request = InpaintRequest(
        input=files.healthy_dir,
        mask=mask_path,
        prompt=prompt,
        out=folder / f"out-{prompt_type}",
        all_slices=True,
        num_variants=settings.variants,
        seed=seeds[0],
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        crop_padding_px=settings.crop_padding_px,
        mask_dilate_mm=settings.mask_dilate_mm,
        mask_blur_px=settings.mask_blur_px,
        window="soft_tissue",
        match_noise=settings.match_noise,
        slice_consistency=settings.slice_consistency,
        cache_interval=settings.cache_interval,
        adapters=list(settings.adapters),
        token=settings.token,
        controlnet=settings.controlnet,
        control_from=settings.control_from,
    )
    result = inpainter(request)
    return [read_series_stored(directory) for directory in result.variant_dirs]


def _run_unprompted(inpainter, files, mask_path, seeds, settings) -> list[np.ndarray]:
    """The baseline: the engine's own steps with an empty prompt, kept in memory.

    `Inpainter` refuses an empty prompt (at the command line it is nearly always a slip), so this
    runs the same read, window, crop, generate and paste-back helpers that `Inpainter.__call__` uses,
    minus the writing.
    """
    from medgen.api import InpaintRequest
    from medgen.generate.inpaint import inpaint
    from medgen.imaging.crop import resize_image, resize_mask
    from medgen.imaging.intensity import IntensityMap, choose_window
    from medgen.imaging.masks import read_mask, select_slices
    from medgen.imaging.read import read_volume

    request = InpaintRequest(
        input=files.healthy_dir,
        mask=mask_path,
        prompt="",
        out=Path("unused"),
        all_slices=True,
        crop_padding_px=settings.crop_padding_px,
        mask_dilate_mm=settings.mask_dilate_mm,
        mask_blur_px=settings.mask_blur_px,
        controlnet=settings.controlnet,
        control_from=settings.control_from,
    )
    volume = read_volume(request.input)
    mask = read_mask(request.mask, volume)
    slices = select_slices(mask, None, True, volume)
    intensity = IntensityMap(volume, choose_window(volume, slices, preset="soft_tissue"))
    jobs = [inpainter._prepare_slice(volume, intensity, mask[k], k, request) for k in slices]
    size = (inpainter.model.resolution,) * 2
    # Bicubic resizing overshoots a little next to saturated pixels (bone); the model wants [-1, 1].
    crops = np.clip(np.stack([resize_image(job.source_model[job.box.slices], size) for job in jobs]), -1.0, 1.0)
    crop_masks = np.stack([resize_mask(job.dilated[job.box.slices], size) for job in jobs])
    generated = inpaint(
        inpainter.model,
        crops.astype(np.float32),
        crop_masks.astype(np.float32),
        prompt="",
        num_variants=len(seeds),
        seeds=seeds,
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        control_images=inpainter._control_images(request, crops, jobs),
        cache_interval=settings.cache_interval,
    )
    from medgen.generate.compose import compose_variant

    return [
        compose_variant(
            volume, intensity, jobs, generated[:, v], seed=seed,
            match_noise=settings.match_noise, slice_consistency=settings.slice_consistency,
        ).pixels
        for v, seed in enumerate(seeds)
    ]


def read_series_stored(folder: Path) -> np.ndarray:
    """Stored values of a written single-frame series, ordered along the slice normal."""
    datasets = [pydicom.dcmread(p) for p in sorted(Path(folder).rglob("*.dcm"))]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    return np.stack([ds.pixel_array for ds in datasets])


def _measure(case, source_stored, stored, dilated, prompt_type, prompt, seed, candidates, settings) -> Output:
    mask = case.lesion_mask
    windowed = _windowed_hu(stored)
    mean_hu = float(windowed[mask].mean())
    nearest = min(candidates, key=lambda name: abs(candidates[name] - mean_hu))
    changed = np.abs(windowed - _windowed_hu(source_stored)) > settings.change_threshold_hu
    dice = 2.0 * float((changed & mask).sum()) / float(changed.sum() + mask.sum())
    outside = ~dilated
    k = largest_slice(mask)
    irregularity = generated_irregularity(stored[k], source_stored[k], dilated[k], settings.lesion_threshold_hu)
    three_d = {}
    if prompt_type == case.lesion_type.value:
        truth_windowed = _windowed_hu(case.hu - RESCALE_INTERCEPT)
        three_d = {
            "adjacent_diff_hu": adjacent_slice_difference(windowed, mask),
            "truth_adjacent_diff_hu": adjacent_slice_difference(truth_windowed, mask),
            "area_correlation": area_profile_correlation(changed & dilated, mask),
        }
    return Output(
        case_id=case.case_id,
        case_type=case.lesion_type.value,
        prompt_type=prompt_type,
        prompt=prompt,
        seed=seed,
        mean_hu=mean_hu,
        nearest=nearest,
        dice=dice,
        identical=int((stored[outside] == source_stored[outside]).sum()),
        outside=int(outside.sum()),
        irregularity=irregularity,
        slice_consistency=settings.slice_consistency,
        **three_d,
    )


def adjacent_slice_difference(values: np.ndarray, mask: np.ndarray) -> float:
    """Mean |values(k) - values(k+1)| over voxels inside the mask on both slices (NaN for one slice)."""
    both = mask[:-1] & mask[1:]
    if not both.any():
        return float("nan")
    return float(np.abs(np.diff(values.astype(np.float64), axis=0))[both].mean())


def area_profile_correlation(lesion: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of per-slice areas of the generated lesion and of the mask, over the slices
    the mask touches and one on either side (NaN when either profile is flat)."""
    mask_area = mask.reshape(len(mask), -1).sum(axis=1).astype(float)
    touched = np.nonzero(mask_area)[0]
    if touched.size == 0:
        return float("nan")
    span = slice(max(int(touched[0]) - 1, 0), int(touched[-1]) + 2)
    a, b = lesion.reshape(len(lesion), -1).sum(axis=1).astype(float)[span], mask_area[span]
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def consistency_figures(outputs: list[Output]) -> dict[str, float]:
    """Adjacent-slice difference ratio (generated over truth, of the means) and mean area correlation."""
    generated = [o.adjacent_diff_hu for o in outputs if np.isfinite(o.adjacent_diff_hu)]
    truth = [o.truth_adjacent_diff_hu for o in outputs if np.isfinite(o.adjacent_diff_hu)]
    correlations = [o.area_correlation for o in outputs if np.isfinite(o.area_correlation)]
    return {
        "n": len(generated),
        "adjacent_diff_hu": float(np.mean(generated)) if generated else float("nan"),
        "truth_adjacent_diff_hu": float(np.mean(truth)) if truth else float("nan"),
        "adjacent_ratio": float(np.mean(generated) / np.mean(truth)) if generated and np.mean(truth) > 0 else float("nan"),
        "area_correlation": float(np.mean(correlations)) if correlations else float("nan"),
    }


def _row(prompt_type, prompt, outputs, truths, diversity) -> Row:
    mine = [o for o in outputs if o.prompt_type == prompt_type]
    outside = sum(o.outside for o in mine)
    return Row(
        prompt_type=prompt_type,
        prompt=prompt,
        n=len(mine),
        fidelity=float(np.mean([o.nearest == prompt_type for o in mine])),
        mean_hu=float(np.mean([o.mean_hu for o in mine])),
        truth_hu=float(np.mean(truths)),
        dice=float(np.mean([o.dice for o in mine])),
        identity=sum(o.identical for o in mine) / outside if outside else 1.0,
        diversity_hu=float(np.mean(diversity)),
        irregularity=float(np.mean([o.irregularity for o in mine])),
    )


def _baseline_row(outputs, diversity) -> Row:
    """Empty prompt: fidelity is the share of (output, base type) pairs where the output is nearest to
    that type, i.e. how often "the prompt was obeyed" by chance when there was no prompt."""
    mine = [o for o in outputs if o.prompt_type == BASELINE]
    base = [t.value for t in BASE_TYPES]
    hits = [o.nearest == t for o in mine for t in base]
    outside = sum(o.outside for o in mine)
    return Row(
        prompt_type=BASELINE,
        prompt="",
        n=len(mine),
        fidelity=float(np.mean(hits)),
        mean_hu=float(np.mean([o.mean_hu for o in mine])),
        truth_hu=float("nan"),
        dice=float(np.mean([o.dice for o in mine])),
        identity=sum(o.identical for o in mine) / outside if outside else 1.0,
        diversity_hu=float(np.mean(diversity)),
        irregularity=float(np.mean([o.irregularity for o in mine])),
    )


def format_report(report: QualityReport) -> str:
    """The table the command prints."""
    s = report.settings
    lines = [
        (
            f"medgen bench quality: {s.cases} held-out phantom case(s), {s.variants} seeds each, "
            f"{s.num_inference_steps} steps, guidance {s.guidance_scale:g}, model {s.model or 'demo (shipped)'}"
            + (f", adapters {', '.join(s.adapters)}" if s.adapters else "")
            + (f", token {s.token}" if s.token else "")
            + (", disk masks" if s.mask_shape == "disk" else "")
            + (f", ControlNet {s.controlnet} from {s.control_from}" if s.controlnet else "")
            + (f", cache interval {s.cache_interval}" if s.cache_interval != 1 else "")
            + (f", mask dilated {s.mask_dilate_mm:g} mm, blur {s.mask_blur_px:g} px" if (s.mask_dilate_mm, s.mask_blur_px) != (2.0, 4.0) else "")
        ),
        (
            f"{'type':<14} {'prompt':<28} {'n':>3} {'fidelity':>8} {'mean HU':>8} {'truth HU':>8} "
            f"{'Dice':>5} {'identity':>9} {'diversity HU':>12} {'border irregularity':>19}"
        ),
    ]
    for r in report.rows:
        name = r.prompt_type + ("*" if r.prompt_type == LesionType.SPICULATED.value else "")
        truth = "-" if np.isnan(r.truth_hu) else f"{r.truth_hu:.1f}"
        prompt = repr(r.prompt) if r.prompt_type == BASELINE else r.prompt
        lines.append(
            f"{name:<14} {prompt:<28} {r.n:>3} {r.fidelity:>8.1%} {r.mean_hu:>8.1f} {truth:>8} "
            f"{r.dice:>5.2f} {r.identity:>9.4%} {r.diversity_hu:>12.1f} {r.irregularity:>19.3f}"
        )
    summary, met = report.base_summary(), report.goals_met()
    if summary:
        lines.append(
            f"four base types: fidelity {summary['fidelity']:.1%} (goal >= 90%: {_ok(met['fidelity'])}), "
            f"Dice {summary['dice']:.2f} (goal >= 0.8: {_ok(met['dice'])}), "
            f"diversity {summary['diversity_hu']:.1f} HU (> 0: {_ok(met['diversity'])})"
        )
    lines.append(f"outside-mask identity over all outputs: {report.identity:.4%} (must be 100%: {_ok(met['identity'])})")
    for name, figures in report.consistency().items():
        if not figures["n"]:
            continue
        ratio_ok = ADJACENT_RATIO_GOAL[0] <= figures["adjacent_ratio"] <= ADJACENT_RATIO_GOAL[1]
        corr_ok = figures["area_correlation"] >= AREA_CORRELATION_GOAL
        lines.append(
            f"across slices, slice consistency {name} ({figures['n']} outputs of the case's own type): "
            f"adjacent-slice difference {figures['adjacent_diff_hu']:.1f} HU vs truth "
            f"{figures['truth_adjacent_diff_hu']:.1f} HU, ratio {figures['adjacent_ratio']:.2f} "
            f"(goal {ADJACENT_RATIO_GOAL[0]}-{ADJACENT_RATIO_GOAL[1]}: {_ok(ratio_ok)}); area-profile correlation "
            f"{figures['area_correlation']:.2f} (goal >= {AREA_CORRELATION_GOAL}: {_ok(corr_ok)})"
        )
    if LesionType.SPICULATED.value in s.types:
        lines.append("* held out: the base model never saw this type; it is the target of adapter training")
    lines.append(f"{report.seconds:.0f} s")
    return "\n".join(lines)


def _ok(flag: bool) -> str:
    return "ok" if flag else "MISSED"


def write_json(report: QualityReport, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=2, allow_nan=True) + "\n", encoding="utf-8")
    return path
