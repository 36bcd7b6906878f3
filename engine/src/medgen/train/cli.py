"""`medgen train textual-inversion|lora|controlnet`: train an adapter on a folder/CSV of scans or on phantoms."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medgen.cli_help import HelpFormatter, new_parser
from medgen.errors import MedgenError
from medgen.phantom.model import DEMO_MODEL_HELP
from medgen.train.loop import OPTIMIZERS, AdapterTrainSettings, check_optimizer


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("medgen train", __doc__)
    kinds = parser.add_subparsers(dest="kind", required=True)
    for kind in ("textual-inversion", "lora", "controlnet"):
        p = kinds.add_parser(kind, formatter_class=HelpFormatter, help=f"train a {kind.replace('-', ' ')} adapter")
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--data", type=Path, help="CSV with columns image,mask,prompt (or a folder with train.csv)")
        if kind == "controlnet":
            source.add_argument("--phantom", type=int, metavar="N",
                                help="train on N crops of the four base phantom lesion types, each with its prompt")
        else:
            source.add_argument("--phantom-spiculated", type=int, metavar="N",
                                help="train on N crops of the held-out spiculated-mass phantoms")
        if kind == "lora":
            source.add_argument("--phantom-mr", type=int, metavar="N",
                                help="train on N crops of the base lesion types rendered as T1 MR (a modality "
                                     "adapter; its contract is the percentile rule)")
            source.add_argument("--phantom-cr", type=int, metavar="N",
                                help="train on N crops of the base lesion types rendered as projection "
                                     "radiographs (a modality adapter for CR/DX; percentile rule)")
        p.add_argument("--base", help="base inpainting model: " + DEMO_MODEL_HELP)
        p.add_argument("--out", type=Path, required=True, help="new or empty folder for the adapter")
        p.add_argument("--prompt", help="one prompt for every phantom crop (default: " + {
            "textual-inversion": "'<token> mass'", "lora": "'spiculated mass'",
            "controlnet": "each lesion type's own prompt"}[kind] + ")")
        p.add_argument("--steps", type=int, default=400, help="optimizer steps")
        p.add_argument("--batch-size", type=int, default=16, help="crops per optimizer step")
        p.add_argument("--learning-rate", type=float, help="(default: " + {
            "textual-inversion": "5e-3", "lora": "1e-3", "controlnet": "1e-4"}[kind] + ")")
        p.add_argument("--seed", type=int, default=0, help="seed of the crops, initial weights, noise and timesteps")
        p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]; auto takes CUDA when there is one")
        p.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "fp16", "bf16"),
                       help="accelerate's mixed precision; auto is bf16 or fp16 on CUDA, none on the CPU")
        p.add_argument("--gradient-checkpointing", action="store_true",
                       help="recompute activations in the backward pass: less memory, about 30%% slower")
        p.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                       help="save an accelerate checkpoint every so many steps, for --resume; 0: only the last one")
        p.add_argument("--validation-every", type=int, default=0, metavar="STEPS",
                       help="write validation images every so many steps; 0: none")
        p.add_argument("--resume", type=Path, help="an accelerate checkpoint folder (OUT/checkpoints/step-K)")
        p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw",
                       help="adamw-8bit needs bitsandbytes (a quarter of the optimizer state memory)")
        if kind == "textual-inversion":
            p.add_argument("--token", default="<spiculated>", help="the new word the prompt will use")
            p.add_argument("--initializer", default="mass",
                           help="an existing word whose embedding the token starts from")
            p.add_argument("--num-vectors", type=int, default=2, help="embedding vectors behind the token")
        elif kind == "lora":
            p.add_argument("--rank", type=int, default=4, help="LoRA rank of the q/k/v/out projections")
        else:
            p.add_argument("--control-from", choices=("mask-edges", "mask"), default="mask-edges",
                           help="what the control image is made from")
            p.add_argument("--max-dilate-px", type=int, default=6,
                           help="inpaint regions are the mask dilated by 0..N model pixels (default 6)")
    return parser


def train_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from medgen.phantom.model import resolve_model_path
    from medgen.phantom.train_base import read_resolution
    from medgen.phantom.lesions import BASE_TYPES
    from medgen.train.data import file_crops, phantom_lesion_crops, with_controls

    base = resolve_model_path(args.base)
    default_lr = {"textual-inversion": 5e-3, "lora": 1e-3, "controlnet": 1e-4}[args.kind]
    settings = AdapterTrainSettings(
        optimizer=args.optimizer,
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate or default_lr, seed=args.seed,
        mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
        checkpoint_every=args.checkpoint_every, validation_every=args.validation_every, device=args.device,
    )
    try:
        check_optimizer(args.optimizer)
        if args.data is not None:
            from medgen.generate.settings import read_intensity_contract

            crops = file_crops(args.data, resolution=read_resolution(Path(base)),
                               contract=read_intensity_contract(base))
        elif getattr(args, "phantom_mr", None) or getattr(args, "phantom_cr", None):
            from medgen.train.data import phantom_modality_crops

            modality, count = ("MR", args.phantom_mr) if args.phantom_mr else ("CR", args.phantom_cr)
            crops = phantom_modality_crops(count, modality, seed=args.seed, resolution=read_resolution(Path(base)))
        elif args.kind == "controlnet":
            crops = phantom_lesion_crops(args.phantom, prompt=args.prompt, lesion_types=BASE_TYPES, seed=args.seed)
        else:
            default_prompt = f"{args.token} mass" if args.kind == "textual-inversion" else "spiculated mass"
            crops = phantom_lesion_crops(args.phantom_spiculated, prompt=args.prompt or default_prompt, seed=args.seed)
        if args.kind == "textual-inversion":
            from medgen.train.textual_inversion import train_textual_inversion

            path = train_textual_inversion(base, crops, args.out, token=args.token, initializer=args.initializer,
                                           num_vectors=args.num_vectors, settings=settings, resume=args.resume)
        elif args.kind == "lora":
            from medgen.train.lora import train_lora

            path = train_lora(base, crops, args.out, rank=args.rank, settings=settings, resume=args.resume)
        else:
            from medgen.train.controlnet import train_controlnet

            crops = with_controls(crops, args.control_from, max_dilate_px=args.max_dilate_px, seed=args.seed)
            path = train_controlnet(base, crops, args.out, control_from=args.control_from, settings=settings,
                                    resume=args.resume)
    except (MedgenError, ValueError) as error:
        print(f"medgen train: error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(train_main())
