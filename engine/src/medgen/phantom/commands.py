"""Entry points of the phantom commands; `medgen.cli` parses nothing of its own for them.

- `medgen phantom make`        -> :func:`make_main`
- `medgen phantom train-base`  -> :func:`train_base_main`
- `medgen bench quality`       -> :func:`bench_quality_main`
- `medgen demo`                -> :func:`run_demo`
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from medgen.api import InpaintResult, ProgressCallback
from medgen.cli_help import hidden_alias, new_parser
from medgen.errors import OutputError
from medgen.generate.control import CONTROL_KINDS
from medgen.phantom.model import DEMO_MODEL_HELP
from medgen.progress import ProgressBar

DEMO_PROMPT = "hypodense liver lesion, 2 cm"
DEMO_CASE_SEED = (2025, 0)
DEMO_SEED = 1234
ALL_TYPE_NAMES = ("cyst", "hyperdense", "calcification", "fat", "spiculated")


# --- medgen phantom make --------------------------------------------------------------------------


def build_make_parser() -> argparse.ArgumentParser:
    parser = new_parser(
        "medgen phantom make",
        "Write procedural CT phantoms with known lesions as DICOM series, .seg.nrrd and DICOM SEG.",
    )
    parser.add_argument("--out", type=Path, required=True, help="new or empty folder")
    parser.add_argument("--cases", type=int, default=5, help="number of cases")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same cases, byte for byte")
    parser.add_argument(
        "--types",
        nargs="+",
        choices=ALL_TYPE_NAMES,
        default=list(ALL_TYPE_NAMES),
        help="lesion types, assigned to cases in turn (default: all five)",
    )
    parser.add_argument("--slices", type=int, default=8, dest="num_slices", help="slices per case (5 mm apart)")
    return parser


def make_main(argv: list[str] | None = None) -> int:
    """Write N phantom cases (CT series, healthy twin, .seg.nrrd, DICOM SEG, truth.json) under --out."""
    parser = build_make_parser()
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error(f"--cases must be at least 1, got {args.cases}")
    if args.num_slices < 3:
        parser.error(f"--slices must be at least 3, got {args.num_slices}")
    _check_new_folder(args.out)

    from medgen.phantom.cases import make_case
    from medgen.phantom.series import write_case

    index = []
    for i in range(args.cases):
        lesion_type = args.types[i % len(args.types)]
        case = make_case((args.seed, i), lesion_type, case_id=f"case-{i + 1:03d}", num_slices=args.num_slices)
        files = write_case(case, args.out / case.case_id)
        # relative to cases.json itself, so two runs into two folders write the same index and a moved
        # folder still resolves
        folder = Path(files.folder).relative_to(args.out).as_posix()
        index.append({"case": case.case_id, "lesion_type": lesion_type, "folder": folder})
        print(f"{files.folder}: {case.lesion.spec.label} in the {case.organ.name.lower()}, slices {case.lesion_slices}")
    (args.out / "cases.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.cases} phantom case(s) to {args.out}")
    return 0


def _check_new_folder(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(out, "already exists and is not empty; choose a new --out directory")


# --- medgen phantom train-base --------------------------------------------------------------------


def build_train_base_parser() -> argparse.ArgumentParser:
    from medgen.phantom.train_base import TrainSettings

    defaults = TrainSettings()
    parser = new_parser(
        "medgen phantom train-base",
        "Train the phantom demo model (VAE, UNet, text encoder) from scratch; settings in "
        "medgen/phantom/train_base.py:TrainSettings, figures in engine/PHANTOM.md.",
    )
    parser.add_argument("--out", type=Path, required=True, help="new or empty folder for the diffusers model")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the crops, weights and noise")
    parser.add_argument("--vae-steps", type=int, default=defaults.vae_steps, help="optimizer steps of the VAE")
    parser.add_argument("--unet-steps", type=int, default=defaults.unet_steps, help="optimizer steps of the UNet")
    parser.add_argument("--pairs", type=int, default=defaults.num_pairs, help="phantom crops to train on")
    parser.add_argument("--threads", type=int, default=defaults.num_threads, help="torch CPU threads")
    parser.add_argument("--pairs-cache", type=Path,
                        help="an .npz to keep the phantom crops between runs (default: none, made anew)")
    return parser


def train_base_main(argv: list[str] | None = None) -> int:
    """Train the demo model from scratch (about 45 minutes on 2 CPU cores) into --out."""
    from medgen.phantom.train_base import TrainSettings

    args = build_train_base_parser().parse_args(argv)
    _check_new_folder(args.out)

    import logging

    from medgen.phantom.train_base import train_base_model

    settings = TrainSettings(
        seed=args.seed,
        vae_steps=args.vae_steps,
        unet_steps=args.unet_steps,
        num_pairs=args.pairs,
        num_threads=args.threads,
    )
    logging.getLogger("medgen.phantom.train_base").setLevel(logging.INFO)
    start = time.perf_counter()
    out = train_base_model(args.out, settings, pairs_cache=args.pairs_cache)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({size / 1e6:.1f} MB) in {(time.perf_counter() - start) / 60:.1f} min")
    return 0


# --- medgen phantom train-adapters ----------------------------------------------------------------


def build_train_adapters_parser() -> argparse.ArgumentParser:
    from medgen.phantom.train_base import ModalityAdapterSettings

    defaults = ModalityAdapterSettings()
    parser = new_parser(
        "medgen phantom train-adapters",
        "Train the demo model's MR and CR adapters (LoRA) on phantom crops rendered as T1 MR and as projection "
        "radiographs, into MODEL/modalities/, and state them in MODEL/medgen.json; see engine/PHANTOM.md.",
    )
    parser.add_argument("--model", type=Path, required=True, help="the base model folder (a copy of the demo model)")
    parser.add_argument("--crops", type=int, default=defaults.crops, help="phantom crops per modality")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps per adapter")
    parser.add_argument("--rank", type=int, default=defaults.rank, help="LoRA rank")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the crops, weights and noise")
    return parser


def train_adapters_main(argv: list[str] | None = None) -> int:
    """Train both modality adapters (about 12 minutes on 2 CPU cores) into --model."""
    from medgen.phantom.train_base import ModalityAdapterSettings, train_modality_adapters

    args = build_train_adapters_parser().parse_args(argv)
    if not (args.model / "model_index.json").is_file():
        print(f"medgen phantom train-adapters: error: {args.model}: not a diffusers model folder", file=sys.stderr)
        return 2
    settings = ModalityAdapterSettings(crops=args.crops, steps=args.steps, rank=args.rank, seed=args.seed)
    start = time.perf_counter()
    for folder in train_modality_adapters(args.model, settings):
        print(f"wrote {folder}")
    print(f"stated in {args.model / 'medgen.json'} in {(time.perf_counter() - start) / 60:.1f} min")
    return 0


# --- medgen bench quality -------------------------------------------------------------------------


def build_bench_quality_parser() -> argparse.ArgumentParser:
    from medgen.phantom.quality import QualitySettings

    defaults = QualitySettings()
    parser = new_parser(
        "medgen bench quality",
        "Prompt fidelity, mask adherence, outside-mask identity and diversity on held-out phantoms.",
    )
    parser.add_argument("--cases", type=int, default=defaults.cases, help="held-out phantom cases per lesion type")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="case stream (training never uses 1000)")
    parser.add_argument("--variants", type=int, default=defaults.variants, help="seeds per prompt (>= 2)")
    parser.add_argument("--steps", type=int, default=defaults.num_inference_steps, help="denoising steps")
    parser.add_argument("--guidance", type=float, default=defaults.guidance_scale, help="classifier-free guidance scale")
    parser.add_argument("--types", nargs="+", choices=ALL_TYPE_NAMES, default=list(defaults.types),
                        help="lesion types to prompt for, one row each")
    parser.add_argument("--no-baseline", action="store_true", help="skip the empty-prompt row")
    parser.add_argument("--model", help=DEMO_MODEL_HELP)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="where the model runs")
    parser.add_argument("--json", type=Path, help="also write every number to this file (default: none)")
    parser.add_argument("--work-dir", type=Path, help="keep the cases and outputs here (default: a temp folder)")
    parser.add_argument("--strict", action="store_true", help="also fail when a fidelity/Dice/diversity goal is missed")
    parser.add_argument("--adapter", action="append", default=[], metavar="PATH[:WEIGHT]",
                        help="textual inversion or LoRA for the prompted rows (repeatable)")
    parser.add_argument("--token", help="the textual inversion's token; the spiculated row is prompted '<token> mass' "
                        "(default: the adapter's own)")
    parser.add_argument("--mask-shape", choices=["lesion", "disk"], default=defaults.mask_shape,
                        help="inpaint under the true mask or a round disk around it (the border then comes from the model)")
    parser.add_argument("--case-types", nargs="+", choices=ALL_TYPE_NAMES,
                        help="the cases' own lesion types, in turn (default: all five)")
    parser.add_argument("--mask-dilate", type=float, default=defaults.mask_dilate_mm, dest="mask_dilate_mm",
                        metavar="MM", help="the engine's inpaint region: the mask grown by this many millimetres")
    hidden_alias(parser, "--mask-dilate-mm", dest="mask_dilate_mm", type=float)
    parser.add_argument("--mask-blur", type=float, default=defaults.mask_blur_px, metavar="PX",
                        help="feather width in pixels of the slice")
    parser.add_argument("--controlnet", metavar="PATH[:SCALE]",
                        help="a diffusers ControlNet for every row (default: none)")
    parser.add_argument("--control-from", choices=CONTROL_KINDS, default=defaults.control_from,
                        help="what the ControlNet's control image is made from")
    parser.add_argument("--no-noise-match", action="store_false", dest="match_noise",
                        help="keep the model's own texture in every run (default: the source's noise texture)")
    parser.add_argument("--slice-consistency", action="store_true", dest="slice_consistency",
                        help="every run with smoothing along the slice axis (default: without, as the engine)")
    hidden_alias(parser, "--no-slice-consistency", dest="slice_consistency", action="store_false")  # the default
    parser.add_argument("--no-consistency-compare", action="store_false", dest="compare_slice_consistency",
                        help="skip the extra run per case with the other slice consistency setting (default: run it and "
                        "print the 3D figures both ways)")
    return parser


def bench_quality_main(argv: list[str] | None = None) -> int:
    """Print the quality table; exit 1 if outside-mask identity is below 100% (or, with --strict, any goal is missed)."""
    from medgen.phantom.quality import QualitySettings

    parser = build_bench_quality_parser()
    args = parser.parse_args(argv)
    if args.token and not args.adapter:
        parser.error("--token names the token of an --adapter; no adapter was given")

    from medgen.phantom.quality import format_report, run_quality_bench, write_json

    settings = QualitySettings(
        cases=args.cases,
        seed=args.seed,
        variants=args.variants,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        types=tuple(args.types),
        baseline=not args.no_baseline,
        model=args.model,
        device=args.device,
        adapters=tuple(args.adapter),
        token=args.token,
        mask_shape=args.mask_shape,
        case_types=tuple(args.case_types) if args.case_types else None,
        mask_dilate_mm=args.mask_dilate_mm,
        mask_blur_px=args.mask_blur,
        match_noise=args.match_noise,
        slice_consistency=args.slice_consistency,
        compare_slice_consistency=args.compare_slice_consistency,
        controlnet=args.controlnet,
        control_from=args.control_from,
    )
    if args.work_dir is not None:
        _check_new_folder(args.work_dir)
    with ProgressBar("bench quality", unit="run") as bar:
        report = run_quality_bench(settings, work_dir=args.work_dir, progress=bar.update)
    print(format_report(report))
    if args.json:
        print(f"wrote {write_json(report, args.json)}")
    met = report.goals_met()
    if not met["identity"]:
        return 1
    if args.strict and not all(met.values()):
        return 1
    return 0


# --- medgen demo ----------------------------------------------------------------------------------


def _first_free(out: Path) -> Path:
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return out
    number = 2
    while Path(f"{out}-{number}").exists():
        number += 1
    return Path(f"{out}-{number}")


def run_demo(
    out: Path,
    *,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    num_slices: int = 8,
    num_variants: int = 2,
    num_inference_steps: int | None = None,
) -> InpaintResult:
    """The whole path on a phantom with the shipped demo model; nothing is downloaded.

    Writes ``out/phantom/`` (a phantom CT with a liver cyst, its healthy twin, the lesion as
    .seg.nrrd and DICOM SEG) and inpaints the healthy twin under the cyst's mask from a prompt into
    ``out/synthetic/`` (variant series, provenance.json, preview.png). ``out`` that is taken gets
    a numbered sibling instead.
    """
    from medgen.api import Inpainter, InpaintRequest
    from medgen.phantom.cases import make_case
    from medgen.phantom.model import (
        DEMO_CROP_PADDING_PX,
        DEMO_GUIDANCE_SCALE,
        DEMO_STEPS,
        demo_model_path,
    )
    from medgen.phantom.series import write_case

    wanted, out = Path(out), _first_free(Path(out))
    if out != wanted:  # a second demo never touches the first one's files, and says where it goes instead
        print(f"medgen demo: {wanted} already holds files; writing this run to {out} (choose another with --out)")
    # 1. A phantom case: the scan with a cyst, and its healthy twin to inpaint into
    case = make_case(DEMO_CASE_SEED, "cyst", case_id="case-001", num_slices=num_slices)
    files = write_case(case, out / "phantom")
    print(f"medgen demo: phantom CT with a {case.lesion.spec.label} in {files.ct_dir}, its healthy twin in "
          f"{files.healthy_dir}, the lesion mask in {files.seg_nrrd}")
    # 2. Inpaint the twin under the lesion's mask from the prompt, with the shipped model
    request = InpaintRequest(
        input=files.healthy_dir,
        mask=files.seg_nrrd,
        prompt=DEMO_PROMPT,
        out=out / "synthetic",
        all_slices=True,
        num_variants=num_variants,
        seed=DEMO_SEED,
        num_inference_steps=num_inference_steps or DEMO_STEPS,
        guidance_scale=DEMO_GUIDANCE_SCALE,
        crop_padding_px=DEMO_CROP_PADDING_PX,
        window="soft_tissue",
    )
    print(f"medgen demo: inpainting {DEMO_PROMPT!r} with the phantom demo model (trained on phantoms only)")
    return Inpainter(demo_model_path(), device=device)(request, progress)
