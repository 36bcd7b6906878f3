"""`medgen bench augment`: does synthetic pathology help a downstream model learn?

A small MONAI network (a UNet for lesion segmentation, or a Classifier for lesion type) is trained on
2D lesion-centred crops of N real lesions only, of the same N plus M synthetic lesions, and of the M
synthetic lesions only, K times each (seed k gives every arm the same initial weights and batch order,
so the arms of one seed are paired). All are scored on the same held-out real crops. The table gives
each arm's mean and 95% interval over the seeds (Student t), the gain of real + synthetic over real
only, and the paired t-test's p-value, for each N.

Without manifests the data are phantom cases whose truth is known: real cases hold the four base
lesion types; held-out cases and synthetic lesions cycle through all five, the held-out spiculated
type included, so the table also shows what synthetic lesions do for a type the real set lacks.
Synthetic lesions are inpainted into healthy twins under their true masks by `medgen batch` (one
loaded model), with the masks as labels; ``--adapter`` adds a second synthetic set made with it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medgen.cli_help import new_parser
from medgen.errors import InputError, OutputError

DEFAULT_REAL = (10, 25, 100)
TASKS = ("segment", "classify")
METRIC = {"segment": "Dice", "classify": "AUC"}
HELD_OUT_TYPE = "spiculated"


@dataclass
class AugmentSettings:
    """One bench run; the defaults are the command's."""

    real: tuple[int, ...] | None = None  # None: 10, 25, 100 phantom crops, or every training row of a manifest
    synthetic: tuple[int, ...] = (50,)
    task: str = "segment"
    seeds: int = 5
    held_out: int = 40
    steps: int = 8  # denoising steps per synthetic lesion
    train_steps: int = 300
    batch_size: int = 16
    learning_rate: float = 3e-3
    crop_px: int = 32
    model: str | None = None  # None: the shipped demo model
    device: str = "auto"
    adapters: tuple[str, ...] = ()
    token: str | None = None
    real_manifest: str | None = None
    synthetic_manifest: str | None = None
    test_manifest: str | None = None
    test_fraction: float = 0.3
    threads: int = 1  # torch CPU threads for the whole run


@dataclass
class Sets:
    """The crops of one run: real (in the order subsets are taken), held-out, and each synthetic set."""

    real: list
    held_out: list
    synthetic: dict[str, list]
    classes: list[str]
    batch: dict[str, dict] = field(default_factory=dict)  # synthetic set -> `medgen batch` figures
    phantom: bool = True


def build_parser() -> argparse.ArgumentParser:
    from medgen.phantom.model import DEMO_MODEL_HELP

    p = new_parser("medgen bench augment", __doc__.split("\n\n")[0])
    p.add_argument("--real", type=int, nargs="+", metavar="N",
                   help="real training crops per arm, in crops; one table row each "
                   "(default: 10 25 100 phantom cases; with --real-manifest: every training crop)")
    p.add_argument("--synthetic", type=int, nargs="+", default=list(AugmentSettings.synthetic), metavar="M",
                   help="synthetic crops added to the real ones, in crops; one table row each (default: 50)")
    p.add_argument("--task", choices=TASKS, default="segment",
                   help="segment: MONAI UNet, scored by Dice; classify: MONAI Classifier of the lesion type "
                   "(the prompt), scored by one-vs-rest AUC")
    p.add_argument("--seeds", type=int, default=AugmentSettings.seeds, metavar="K",
                   help="training runs per arm, each from its own seed, in runs")
    p.add_argument("--held-out", type=int, default=AugmentSettings.held_out, metavar="CASES",
                   help="held-out real phantom cases, in cases (every fifth of the held-out spiculated type)")
    p.add_argument("--steps", type=int, default=AugmentSettings.steps, metavar="N",
                   help="denoising steps per synthetic phantom lesion, in steps")
    p.add_argument("--train-steps", type=int, default=AugmentSettings.train_steps, metavar="N",
                   help="optimizer steps of each training run, in steps (the same for every arm)")
    p.add_argument("--batch-size", type=int, default=AugmentSettings.batch_size, metavar="N",
                   help="crops per training step, in crops")
    p.add_argument("--crop", type=int, default=AugmentSettings.crop_px, dest="crop_px", metavar="PX",
                   help="side of the lesion-centred square crops, in pixels (a multiple of 8)")
    p.add_argument("--model", help=DEMO_MODEL_HELP)
    p.add_argument("--adapter", action="append", default=[], dest="adapters", metavar="PATH[:WEIGHT]",
                   help="textual inversion or LoRA: adds a phantom synthetic set made with it; repeatable "
                   "(default: none, only the set without adapters)")
    p.add_argument("--token", help="the textual inversion's token; that set prompts the held-out type "
                   "'<token> mass' (default: its canonical prompt)")
    p.add_argument("--real-manifest", metavar="CSV|JSONL",
                   help="your real lesions, in the `medgen batch` manifest format (input, mask, prompt = class, "
                   "optional slice, segment, label, window); read as they are (default: phantom cases)")
    p.add_argument("--synthetic-manifest", metavar="CSV|JSONL",
                   help="your synthetic lesions as a `medgen batch` manifest, run with --model; each output is "
                   "labelled by its row's mask and prompt (default: phantom twins; needs --real-manifest)")
    p.add_argument("--test-manifest", metavar="CSV|JSONL",
                   help="your held-out real lesions, same format (default: --test-fraction of --real-manifest)")
    p.add_argument("--test-fraction", type=float, default=AugmentSettings.test_fraction, metavar="FRACTION",
                   help="share of --real-manifest's rows held out (a fixed draw) when no --test-manifest is "
                   "given, 0-1")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the inpainting model runs (the small networks train on the CPU)")
    p.add_argument("--threads", type=int, default=AugmentSettings.threads, metavar="N",
                   help="torch CPU threads, in threads (small networks train fastest on one; more threads "
                   "on a busy machine mostly wait for each other)")
    p.add_argument("--work-dir", type=Path, metavar="DIR",
                   help="keep cases, manifests and synthetic outputs here; a rerun reuses them "
                   "(default: a temporary folder, deleted)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write every figure as JSON here (default: none)")
    return p


def check_settings(settings: AugmentSettings) -> None:
    """Every number and combination, before any case is written or model loaded."""
    if settings.task not in TASKS:
        raise InputError(None, f"--task must be one of {', '.join(TASKS)}, got {settings.task!r}")
    for name, values in (("--real", settings.real or ()), ("--synthetic", settings.synthetic)):
        if any(v < 1 for v in values):
            raise InputError(None, f"{name} values must be at least 1, got {list(values)}")
    if not settings.synthetic:
        raise InputError(None, "--synthetic needs at least one value")
    check_crop_training(
        settings, (("--seeds", settings.seeds, 1), ("--held-out", settings.held_out, 2)), settings.test_manifest
    )
    if settings.test_manifest and not settings.real_manifest:
        raise InputError(None, "--test-manifest needs --real-manifest")
    if settings.real_manifest and settings.adapters:
        raise InputError(None, "--adapter makes a phantom synthetic set; put adapters in the manifest's "
                         "adapter column instead")


def check_crop_training(settings, minimums: tuple = (), *more_manifests: str | None) -> None:
    """What `bench augment` and `bench detect` check alike: each ``minimums`` (option, value, lowest) and
    the steps, batch size and threads at least 1, the crop side, the held-out share, the real and
    synthetic manifests given together, and every manifest named an existing file."""
    for name, value, low in (*minimums, ("--steps", settings.steps, 1), ("--train-steps", settings.train_steps, 1),
                             ("--batch-size", settings.batch_size, 1), ("--threads", settings.threads, 1)):
        if value < low:
            raise InputError(None, f"{name} must be at least {low}, got {value}")
    if settings.crop_px < 16 or settings.crop_px % 8:
        raise InputError(None, f"--crop must be a multiple of 8 of at least 16 pixels, got {settings.crop_px}")
    if not 0.0 < settings.test_fraction < 1.0:
        raise InputError(None, f"--test-fraction must be between 0 and 1, got {settings.test_fraction}")
    if bool(settings.real_manifest) != bool(settings.synthetic_manifest):
        raise InputError(None, "--real-manifest and --synthetic-manifest go together: give both or neither")
    for path in (settings.real_manifest, settings.synthetic_manifest, *more_manifests):
        if path and not Path(path).is_file():
            raise InputError(path, "no such manifest file")


# --- 1. the sets --------------------------------------------------------------------------------


def build_sets(settings: AugmentSettings, folder: Path) -> Sets:
    from medgen.bench import augment_data as data

    start = time.perf_counter()
    if settings.real_manifest:
        sets = _manifest_sets(settings, folder)
    else:
        real_count = max(settings.real or DEFAULT_REAL)
        manifests = data.write_phantom_manifests(
            folder, real_cases=real_count, held_out_cases=settings.held_out,
            synthetic_cases=max(settings.synthetic), steps=settings.steps, adapters=list(settings.adapters),
            token=settings.token,
        )
        _say(f"wrote {real_count} real, {settings.held_out} held-out and {max(settings.synthetic)} twin phantom "
             f"cases ({time.perf_counter() - start:.0f} s)")
        real = data.read_real_manifest(manifests.real, crop_px=settings.crop_px, labels=manifests.types)
        held_out = data.read_real_manifest(manifests.held_out, crop_px=settings.crop_px, labels=manifests.types)
        synthetic, batch = {}, {}
        for name, manifest in manifests.synthetic.items():
            _say(f"inpainting {name}: {max(settings.synthetic)} lesions with `medgen batch`")
            synthetic[name], batch[name] = data.run_synthetic_manifest(
                manifest, folder / f"batch-{name.replace('+', '-')}", crop_px=settings.crop_px,
                model=settings.model, device=settings.device, labels=manifests.types,
            )
        sets = Sets(real, held_out, synthetic, [], batch, phantom=True)
    sets.classes = sorted({s.label for group in (sets.real, sets.held_out, *sets.synthetic.values()) for s in group})
    needed = max(settings.real or [len(sets.real)])
    if needed > len(sets.real):
        raise InputError(settings.real_manifest, f"--real {needed} asks for more than the {len(sets.real)} real "
                         "training crops there are")
    for name, samples in sets.synthetic.items():
        if max(settings.synthetic) > len(samples):
            raise InputError(settings.synthetic_manifest, f"--synthetic {max(settings.synthetic)} asks for more "
                             f"than the {len(samples)} crops of {name}")
    if settings.task == "classify" and len({s.label for s in sets.held_out}) < 2:
        raise InputError(settings.test_manifest or settings.real_manifest,
                         "the held-out set needs lesions of at least two classes (prompts) to score AUC")
    _say(f"sets ready: {len(sets.real)} real, {len(sets.held_out)} held-out, "
         + ", ".join(f"{len(v)} {k}" for k, v in sets.synthetic.items())
         + f" crops ({time.perf_counter() - start:.0f} s)")
    return sets


def _manifest_sets(settings: AugmentSettings, folder: Path) -> Sets:
    """A user's own data: real crops in a fixed shuffled order (so the first N are a fair draw), the
    held-out crops from --test-manifest or a fixed share of the real ones, the synthetic set by batch."""
    from medgen.bench import augment_data as data

    rng = np.random.default_rng(0)
    real = data.read_real_manifest(Path(settings.real_manifest), crop_px=settings.crop_px)
    real = [real[i] for i in rng.permutation(len(real))]
    if settings.test_manifest:
        held_out = data.read_real_manifest(Path(settings.test_manifest), crop_px=settings.crop_px)
    else:  # whole rows are held out, so no scan has crops on both sides
        rows = list(dict.fromkeys(s.source.split(":")[0] for s in real))
        held_rows = set(rows[: max(1, int(round(settings.test_fraction * len(rows))))])
        held_out = [s for s in real if s.source.split(":")[0] in held_rows]
        real = [s for s in real if s.source.split(":")[0] not in held_rows]
        if not real:
            raise InputError(settings.real_manifest, "too few rows to hold some out; give --test-manifest")
    _say(f"inpainting the synthetic manifest with `medgen batch` (model {settings.model or 'demo'})")
    synthetic, batch = data.run_synthetic_manifest(
        Path(settings.synthetic_manifest), folder / "batch-synthetic", crop_px=settings.crop_px,
        model=settings.model, device=settings.device,
    )
    synthetic = [synthetic[i] for i in rng.permutation(len(synthetic))]
    return Sets(real, held_out, {"synthetic": synthetic}, [], {"synthetic": batch}, phantom=False)


# --- 2. the arms --------------------------------------------------------------------------------


def score_arm(train: list, sets: Sets, settings: AugmentSettings, seed: int) -> dict:
    """Train one network on ``train`` and score it on the held-out crops: the overall figure and,
    per class, the mean Dice (segmentation) or the one-vs-rest AUC (classification)."""
    from medgen.bench.augment_train import (
        TrainSettings,
        classification_scores,
        one_vs_rest_auc,
        segmentation_dice,
    )

    train_settings = TrainSettings(steps=settings.train_steps, batch_size=settings.batch_size,
                                   learning_rate=settings.learning_rate)
    labels = [s.label for s in sets.held_out]
    if settings.task == "segment":
        dice = segmentation_dice(train, sets.held_out, seed=seed, settings=train_settings)
        per_class = {name: float(dice[np.array(labels) == name].mean()) for name in sorted(set(labels))}
        return {"score": float(dice.mean()), "per_class": per_class}
    scores = classification_scores(train, sets.held_out, sets.classes, seed=seed, settings=train_settings)
    aucs = one_vs_rest_auc(scores, labels, sets.classes)
    accuracy = float(np.mean([sets.classes[i] == label for i, label in zip(scores.argmax(axis=1), labels)]))
    return {"score": float(np.mean(list(aucs.values()))), "per_class": aucs, "accuracy": accuracy}


def run_arms(sets: Sets, settings: AugmentSettings, progress=None) -> list[dict]:
    """Every (arm, N, synthetic set, M, seed) run, as records."""
    real_sizes = list(settings.real or ([len(sets.real)] if not sets.phantom else DEFAULT_REAL))
    plan = []
    for seed in range(settings.seeds):
        for n in real_sizes:
            plan.append(("real", n, None, 0, seed))
            for name in sets.synthetic:
                plan += [("real+synthetic", n, name, m, seed) for m in settings.synthetic]
        for name in sets.synthetic:
            plan += [("synthetic", 0, name, m, seed) for m in settings.synthetic]
    records = []
    for done, (arm, n, name, m, seed) in enumerate(plan):
        train = sets.real[:n] + (sets.synthetic[name][:m] if name else [])
        start = time.perf_counter()
        result = score_arm(train, sets, settings, seed)
        records.append({"arm": arm, "real": n, "synthetic_set": name, "synthetic": m, "seed": seed,
                        "seconds": time.perf_counter() - start, **result})
        if progress is not None:
            progress(done + 1, len(plan))
    return records


# --- 3. the table ------------------------------------------------------------------------------


def interval(values: list[float]) -> dict:
    """Mean and 95% Student-t interval over seeds (NaN bounds for a single seed)."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return {"mean": mean, "low": float("nan"), "high": float("nan"), "n": len(values)}
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(values)}


def paired_p(a: list[float], b: list[float]) -> float:
    """Two-sided paired t-test p-value of a vs b over seeds (NaN for one seed or no spread)."""
    from scipy import stats

    if len(a) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # identical arms: scipy warns and returns NaN, which we keep
        return float(stats.ttest_rel(a, b).pvalue)


def summarize(records: list[dict], sets: Sets, settings: AugmentSettings) -> list[dict]:
    """One table row per (N, synthetic set, M)."""

    def pick(arm, n, name, m, key="score"):
        chosen = [r for r in records if r["arm"] == arm and r["real"] == n and r["synthetic_set"] == name
                  and r["synthetic"] == m]
        chosen.sort(key=lambda r: r["seed"])
        if key == "score":
            return [r["score"] for r in chosen]
        return [r["per_class"].get(key, float("nan")) for r in chosen]

    def pick_base(arm, n, name, m, base):
        """Per seed, the mean per-class figure over the ``base`` classes."""
        per_class = np.array([pick(arm, n, name, m, key) for key in sorted(base)], dtype=float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a seed whose held-out crops hold none of the types: NaN
            return list(np.nanmean(per_class, axis=0))

    rows = []
    for n in sorted({r["real"] for r in records if r["arm"] == "real"}):
        real = pick("real", n, None, 0)
        base = {s.label for s in sets.real[:n]}  # the types the real set already holds
        for name in sets.synthetic:
            for m in settings.synthetic:
                mixed = pick("real+synthetic", n, name, m)
                base_gain = np.subtract(pick_base("real+synthetic", n, name, m, base), pick_base("real", n, None, 0, base))
                row = {
                    "real": n, "synthetic_set": name, "synthetic": m,
                    "real_only": interval(real),
                    "real_plus_synthetic": interval(mixed),
                    "synthetic_only": interval(pick("synthetic", 0, name, m)),
                    "gain": interval(list(np.subtract(mixed, real))),
                    "p_value": paired_p(mixed, real),
                    # the paired gain over the types the real training set holds: where real examples
                    # exist, synthetic ones must not make the model worse
                    "base_types": sorted(base),
                    "base_types_gain": interval(list(base_gain)),
                }
                if sets.phantom and any(s.label == HELD_OUT_TYPE for s in sets.held_out):
                    row["held_out_type"] = {
                        "real_only": interval(pick("real", n, None, 0, HELD_OUT_TYPE)),
                        "real_plus_synthetic": interval(pick("real+synthetic", n, name, m, HELD_OUT_TYPE)),
                    }
                rows.append(row)
    return rows


def _cell(figure: dict) -> str:
    if np.isnan(figure["low"]):
        return f"{figure['mean']:.3f}"
    return f"{figure['mean']:.3f} [{figure['low']:.3f}, {figure['high']:.3f}]"


def format_table(rows: list[dict], header: str) -> str:
    held = any("held_out_type" in r for r in rows)
    columns = ["N real", "synthetic set", "M", "real only", "real + synthetic", "synthetic only",
               "gain (real+syn - real)", "p (paired t)", "gain on the real set's types"]
    if held:
        columns += [f"{HELD_OUT_TYPE}*: real only", f"{HELD_OUT_TYPE}*: real + synthetic"]
    lines = [[str(r["real"]), r["synthetic_set"], str(r["synthetic"]), _cell(r["real_only"]),
              _cell(r["real_plus_synthetic"]), _cell(r["synthetic_only"]),
              ("+" if r["gain"]["mean"] >= 0 else "") + _cell(r["gain"]),
              "-" if np.isnan(r["p_value"]) else f"{r['p_value']:.3g}",
              ("+" if r["base_types_gain"]["mean"] >= 0 else "") + _cell(r["base_types_gain"])]
             + ([_cell(r["held_out_type"]["real_only"]), _cell(r["held_out_type"]["real_plus_synthetic"])]
                if held else [])
             for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(columns)]
    out = [header, "  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    out += ["  ".join(v.ljust(w) for v, w in zip(line, widths)) for line in lines]
    if held:
        out.append("* held out: no real training crop has this type; the figure is over its held-out crops only")
    return "\n".join(out)


def header_text(settings: AugmentSettings, sets: Sets) -> str:
    import torch

    network = "MONAI UNet, Dice" if settings.task == "segment" else "MONAI Classifier, one-vs-rest AUC"
    source = (f"real: {settings.real_manifest}; synthetic: {settings.synthetic_manifest}" if not sets.phantom
              else f"phantom cases; synthetic lesions inpainted into healthy twins by the "
              f"{settings.model or 'demo'} model ({settings.steps} steps) through `medgen batch`")
    held = sum(s.label == HELD_OUT_TYPE for s in sets.held_out)
    return (
        f"medgen bench augment: {settings.task} ({network}), {settings.seeds} seed(s) per arm, mean [95% interval]; "
        f"{len(sets.held_out)} held-out real crops" + (f" ({held} {HELD_OUT_TYPE})" if sets.phantom else "")
        + f"; {settings.train_steps} training steps x {settings.batch_size} crops of {settings.crop_px}x"
        f"{settings.crop_px} px; {source}\nhardware: {hardware_text()}, torch {torch.__version__}"
    )


def hardware_text() -> str:
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} CPU(s), "
            f"{torch.get_num_threads()} torch thread(s), load average {load:.1f} at the end")


# --- the run -----------------------------------------------------------------------------------


def run_augment_bench(settings: AugmentSettings, work_dir: Path | None = None, progress=None) -> dict:
    """Build the sets, train every arm, and return the report (table rows, records, timings)."""
    import torch

    check_settings(settings)
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        return _run(settings, work_dir, progress, start)
    finally:
        torch.set_num_threads(threads)


def _run(settings: AugmentSettings, work_dir: Path | None, progress, start: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="medgen-augment-") as temporary:
        folder = Path(work_dir) if work_dir is not None else Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        sets = build_sets(settings, folder)
    sets_s = time.perf_counter() - start
    records = run_arms(sets, settings, progress)
    rows = summarize(records, sets, settings)
    report = {
        "settings": asdict(settings),
        "header": header_text(settings, sets),
        "rows": rows,
        "records": records,
        "sets": {"real": len(sets.real), "held_out": len(sets.held_out), "classes": sets.classes,
                 "synthetic": {k: len(v) for k, v in sets.synthetic.items()}, "batch": sets.batch},
        "seconds": {"sets": sets_s, "training": time.perf_counter() - start - sets_s,
                    "total": time.perf_counter() - start},
    }
    report["table"] = format_table(rows, report["header"])
    return report


def write_json(report: dict, path: Path) -> Path:
    """Write the report whole or not at all (a temporary file renamed into place)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False,
                                         encoding="utf-8") as handle:
            json.dump(report, handle, indent=2, allow_nan=True)
            handle.write("\n")
        os.replace(handle.name, path)
    except OSError as error:
        raise OutputError(path, f"cannot write the JSON report: {error.strerror or error}") from None
    return path


def _say(text: str) -> None:
    print(f"medgen bench augment: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    from medgen.progress import ProgressBar

    args = build_parser().parse_args(argv)
    settings = AugmentSettings(
        real=tuple(args.real) if args.real else None, synthetic=tuple(args.synthetic), task=args.task,
        seeds=args.seeds, held_out=args.held_out, steps=args.steps, train_steps=args.train_steps,
        batch_size=args.batch_size, crop_px=args.crop_px, model=args.model, device=args.device,
        adapters=tuple(args.adapters), token=args.token, real_manifest=args.real_manifest,
        synthetic_manifest=args.synthetic_manifest, test_manifest=args.test_manifest,
        test_fraction=args.test_fraction, threads=args.threads,
    )
    if args.json is not None and args.json.is_dir():
        raise OutputError(args.json, "--json names a folder; give a file path")
    with ProgressBar("training", unit="run") as bar:
        report = run_augment_bench(settings, work_dir=args.work_dir, progress=bar.update)
    print(report["table"])
    print(f"{report['seconds']['total']:.0f} s (sets {report['seconds']['sets']:.0f} s, "
          f"training {report['seconds']['training']:.0f} s)")
    if args.json is not None:
        print(f"wrote {write_json(report, args.json)}")
    return 0
