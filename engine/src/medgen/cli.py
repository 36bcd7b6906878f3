"""The `medgen` command: parse arguments, call the engine, print progress and one-line errors."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from medgen.cli_help import HelpFormatter, hidden_alias
from medgen.errors import MedgenError
from medgen.phantom.model import DEMO_MODEL_HELP
from medgen.progress import ProgressBar
from medgen.threads import set_threads, threads_wanted

EXIT_BAD_INPUT = 2
QUIET_LIBRARIES = {"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
"""Importing diffusers already logs (about optional backends such as torchvision) and saving shows loading
bars: the environment silences them before any import; our own bar and one-line errors are what is shown."""
MODEL_LOADING_COMMANDS = {"inpaint", "demo", "bench", "serve", "phantom", "train", "batch"}


def _add_inpaint_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "inpaint",
        help="inpaint a lesion under a mask and write synthetic series",
        description="Inpaint the masked region of INPUT from a prompt and write each variant as a synthetic series.",
    )
    p.add_argument("input", type=Path, help="DICOM file, folder holding one series, NIfTI/NRRD volume or PNG")
    p.add_argument("--mask", type=Path, required=True, help=".seg.nrrd, NIfTI/NRRD labelmap, DICOM SEG or PNG")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--segment", help="segment name (.seg.nrrd) or segment label (DICOM SEG) "
                       "(default: the only segment; an error when there are several)")
    which.add_argument("--label", type=int, help="label value (labelmap) or segment number (DICOM SEG) "
                       "(default: every non-zero voxel of a labelmap)")
    slices = p.add_mutually_exclusive_group()
    slices.add_argument(
        "--slice", type=int, nargs="+", dest="slices", metavar="K",
        help="0-based slice indices along INPUT's slice axis: DICOM slices and frames sorted by position along the "
        "plane's normal (row x column direction), 0 the lowest, as Slicer and ITK sort a series (a multi-frame "
        "file's frames may be re-ordered: slice K is not always frame K+1); a NIfTI/NRRD file's last axis; 0 for "
        "a single image (default: the one slice the mask touches)",
    )
    slices.add_argument("--all-slices", action="store_true", help="every slice the mask touches")
    p.add_argument(
        "--resample-mask", action="store_true",
        help="resample a mask drawn on another plane or spacing onto INPUT's voxels by nearest neighbour "
        "(default: off; such a mask is refused)",
    )
    p.add_argument(
        "--prompt", required=True,
        help="what to draw in the mask, e.g. 'hypodense liver lesion, 2 cm'; '[a:0.3|b:0.7]' blends alternatives",
    )
    p.add_argument("--negative-prompt", help="what to steer away from, e.g. 'artifact' (default: none)")
    p.add_argument("--model", help=DEMO_MODEL_HELP)
    p.add_argument("--model-config", type=Path, metavar="DIR",
                   help="local diffusers folder giving a single-file model's layout (default: none; needed for a "
                   "single-file --model)")
    p.add_argument(
        "--adapter", action="append", default=[], dest="adapters", metavar="PATH[:WEIGHT]",
        help="textual inversion or LoRA (.safetensors, or a diffusers adapter folder); repeatable",
    )
    p.add_argument("--token", help="token of the textual inversion given with --adapter (default: from its file)")
    p.add_argument("--controlnet", metavar="PATH[:SCALE]", help="diffusers ControlNetModel folder (scale default 1)")
    p.add_argument(
        "--control-from", choices=["mask-edges", "mask", "source-edges"], default="mask-edges",
        help="what the ControlNet's control image is made from (default: mask-edges)",
    )
    p.add_argument("--variants", type=int, default=1, dest="num_variants", metavar="N",
                   help="synthetic series to write, each from its own seed")
    p.add_argument(
        "--prompt-variations", metavar="FILE|LIST",
        help="variant v gets variation v mod n in front of the prompt (or in place of '{}' in it): a file with "
        "one per line, or a comma-separated list such as 'small,lobulated,rim-enhancing'",
    )
    p.add_argument("--seed", type=int, help="seed of the first variant (variant v uses seed + v) "
                   "(default: random, recorded in provenance.json)")
    p.add_argument("--steps", type=int, dest="num_inference_steps", metavar="N",
                   help="denoising steps (default: the model's medgen.json, else 30; the demo model: 20)")
    p.add_argument("--guidance", type=float, dest="guidance_scale", metavar="SCALE",
                   help="classifier-free guidance scale; 1 turns guidance off "
                   "(default: the model's medgen.json, else 7.5; the demo model: 1.4)")
    p.add_argument("--strength", type=float, default=1.0,
                   help="0-1: how far the masked region is re-noised; 1 replaces it entirely")
    p.add_argument("--cache-interval", type=int, default=1, dest="cache_interval", metavar="N",
                   help="run the whole UNet every N-th denoising step only and reuse its deep features in the steps "
                   "between (DeepCache; 1-10; quality cost measured by `medgen bench cache`) (default: 1, off)")
    p.add_argument("--scheduler", choices=["ddim", "dpm++", "euler", "unipc"],
                   help="sampler (default: the one in the model folder's scheduler/scheduler_config.json)")
    p.add_argument("--mask-dilate", type=float, default=2.0, dest="mask_dilate_mm", metavar="MM",
                   help="grow the mask by this many millimetres before inpainting, so the lesion's rim is generated "
                   "too; at least 2 pixels when above 0, room for the lesion's edge to spread as the scanner's "
                   "blur spreads a real one's; nothing outside the grown mask changes (default: 2 mm)")
    hidden_alias(p, "--mask-dilate-mm", dest="mask_dilate_mm", type=float)
    p.add_argument("--mask-blur", type=float, default=4.0, dest="mask_blur_px", metavar="PX",
                   help="width of the feathered edge, in pixels of the slice, over which generated and source blend")
    p.add_argument(
        "--crop-padding", type=int, dest="crop_padding_px", metavar="PX",
        help="pixels of context kept around the mask in the crop the model sees "
        "(default: the model's medgen.json, else 32; the demo model: 16)"
    )
    p.add_argument("--window", help="CT window preset: soft_tissue, lung, bone, brain, liver, mediastinum "
                   "(default: the model's medgen.json, else soft_tissue for CT)")
    p.add_argument("--window-center", type=float, metavar="VALUE",
                   help="window centre in modality units (HU for CT); with --window-width overrides --window "
                   "(default: the preset, or the 0.5-99.5 percentiles for MR, X-ray and US)")
    p.add_argument("--window-width", type=float, metavar="VALUE",
                   help="window width in modality units; given with --window-center (default: as --window-center)")
    p.add_argument("--force-modality", action="store_true",
                   help="run a source whose modality contradicts the model's medgen.json, with the source's own "
                   "default window (default: refuse with exit 2)")
    p.add_argument("--modality", metavar="MODALITY",
                   help="the source's modality (CT, MR, CR...) when its file states none, as NIfTI, NRRD and PNG "
                   "do; picks the model's contract and adapter for that modality (default: the file's own "
                   "Modality, else CT when the values are HU-like, else unknown)")
    p.add_argument("--no-noise-match", action="store_false", dest="match_noise",
                   help="keep the model's own texture instead of the source's measured noise std and spectrum "
                   "(default: match the source's noise)")
    p.add_argument("--slice-consistency", action="store_true", dest="slice_consistency",
                   help="also smooth the generated lesion along the slice axis, Gaussian sigma 2 mm, at least one "
                   "slice (default: off; the slices of a variant share their starting noise, which keeps them "
                   "consistent as a real lesion's are)")
    hidden_alias(p, "--no-slice-consistency", dest="slice_consistency", action="store_false")  # now the default
    p.add_argument("--no-edge-match", action="store_false", dest="edge_match",
                   help="keep the generated lesion's own border instead of blurring it to the source's measured "
                   "edge spread so it spills past the mask as a real lesion's does (default: match it where "
                   "--mask-dilate leaves room for 2.5 edge sigmas past the mask; the provenance records the "
                   "measured sigma and whether it was matched)")
    p.add_argument("--no-calibrate-intensity", action="store_false", dest="calibrate_intensity",
                   help="keep the lesion's brightness as the model drew it instead of scaling it to what real "
                   "lesions of the prompted type measure, where the model's medgen.json states it "
                   "(lesion_intensity) (default: calibrate)")
    p.add_argument("--no-seam-harmonize", action="store_false", dest="seam_harmonize",
                   help="do not shift the generated lesion's border to meet the source's brightness "
                   "(default: meet it; part of the noise matching, so --no-noise-match turns it off too)")
    p.add_argument("--only-modified", action="store_true", help="write just the inpainted slices")
    p.add_argument("--seg", action="store_true", dest="write_seg", help="also write a DICOM SEG of the inpainted region")
    p.add_argument(
        "--allow-unchanged", action="store_true",
        help="write the result even if no voxel changed (default: such a run warns and writes nothing)",
    )
    p.add_argument("--dicom", action="store_true", dest="write_dicom", help="NIfTI/NRRD/PNG input: also write DICOM")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the model runs; auto takes CUDA when there is one")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"],
                   help="model precision (default: bf16 or fp16 on CUDA, fp32 on the CPU)")
    p.add_argument("--out", type=Path, required=True,
                   help="new or empty folder for variant-01/, ..., provenance.json and preview.png")
    p.add_argument("--report", action="store_true",
                   help="also write OUT/report.html, the self-contained visual QA report (default: off; "
                   "`medgen report OUT` writes it later)")
    p.set_defaults(handler=_run_inpaint)


def _run_inpaint(args: argparse.Namespace) -> int:
    from medgen.api import Inpainter, InpaintRequest
    from medgen.generate.prompt_variations import read_prompt_variations

    variations = read_prompt_variations(args.prompt_variations) if args.prompt_variations else None
    request = InpaintRequest(
        input=args.input,
        mask=args.mask,
        prompt=args.prompt,
        out=args.out,
        negative_prompt=args.negative_prompt,
        segment=args.segment,
        label=args.label,
        slices=args.slices,
        all_slices=args.all_slices,
        resample_mask=args.resample_mask,
        num_variants=args.num_variants,
        seed=args.seed,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        strength=args.strength,
        mask_dilate_mm=args.mask_dilate_mm,
        mask_blur_px=args.mask_blur_px,
        crop_padding_px=args.crop_padding_px,
        window=args.window,
        window_center=args.window_center,
        window_width=args.window_width,
        only_modified=args.only_modified,
        write_dicom=args.write_dicom,
        write_seg=args.write_seg,
        adapters=args.adapters,
        token=args.token,
        controlnet=args.controlnet,
        control_from=args.control_from,
        prompt_variations=variations,
        allow_unchanged=args.allow_unchanged,
        force_modality=args.force_modality,
        source_modality=args.modality,
        match_noise=args.match_noise,
        slice_consistency=args.slice_consistency,
        seam_harmonize=args.seam_harmonize,
        edge_match=args.edge_match,
        calibrate_intensity=args.calibrate_intensity,
        cache_interval=args.cache_interval,
    )
    inpainter = Inpainter(
        args.model, device=args.device, dtype=args.dtype, scheduler=args.scheduler, config=args.model_config
    )
    with ProgressBar("inpainting") as bar:
        result = inpainter(request, progress=bar.update)
    _print_result(result)
    if args.report:
        from medgen.qa.report import write_report

        print(f"  {write_report(result.out)}")
    return 0


def _print_result(result) -> None:
    for note in result.notes:
        print(note)
    for v, figures in enumerate(result.texture):
        print(
            f"variant {v + 1:02d}: noise std ratio {figures['noise_std_ratio']}, seam strength ratio "
            f"{figures['seam_strength_ratio']} (generated region / surrounding tissue; 1 = same texture)"
        )
    print(f"wrote {len(result.variant_dirs)} variant(s) of slice(s) {result.slices} (seeds {result.seeds}):")
    for directory in result.variant_dirs:
        print(f"  {directory}")
    print(f"  {result.provenance_path}")
    print(f"  {result.preview_path}")


def _add_model_parser(subparsers) -> None:
    p = subparsers.add_parser("model", help="make or inspect models")
    model_commands = p.add_subparsers(dest="model_command", required=True)
    tiny = model_commands.add_parser(
        "create-tiny", help="write a tiny random-weight SD inpainting model (for plumbing tests; its output is noise)"
    )
    tiny.add_argument("dir", type=Path, help="new folder for the diffusers model")
    tiny.add_argument("--kind", choices=["inpaint", "base"], default="inpaint", help="9-channel or 4-channel UNet")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights (the same seed, the same bytes)")
    tiny.set_defaults(handler=_run_create_tiny)


def _run_create_tiny(args: argparse.Namespace) -> int:
    from medgen.generate.tiny import create_tiny_model

    path = create_tiny_model(args.dir, kind=args.kind, seed=args.seed)
    print(f"wrote a tiny random-weight {args.kind} model to {path} (its output is noise: use it for plumbing only)")
    return 0


def _add_bench_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks")
    bench_commands = p.add_subparsers(dest="bench_command", required=True)
    speed = bench_commands.add_parser("speed", help="engine path vs plain diffusers, same process", add_help=False)
    speed.set_defaults(handler=_run_bench_speed, passes_arguments_on=True, own_parser="medgen.bench.speed:build_parser")
    quality = bench_commands.add_parser(
        "quality", help="does generation obey prompt and mask? (phantom cases, demo model)", add_help=False
    )
    quality.set_defaults(handler=_run_bench_quality, passes_arguments_on=True,
                         own_parser="medgen.phantom.commands:build_bench_quality_parser")
    batch = bench_commands.add_parser(
        "batch", help="rows per minute of `medgen batch`, local vs Ray, and its overhead per row", add_help=False
    )
    batch.set_defaults(handler=_run_bench_batch, passes_arguments_on=True, own_parser="medgen.bench.batch:build_parser")
    augment = bench_commands.add_parser(
        "augment", help="does synthetic pathology help a downstream model learn? (MONAI UNet/Classifier)",
        add_help=False,
    )
    augment.set_defaults(handler=_run_bench_augment, passes_arguments_on=True,
                         own_parser="medgen.bench.augment:build_parser")
    detect = bench_commands.add_parser(
        "detect", help="can a classifier tell the engine's lesions from real ones? (MONAI Classifier, AUC)",
        add_help=False,
    )
    detect.set_defaults(handler=_run_bench_detect, passes_arguments_on=True,
                        own_parser="medgen.bench.detect:build_parser")
    cache = bench_commands.add_parser(
        "cache", help="fewer UNet evaluations (--cache-interval): seconds per image and quality cost against every "
        "step in full", add_help=False,
    )
    cache.set_defaults(handler=_run_bench_cache, passes_arguments_on=True, own_parser="medgen.bench.cache:build_parser")
    report = bench_commands.add_parser(
        "report", help="size and build time of the run report of a 300-slice, 4-variant run", add_help=False
    )
    report.set_defaults(handler=_run_bench_report, passes_arguments_on=True,
                        own_parser="medgen.bench.report:build_parser")


def _run_bench_cache(args: argparse.Namespace) -> int:
    from medgen.bench.cache import main as cache_main

    return cache_main(args.rest)


def _run_bench_report(args: argparse.Namespace) -> int:
    from medgen.bench.report import main as report_main

    return report_main(args.rest)


def _run_bench_detect(args: argparse.Namespace) -> int:
    from medgen.bench.detect import main as detect_main

    return detect_main(args.rest)


def _run_bench_augment(args: argparse.Namespace) -> int:
    from medgen.bench.augment import main as augment_main

    return augment_main(args.rest)


def _run_bench_batch(args: argparse.Namespace) -> int:
    from medgen.bench.batch import main as batch_main

    return batch_main(args.rest)


def _run_bench_quality(args: argparse.Namespace) -> int:
    from medgen.phantom.commands import bench_quality_main

    return bench_quality_main(args.rest)


def _add_phantom_parser(subparsers) -> None:
    p = subparsers.add_parser("phantom", help="procedural CT phantoms and the demo model trained on them")
    phantom_commands = p.add_subparsers(dest="phantom_command", required=True)
    make = phantom_commands.add_parser("make", help="write phantom CT series with lesion masks", add_help=False)
    make.set_defaults(handler=_run_phantom_make, passes_arguments_on=True,
                      own_parser="medgen.phantom.commands:build_make_parser")
    train = phantom_commands.add_parser("train-base", help="train the demo model on phantoms", add_help=False)
    train.set_defaults(handler=_run_phantom_train_base, passes_arguments_on=True,
                       own_parser="medgen.phantom.commands:build_train_base_parser")
    adapters = phantom_commands.add_parser("train-adapters", add_help=False,
                                           help="train the demo model's MR and CR adapters on phantoms")
    adapters.set_defaults(handler=_run_phantom_train_adapters, passes_arguments_on=True,
                          own_parser="medgen.phantom.commands:build_train_adapters_parser")


def _run_phantom_make(args: argparse.Namespace) -> int:
    from medgen.phantom.commands import make_main

    return make_main(args.rest)


def _run_phantom_train_base(args: argparse.Namespace) -> int:
    from medgen.phantom.commands import train_base_main

    return train_base_main(args.rest)


def _run_phantom_train_adapters(args: argparse.Namespace) -> int:
    from medgen.phantom.commands import train_adapters_main

    return train_adapters_main(args.rest)


def _add_train_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a textual inversion or LoRA adapter on images with lesion masks", add_help=False
    )
    p.set_defaults(handler=_run_train, passes_arguments_on=True, own_parser="medgen.train.cli:build_parser")


def _run_train(args: argparse.Namespace) -> int:
    from medgen.train.cli import train_main

    return train_main(args.rest)


def _run_bench_speed(args: argparse.Namespace) -> int:
    from medgen.bench.speed import main as speed_main

    return speed_main(args.rest) or 0


def _add_serve_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve the engine over HTTP on loopback for the Slicer panel", add_help=False)
    p.set_defaults(handler=_run_serve, passes_arguments_on=True, own_parser="medgen.server.main:build_parser")


def _run_serve(args: argparse.Namespace) -> int:
    from medgen.server.main import serve_main

    return serve_main(args.rest)


def _add_demo_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="phantom CT, mask, prompt, shipped demo model: the whole path once")
    p.add_argument("--out", type=Path, default=Path("medgen-demo"),
                   help="folder for the phantom, its masks and the synthetic series; when it already holds files, "
                   "the first free medgen-demo-2, -3, ... is used and named")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the model runs; auto takes CUDA when there is one")
    p.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from medgen.phantom.commands import run_demo

    with ProgressBar("demo") as bar:
        result = run_demo(args.out, device=args.device, progress=bar.update)
    _print_result(result)
    return 0


def _add_validate_parser(subparsers) -> None:
    from medgen.dicom import validate

    p = subparsers.add_parser("validate", help="check DICOM files against the synthetic-DICOM rules (and dciodvfy)")
    validate.build_parser(p)
    p.set_defaults(handler=validate.run_validate)


def _add_purge_parser(subparsers) -> None:
    from medgen.server import purge_command

    p = subparsers.add_parser("purge", help="delete finished jobs of an engine data folder past their retention time")
    purge_command.build_parser(p)
    p.set_defaults(handler=purge_command.run_purge)


def _add_batch_parser(subparsers) -> None:
    from medgen.batch import command

    p = subparsers.add_parser("batch", help="inpaint every row of a dataset manifest, here or on a Ray cluster, resumably")
    command.build_parser(p)
    p.set_defaults(handler=command.run_batch_command)


def _add_export_parser(subparsers) -> None:
    from medgen.dicom import export

    p = subparsers.add_parser("export", help="send synthetic series to a PACS (DICOM C-STORE or DICOMweb STOW-RS)")
    export.build_parser(p)
    p.set_defaults(handler=export.run_export)


def _add_qa_parsers(subparsers) -> None:
    report = subparsers.add_parser(
        "report", help="one self-contained HTML report of an inpaint run (images, figures, marks, provenance)",
        add_help=False,
    )
    report.set_defaults(handler=_run_report, passes_arguments_on=True)
    review = subparsers.add_parser(
        "review", help="blinded reader study in the browser: add-real, add-run, serve, summary", add_help=False
    )
    review.set_defaults(handler=_run_review, passes_arguments_on=True)


def _run_report(args: argparse.Namespace) -> int:
    from medgen.qa.commands import report_main

    return report_main(args.rest)


def _run_review(args: argparse.Namespace) -> int:
    from medgen.qa.commands import review_main

    return review_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medgen", description="Inpaint synthetic pathology into real scans and write clearly synthetic DICOM.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show informational messages")
    parser.add_argument("--threads", type=int, metavar="N", default=None, help=THREADS_HELP)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_inpaint_parser(subparsers)
    _add_model_parser(subparsers)
    _add_bench_parser(subparsers)
    _add_demo_parser(subparsers)
    _add_phantom_parser(subparsers)
    _add_train_parser(subparsers)
    _add_validate_parser(subparsers)
    _add_serve_parser(subparsers)
    _add_purge_parser(subparsers)
    _add_export_parser(subparsers)
    _add_batch_parser(subparsers)
    _add_qa_parsers(subparsers)
    for sub in all_subparsers(parser):
        sub.formatter_class = HelpFormatter
        if not sub.get_default("passes_arguments_on") and not sub._subparsers:
            # `medgen inpaint ... --threads 1` as well as `medgen --threads 1 inpaint ...`; commands that
            # parse their own options (serve, bench speed, ...) take --threads there or before the command
            sub.add_argument("--threads", type=int, metavar="N", default=argparse.SUPPRESS, help=THREADS_HELP)
    return parser


THREADS_HELP = ("torch CPU threads for this process (default: $MEDGEN_THREADS, else torch's default; "
                "`batch --ray` workers: 1 each, as they share the cores)")


def all_subparsers(parser: argparse.ArgumentParser):
    """Every parser below `parser`, depth first (the commands and their subcommands)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield sub
                yield from all_subparsers(sub)


def own_parser(sub: argparse.ArgumentParser) -> argparse.ArgumentParser | None:
    """The full parser of a command that parses its own options (serve, train, bench speed, ...)."""
    from importlib import import_module

    target = sub.get_default("own_parser")
    if not target:
        return None
    module, _, function = target.partition(":")
    return getattr(import_module(module), function)()


def _quiet_library_progress_bars() -> None:
    """Loading bars from diffusers/transformers would bury the one-line errors; ours is the only bar."""
    try:
        import diffusers.utils.logging
        import transformers.utils.logging
    except ImportError:
        return
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()  # e.g. notes about optional image backends


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from disk; never reach for a hub
    for name, value in QUIET_LIBRARIES.items():  # before anything imports them (parsers may)
        os.environ.setdefault(name, value)
    parser = build_parser()
    # `serve` and `bench speed` own their options (and --help); everything after the command goes to them
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passes_arguments_on", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="medgen: %(levelname)s: %(message)s",
    )
    if args.command in MODEL_LOADING_COMMANDS:
        _quiet_library_progress_bars()
    try:
        set_threads(threads_wanted(args.threads))  # once, before any work
        return args.handler(args)
    except MedgenError as error:
        print(f"medgen: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("medgen: interrupted; nothing was left half-written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
