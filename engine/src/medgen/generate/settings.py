"""A model's own recommended settings: ``medgen.json`` beside its model_index.json."""

from __future__ import annotations

import json
from pathlib import Path

from medgen.errors import InputError

MODEL_SETTINGS_FILE = "medgen.json"
RECOMMENDABLE = ("num_inference_steps", "guidance_scale", "crop_padding_px")


def read_recommended_settings(model_path: str | Path) -> dict:
    """Steps, guidance and crop padding the model's author recommends (a small model trained for
    guidance 1.4, say); empty when the model has no medgen.json or is a single file."""
    settings_file = Path(model_path) / MODEL_SETTINGS_FILE
    if not settings_file.is_file():
        return {}
    try:
        settings = json.loads(settings_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(settings_file, f"cannot read the model's recommended settings: {exc}") from exc
    if not isinstance(settings, dict):
        raise InputError(settings_file, "must hold a JSON object of settings")
    unknown = sorted(set(settings) - set(RECOMMENDABLE))
    if unknown:
        raise InputError(settings_file, f"unknown settings {unknown}; a model can recommend {list(RECOMMENDABLE)}")
    return settings
