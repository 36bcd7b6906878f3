"""`medgen bench detect`: can a classifier tell the engine's lesions from real ones?

The automated stand-in for the reader study. A small MONAI Classifier learns to tell real lesion
crops from synthetic ones and is scored on crops it never saw: an AUC near 0.5 means the synthetic
lesions carry no cue a network can learn at this size; near 1.0, every one is obvious.

Without manifests the data are phantom cases: for each case, the real crop is the scan with its
lesion, the synthetic crop is its healthy twin (same anatomy, same scanner noise) with a lesion of
the same type inpainted by the engine under the same mask, on every slice the lesion touches, through
`medgen batch`. Crops are lesion-centred, image only (no mask channel). Each seed draws its own
split by case (a case's real and synthetic crops fall on the same side) and its own starting
weights; the AUC per lesion type is the mean over the seeds with a 95% Student-t interval.

The same run repeats the synthetic set with each realism step turned off (noise matching, slice
consistency, seam handling, edge matching, intensity calibration), so the table shows what each step does for detectability. ``--diagnose``
also asks what gives synthetic crops away: each factor of a synthetic crop in turn is replaced by the
real crop's (the lesion's mean intensity, its fine texture, its border band, the pixels where the
drawn lesion departs from the mask); the factor whose replacement lowers the AUC most is the cue.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from medgen.bench.augment import check_crop_training, hardware_text, interval, write_json
from medgen.bench.augment_data import read_real_manifest, run_synthetic_manifest, write_jsonl
from medgen.cli_help import new_parser
from medgen.generate.drawn_label import dice
from medgen.errors import InputError, OutputError

DETECT_STREAM = 1003
"""Phantom cases of this bench are `make_case((1003, i), ...)`: a stream no training or other bench draws."""
PHANTOM_SLICES = 5
ABLATIONS = {
    "no noise matching": {"match_noise": False},
    "slice smoothing on": {"slice_consistency": True},
    "no seam handling": {"seam_harmonize": False},
    "no edge matching": {"edge_match": False},
    "no intensity calibration": {"calibrate_intensity": False},
    "mask-dilate 6 mm": {"mask_dilate_mm": 6.0},
}
"""Each realism step, off: the request fields that turn it off (also manifest columns); and the room a
lesion's edge needs to spill (the default 2 mm dilation is under one pixel of the 2.8 mm phantom)."""
FACTORS = ("intensity", "texture", "boundary", "shape")
"""What `--diagnose` makes real in the synthetic crops, one at a time (see `hybrid_crop`)."""
BORDER_BAND_PX = 2


@dataclass
class DetectSettings:
    """One bench run; the defaults are the command's."""

    cases: int = 20  # phantom cases per lesion type
    types: tuple[str, ...] = ("cyst", "hyperdense", "calcification", "fat", "spiculated")
    seeds: int = 5
    steps: int = 8  # denoising steps per synthetic lesion
    train_steps: int = 300
    batch_size: int = 16
    learning_rate: float = 3e-3
    crop_px: int = 32
    test_fraction: float = 0.3
    ablations: bool = True
    diagnose: bool = False
    model: str | None = None
    device: str = "auto"
    real_manifest: str | None = None
    synthetic_manifest: str | None = None
    threads: int = 1


@dataclass
class Crop:
    """A real or synthetic lesion crop: model-space image, the case it belongs to, its type."""

    image: np.ndarray
    case: str
    lesion_type: str
    mask: np.ndarray  # the request's (or the real lesion's) mask in the crop
    drawn: np.ndarray | None = None  # a synthetic crop's lesion as drawn
    lesion_mean: float | None = None


@dataclass
class DetectSets:
    real: list[Crop]
    synthetic: dict[str, list[Crop]]  # "engine" and one per ablation
    batch: dict[str, dict] = field(default_factory=dict)


def build_parser() -> argparse.ArgumentParser:
    from medgen.phantom.model import DEMO_MODEL_HELP
    from medgen.phantom.quality import ALL_TYPES

    p = new_parser("medgen bench detect", __doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=DetectSettings.cases, metavar="N",
                   help="phantom cases per lesion type, in cases (each gives one real and one synthetic crop)")
    p.add_argument("--types", nargs="+", default=list(DetectSettings.types),
                   choices=[t.value for t in ALL_TYPES], help="phantom lesion types (default: all five)")
    p.add_argument("--seeds", type=int, default=DetectSettings.seeds, metavar="K",
                   help="splits and trainings per figure, in runs")
    p.add_argument("--steps", type=int, default=DetectSettings.steps, metavar="N",
                   help="denoising steps per synthetic phantom lesion, in steps")
    p.add_argument("--train-steps", type=int, default=DetectSettings.train_steps, metavar="N",
                   help="optimizer steps of each classifier, in steps")
    p.add_argument("--batch-size", type=int, default=DetectSettings.batch_size, metavar="N",
                   help="crops per training step, in crops")
    p.add_argument("--crop", type=int, default=DetectSettings.crop_px, dest="crop_px", metavar="PX",
                   help="side of the lesion-centred square crops, in pixels (a multiple of 8)")
    p.add_argument("--test-fraction", type=float, default=DetectSettings.test_fraction, metavar="FRACTION",
                   help="share of the cases each seed holds out for scoring, 0-1")
    p.add_argument("--no-ablations", action="store_false", dest="ablations",
                   help="skip the runs with each realism step off (default: run them)")
    p.add_argument("--diagnose", action="store_true",
                   help="also score synthetic crops with one factor at a time taken from the real crop "
                   "(intensity, texture, boundary, shape): what gives them away")
    p.add_argument("--model", help=DEMO_MODEL_HELP)
    p.add_argument("--real-manifest", metavar="CSV|JSONL",
                   help="your real lesions, in the `medgen batch` manifest format; the prompt is the type "
                   "(default: phantom cases)")
    p.add_argument("--synthetic-manifest", metavar="CSV|JSONL",
                   help="your synthetic lesion requests as a `medgen batch` manifest, run with --model; "
                   "give a row the same id as a real row to pair them on one side of the split")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the inpainting model runs (the classifier trains on the CPU)")
    p.add_argument("--threads", type=int, default=DetectSettings.threads, metavar="N",
                   help="torch CPU threads, in threads")
    p.add_argument("--work-dir", type=Path, metavar="DIR",
                   help="keep cases and synthetic outputs here; a rerun reuses them (default: a temporary "
                   "folder, deleted)")
    p.add_argument("--json", type=Path, metavar="PATH",
                   help='also write the figures as JSON here: {"types": {TYPE: {"auc", "low", "high"}}, '
                   '"ablations": ..., "diagnosis": ...} (default: none)')
    return p


def check_settings(settings: DetectSettings) -> None:
    """Every number and combination, before any case is written or model loaded."""
    check_crop_training(settings, (("--cases", settings.cases, 4), ("--seeds", settings.seeds, 1)))
    if not settings.types:
        raise InputError(None, "--types needs at least one lesion type")


# --- 1. the crops -------------------------------------------------------------------------------


def build_sets(settings: DetectSettings, folder: Path) -> DetectSets:
    """Real crops and each synthetic set (the engine as it is, then one per ablation)."""
    if settings.real_manifest:
        real_path, request_path = Path(settings.real_manifest), Path(settings.synthetic_manifest)
        read_slices = None
    else:
        real_path, request_path, read_slices = write_phantom_manifests(folder, settings)
    real = [_as_crop(s) for s in read_real_manifest(real_path, crop_px=settings.crop_px)]
    variants = {"engine": {}}
    if settings.ablations:
        variants.update(ABLATIONS)
    synthetic, batch = {}, {}
    for name, switches in variants.items():
        manifest = _with_switches(request_path, switches, folder / f"requests-{_slug(name)}.jsonl")
        _say(f"inpainting the synthetic set '{name}' with `medgen batch`")
        samples, batch[name] = run_synthetic_manifest(
            manifest, folder / f"batch-{_slug(name)}", crop_px=settings.crop_px, model=settings.model,
            device=settings.device, read_slices=read_slices,
        )
        synthetic[name] = [_as_crop(s) for s in samples]
    return DetectSets(real, synthetic, batch)


def write_phantom_manifests(folder: Path, settings: DetectSettings) -> tuple[Path, Path, dict[str, list[int]]]:
    """Phantom cases (the scan with its lesion, its healthy twin, the lesion's mask) and two manifests:
    the real lesions on their largest slice, and the requests that inpaint each twin on every slice the
    lesion touches; also the slice each row's crop is read on."""
    from medgen.phantom.cases import make_case
    from medgen.phantom.lesions import LESION_SPECS, LesionType, largest_slice
    from medgen.phantom.series import ct_datasets, write_datasets, write_seg_nrrd

    real_rows, requests, read_slices = [], [], {}
    for t, name in enumerate(settings.types):
        lesion_type = LesionType(name)
        for i in range(settings.cases):
            case_id = f"{name}-{i + 1:03d}"
            case = make_case((DETECT_STREAM, t, i), lesion_type, case_id=case_id, num_slices=PHANTOM_SLICES)
            case_dir = folder / "cases" / case_id
            if not (case_dir / "lesion.seg.nrrd").is_file():  # deterministic: a kept work folder is reused
                label = LESION_SPECS[lesion_type].label
                write_datasets(ct_datasets(case, case.hu, series_number=1, description=f"PHANTOM CT with {label}"),
                               case_dir / "ct")
                write_datasets(ct_datasets(case, case.healthy_hu, series_number=2,
                                           description="PHANTOM CT healthy twin"), case_dir / "healthy")
                write_seg_nrrd(case, case_dir / "lesion.seg.nrrd")
            largest = largest_slice(case.lesion_mask)
            read_slices[case_id] = [largest]
            common = {"id": case_id, "mask": str(case_dir / "lesion.seg.nrrd"),
                      "prompt": LESION_SPECS[lesion_type].prompt, "window": "soft_tissue"}
            real_rows.append({**common, "input": str(case_dir / "ct"), "slice": [largest]})
            requests.append({**common, "input": str(case_dir / "healthy"), "slice": case.lesion_slices,
                             "seed": DETECT_STREAM * 1000 + t * 100 + i, "steps": settings.steps})
    return write_jsonl(folder / "real.jsonl", real_rows), write_jsonl(folder / "requests.jsonl", requests), read_slices


def _as_crop(sample) -> Crop:
    from medgen.phantom.lesions import LESION_SPECS

    by_prompt = {spec.prompt: t.value for t, spec in LESION_SPECS.items()}
    case = sample.source.split(":")[0]
    lesion_type = by_prompt.get(sample.label, sample.label)
    mask = sample.requested if sample.requested is not None else sample.mask
    drawn = sample.mask if sample.requested is not None else None
    return Crop(sample.image, case, lesion_type, mask, drawn, sample.lesion_mean)


def _with_switches(path: Path, switches: dict, out: Path) -> Path:
    """A copy of a request manifest (JSONL or CSV) as JSONL with the ablation's columns set."""
    from medgen.batch.manifest import read_manifest

    if not switches:
        return path
    manifest = read_manifest(path)
    rows = []
    for row in manifest.rows:
        plain = {"id": row.id}
        for key, value in row.options.items():
            plain[_column(key)] = [str(v) for v in value] if isinstance(value, list) and key == "adapters" else (
                str(value) if isinstance(value, Path) else value)
        plain.update({_column(k): v for k, v in switches.items()})
        rows.append(plain)
    return write_jsonl(out, rows)


def _column(field_name: str) -> str:
    """The manifest column of an InpaintRequest field."""
    from medgen.batch.manifest import SPECIAL_COLUMNS

    for column, spec in SPECIAL_COLUMNS.items():
        if spec.field == field_name:
            return column
    return field_name.replace("_", "-")


# --- 2. the classifier --------------------------------------------------------------------------


def split_cases(case_types: dict[str, str], fraction: float, seed: int) -> set[str]:
    """The held-out cases of one seed: of each lesion type, a random draw of ``fraction`` of its
    cases (at least one, never all), so every type is scored in every seed."""
    rng = np.random.default_rng([DETECT_STREAM, seed])
    held = set()
    for lesion_type in sorted(set(case_types.values())):
        ordered = sorted(case for case, t in case_types.items() if t == lesion_type)
        count = min(max(1, int(round(fraction * len(ordered)))), max(1, len(ordered) - 1))
        held.update(rng.choice(ordered, size=count, replace=False).tolist())
    return held


def detect_aucs(real: list[Crop], synthetic: list[Crop], settings: DetectSettings, seed: int) -> dict[str, float]:
    """Train a real-vs-synthetic classifier on one seed's training cases; the AUC on its held-out
    cases, per lesion type and over all ("all")."""
    from medgen.bench.augment_data import Sample
    from medgen.bench.augment_train import TrainSettings, classification_scores, one_vs_rest_auc

    held = split_cases({c.case: c.lesion_type for c in real + synthetic}, settings.test_fraction, seed)
    as_sample = {"real": lambda c: Sample(c.image, c.mask, "real", c.case),
                 "synthetic": lambda c: Sample(c.image, c.mask, "synthetic", c.case)}
    train = [as_sample["real"](c) for c in real if c.case not in held]
    train += [as_sample["synthetic"](c) for c in synthetic if c.case not in held]
    test = [(c, "real") for c in real if c.case in held] + [(c, "synthetic") for c in synthetic if c.case in held]
    classes = ["real", "synthetic"]
    train_settings = TrainSettings(steps=settings.train_steps, batch_size=settings.batch_size,
                                   learning_rate=settings.learning_rate)
    scores = classification_scores(train, [as_sample[kind](c) for c, kind in test], classes, seed=seed,
                                   settings=train_settings)
    labels = [kind for _, kind in test]
    aucs = {"all": one_vs_rest_auc(scores, labels, classes).get("synthetic", float("nan"))}
    for lesion_type in sorted({c.lesion_type for c, _ in test}):
        picked = [n for n, (c, _) in enumerate(test) if c.lesion_type == lesion_type]
        figure = one_vs_rest_auc(scores[picked], [labels[n] for n in picked], classes).get("synthetic")
        if figure is not None:
            aucs[lesion_type] = figure
    return aucs


def score_set(real: list[Crop], synthetic: list[Crop], settings: DetectSettings) -> dict[str, dict]:
    """Per lesion type (and "all"): the AUC's mean and 95% interval over the seeds."""
    runs = [detect_aucs(real, synthetic, settings, seed) for seed in range(settings.seeds)]
    names = sorted({name for run in runs for name in run})
    table = {}
    for name in names:
        figure = interval([run[name] for run in runs if name in run])
        low, high = (float(np.clip(figure[k], 0.0, 1.0)) for k in ("low", "high"))  # an AUC lies in [0, 1]
        table[name] = {"auc": figure["mean"], "low": low, "high": high, "n": figure["n"]}
    return table


# --- 3. the diagnosis ---------------------------------------------------------------------------


def hybrid_crop(synthetic: Crop, real: Crop, factor: str) -> np.ndarray:
    """The synthetic crop with one factor taken from its real twin's crop (same case, same place).

    intensity: the lesion's mean inside the mask shifted to the real one's; texture: the fine
    residual (image less its 3-pixel median) inside the dilated mask replaced by the real one's;
    boundary: the band of ``BORDER_BAND_PX`` on both sides of the mask's edge replaced by the real
    pixels; shape: the pixels where the drawn lesion and the mask disagree replaced by the real ones.
    """
    from scipy import ndimage

    image = synthetic.image.astype(np.float64).copy()
    mask = synthetic.mask
    if factor == "intensity":
        if mask.any():
            image[mask] += float(real.image[mask].mean() - image[mask].mean())
    elif factor == "texture":
        region = ndimage.binary_dilation(mask, iterations=BORDER_BAND_PX)
        own = image - ndimage.median_filter(image, size=3)
        theirs = real.image - ndimage.median_filter(real.image.astype(np.float64), size=3)
        image[region] += theirs[region] - own[region]
    elif factor == "boundary":
        band = ndimage.binary_dilation(mask, iterations=BORDER_BAND_PX) & ~ndimage.binary_erosion(
            mask, iterations=BORDER_BAND_PX)
        image[band] = real.image[band]
    elif factor == "shape":
        drawn = synthetic.drawn if synthetic.drawn is not None else mask
        differ = drawn ^ mask
        image[differ] = real.image[differ]
    else:
        raise ValueError(f"unknown factor {factor!r}")
    return np.clip(image, -1.0, 1.0).astype(np.float32)


def diagnose(sets: DetectSets, settings: DetectSettings) -> dict:
    """Per factor: the AUC with that factor made real; and the measured gaps behind them (mean lesion
    value, synthetic less real, in modality units; the drawn label's Dice against the mask)."""
    real_by_case = {c.case: c for c in sets.real}
    engine = [c for c in sets.synthetic["engine"] if c.case in real_by_case]
    factors = {}
    for factor in FACTORS:
        hybrids = [replace(c, image=hybrid_crop(c, real_by_case[c.case], factor)) for c in engine]
        _say(f"diagnosis: synthetic crops with real {factor}")
        factors[factor] = score_set(sets.real, hybrids, settings)
    gaps = {}
    for lesion_type in sorted({c.lesion_type for c in engine}):
        pairs = [(c, real_by_case[c.case]) for c in engine if c.lesion_type == lesion_type]
        shifts = [c.lesion_mean - r.lesion_mean for c, r in pairs
                  if c.lesion_mean is not None and r.lesion_mean is not None]
        drawn_dice = [dice(c.drawn, c.mask) for c, _ in pairs if c.drawn is not None]
        gaps[lesion_type] = {
            "mean_value_shift": round(float(np.mean(shifts)), 2) if shifts else None,
            "real_mean_value": round(float(np.mean([r.lesion_mean for _, r in pairs if r.lesion_mean is not None])), 2),
            "drawn_vs_requested_dice": round(float(np.mean(drawn_dice)), 4) if drawn_dice else None,
        }
    return {"factors": factors, "gaps": gaps}


# --- 4. the run and the table --------------------------------------------------------------------


def run_detect_bench(settings: DetectSettings, work_dir: Path | None = None) -> dict:
    import torch

    check_settings(settings)
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="medgen-detect-") as temporary:
            folder = Path(work_dir) if work_dir is not None else Path(temporary)
            folder.mkdir(parents=True, exist_ok=True)
            sets = build_sets(settings, folder)
        sets_s = time.perf_counter() - start
        report = {"settings": asdict(settings), "types": {}, "ablations": {}, "batch": sets.batch}
        for name, crops in sets.synthetic.items():
            _say(f"training real-vs-synthetic classifiers on '{name}' ({settings.seeds} seeds)")
            table = score_set(sets.real, crops, settings)
            if name == "engine":
                report["types"] = table
            else:
                report["ablations"][name] = table
        if settings.diagnose:
            report["diagnosis"] = diagnose(sets, settings)
        report["seconds"] = {"sets": round(sets_s, 1), "total": round(time.perf_counter() - start, 1)}
        report["header"] = (
            f"medgen bench detect: MONAI Classifier, real vs synthetic lesion crops ({settings.crop_px} px, image "
            f"only), {settings.seeds} seed(s), each its own split by case ({settings.test_fraction:.0%} held out) "
            f"and weights; AUC mean [95% interval]; {len(sets.real)} real crops; "
            + (f"synthetic: {settings.synthetic_manifest}" if settings.real_manifest else
               f"phantom cases, synthetic lesions inpainted into healthy twins by the {settings.model or 'demo'} "
               f"model ({settings.steps} steps) through `medgen batch`")
            + f"\nhardware: {hardware_text()}"
        )
        report["table"] = format_table(report)
        return report
    finally:
        torch.set_num_threads(threads)


def _cell(figure: dict | None) -> str:
    if figure is None:
        return "-"
    if np.isnan(figure["low"]):
        return f"{figure['auc']:.3f}"
    return f"{figure['auc']:.3f} [{figure['low']:.3f}, {figure['high']:.3f}]"


def format_table(report: dict) -> str:
    names = [n for n in report["types"] if n != "all"] + ["all"]
    columns = {"engine": report["types"], **report["ablations"]}
    if "diagnosis" in report:
        columns.update({f"real {f}": t for f, t in report["diagnosis"]["factors"].items()})
    header = ["type", *columns]
    lines = [[name, *(_cell(table.get(name)) for table in columns.values())] for name in names]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = [report["header"], "  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(v.ljust(w) for v, w in zip(line, widths)) for line in lines]
    for name, figures in report["batch"].items():
        out.append(f"{name}: drawn label vs request mask, Dice {figures['drawn_vs_requested_dice']:.3f}")
    if "diagnosis" in report:
        for lesion_type, gap in report["diagnosis"]["gaps"].items():
            out.append(f"{lesion_type}: mean lesion value synthetic - real {gap['mean_value_shift']:+.1f} "
                       f"(real {gap['real_mean_value']:.1f})")
    return "\n".join(out)


def _slug(name: str) -> str:
    return name.replace(" ", "-")


def _say(text: str) -> None:
    print(f"medgen bench detect: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = DetectSettings(
        cases=args.cases, types=tuple(args.types), seeds=args.seeds, steps=args.steps, train_steps=args.train_steps,
        batch_size=args.batch_size, crop_px=args.crop_px, test_fraction=args.test_fraction,
        ablations=args.ablations, diagnose=args.diagnose, model=args.model, device=args.device,
        real_manifest=args.real_manifest, synthetic_manifest=args.synthetic_manifest, threads=args.threads,
    )
    if args.json is not None and args.json.is_dir():
        raise OutputError(args.json, "--json names a folder; give a file path")
    report = run_detect_bench(settings, work_dir=args.work_dir)
    print(report["table"])
    print(f"{report['seconds']['total']:.0f} s (sets {report['seconds']['sets']:.0f} s)")
    if args.json is not None:
        print(f"wrote {write_json(report, args.json)}")
    return 0
