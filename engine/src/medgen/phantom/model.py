"""Where the shipped demo model lives: a diffusers folder inside the package, loaded like any other."""

from __future__ import annotations

from pathlib import Path

from medgen.errors import InputError

DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"
DEMO_MODEL_NAME = "demo"
"""What `--model` (and every `model=` of the Python API) may say instead of a path; leaving it out means the same."""
DEMO_MODEL_HELP = (
    "a diffusers folder, a single-file .safetensors, or 'demo' (default: demo, the phantom model shipped in "
    "the package; it knows phantom anatomy only, not patients)"
)
DEMO_GUIDANCE_SCALE = 1.4
"""Guidance the demo and the bench use. The demo model's unconditional branch is "healthy tissue", so
guidance amplifies exactly the lesion; small values already give the prompted type (PHANTOM.md)."""
DEMO_STEPS = 20
DEMO_CROP_PADDING_PX = 16
"""Tighter than the engine's default 32 px: phantom lesions are small on a 128-pixel slice, and a
tighter crop gives the 64-pixel model more pixels per lesion."""


def demo_model_path() -> Path:
    """The shipped model's folder; a clear error if the package was installed without it."""
    if not (DEMO_MODEL_DIR / "model_index.json").is_file():
        raise InputError(
            DEMO_MODEL_DIR,
            "the phantom demo model is missing from this installation; "
            "rebuild it with `medgen phantom train-base --out <dir>` (see engine/PHANTOM.md)",
        )
    return DEMO_MODEL_DIR


def resolve_model_path(model: str | Path | None) -> Path:
    """The folder or file a `--model` value names: nothing or 'demo' is the shipped demo model."""
    if model is None or str(model) == DEMO_MODEL_NAME:
        return demo_model_path()
    return Path(model)
