"""`medgen train textual-inversion|lora`: train an adapter on a folder/CSV of scans or on held-out phantoms."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medgen.errors import MedgenError
from medgen.train.loop import AdapterTrainSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medgen train", description=__doc__)
    kinds = parser.add_subparsers(dest="kind", required=True)
    for kind in ("textual-inversion", "lora"):
        p = kinds.add_parser(kind)
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--data", type=Path, help="CSV with columns image,mask,prompt (or a folder with train.csv)")
        source.add_argument("--phantom-spiculated", type=int, metavar="N",
                            help="train on N crops of the held-out spiculated-mass phantoms")
        p.add_argument("--base", type=Path, help="base inpainting model (default: the shipped phantom demo model)")
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--prompt", help="prompt for phantom crops (default: '<token> mass' or 'spiculated mass')")
        p.add_argument("--steps", type=int, default=400)
        p.add_argument("--batch-size", type=int, default=16)
        p.add_argument("--learning-rate", type=float)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default="auto")
        p.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "fp16", "bf16"))
        p.add_argument("--gradient-checkpointing", action="store_true")
        p.add_argument("--checkpoint-every", type=int, default=0)
        p.add_argument("--validation-every", type=int, default=0)
        p.add_argument("--resume", type=Path, help="an accelerate checkpoint folder (OUT/checkpoints/step-K)")
        if kind == "textual-inversion":
            p.add_argument("--token", default="<spiculated>")
            p.add_argument("--initializer", default="mass")
            p.add_argument("--num-vectors", type=int, default=2)
        else:
            p.add_argument("--rank", type=int, default=4)
    return parser


def _model_resolution(base: Path) -> int:
    """Pixels per side the model works at: UNet sample size times the VAE's downsampling, from the configs."""
    unet = json.loads((base / "unet" / "config.json").read_text(encoding="utf-8"))
    vae = json.loads((base / "vae" / "config.json").read_text(encoding="utf-8"))
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def train_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from medgen.phantom.model import demo_model_path
    from medgen.train.data import file_crops, phantom_lesion_crops

    base = args.base or demo_model_path()
    default_lr = 5e-3 if args.kind == "textual-inversion" else 1e-3
    settings = AdapterTrainSettings(
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate or default_lr, seed=args.seed,
        mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
        checkpoint_every=args.checkpoint_every, validation_every=args.validation_every, device=args.device,
    )
    try:
        if args.data is not None:
            crops = file_crops(args.data, resolution=_model_resolution(Path(base)))
        else:
            default_prompt = f"{args.token} mass" if args.kind == "textual-inversion" else "spiculated mass"
            crops = phantom_lesion_crops(args.phantom_spiculated, prompt=args.prompt or default_prompt, seed=args.seed)
        if args.kind == "textual-inversion":
            from medgen.train.textual_inversion import train_textual_inversion

            path = train_textual_inversion(base, crops, args.out, token=args.token, initializer=args.initializer,
                                           num_vectors=args.num_vectors, settings=settings, resume=args.resume)
        else:
            from medgen.train.lora import train_lora

            path = train_lora(base, crops, args.out, rank=args.rank, settings=settings, resume=args.resume)
    except (MedgenError, ValueError) as error:
        print(f"medgen train: error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(train_main())
