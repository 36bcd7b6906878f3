"""Adapters on a loaded model: textual inversion (diffusers and A1111 formats) and LoRA (diffusers/peft
and kohya formats), several at once, each with its own weight.

Every file is read by this module, never by a loader that might unpickle: safetensors, or
`torch.load(weights_only=True)` for .pt/.bin/.ckpt. A file that needs full unpickling is refused, because
unpickling can run code. Sizes and names are checked before any weight is read. The state dicts are then
handed to diffusers (`load_textual_inversion`, `load_lora_weights`), which converts kohya keys itself.

An adapter may carry a manifest (`<file stem>.adapter.json` beside the file, or `adapter.json` in its
folder) naming the base model it was trained on (name, SHA-256) and the modality; using it on another
base logs a warning.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from medgen.errors import InputError
from medgen.generate.path_spec import split_path_number

if TYPE_CHECKING:
    from medgen.generate.models import InpaintModel

logger = logging.getLogger(__name__)

TEXTUAL_INVERSION = "textual_inversion"
LORA = "lora"
CONTROLNET = "controlnet"  # a diffusers ControlNetModel folder (control.py loads it)

MAX_BYTES = {TEXTUAL_INVERSION: 50 * 2**20, LORA: 2 * 2**30}
"""Refused before reading: a textual inversion is a few KB to a few MB, a LoRA at most a few hundred MB."""

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
FOLDER_FILES = {
    "learned_embeds.safetensors": TEXTUAL_INVERSION,
    "pytorch_lora_weights.safetensors": LORA,
}
"""The file names diffusers' training scripts write into an adapter folder."""

MANIFEST_NAME = "adapter.json"
_TOKEN_PATTERN = re.compile(r"<?[A-Za-z0-9_\-.]{1,64}>?")


@dataclass(frozen=True)
class AdapterSpec:
    """One `--adapter PATH[:WEIGHT]`; the weight scales a LoRA (textual inversion takes 1 only)."""

    path: Path
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str | AdapterSpec) -> AdapterSpec:
        """`PATH[:WEIGHT]`, weight 1 when left out (see `path_spec.split_path_number`)."""
        if isinstance(text, AdapterSpec):
            return text
        return cls(*split_path_number(text, number_label="--adapter weight"))


def load_adapters(
    model: InpaintModel, specs: list[str | AdapterSpec], token: str | None = None
) -> list[dict[str, Any]]:
    """Load every adapter onto `model.pipe`; return one provenance record per adapter.

    `token` names the token of a textual inversion whose file does not name one (or renames it); it
    applies when exactly one textual inversion is given.
    """
    from medgen.dicom.provenance import sha256_file

    # 1. Check every spec (existence, name, size, format, safe contents) before changing the pipeline
    specs = [AdapterSpec.parse(s) for s in specs]
    loaded = [(spec, *_read_adapter(spec.path)) for spec in specs]
    inversions = [item for item in loaded if item[1] == TEXTUAL_INVERSION]
    if token is not None and len(inversions) != 1:
        raise InputError(
            None,
            f"--token names the token of one textual inversion; {len(inversions)} were given",
        )
    for spec, kind, _, _ in loaded:
        if kind == TEXTUAL_INVERSION and spec.weight != 1.0:
            raise InputError(
                spec.path,
                f"a textual inversion takes no weight (got {spec.weight}); blend tokens in the prompt "
                "instead, e.g. [healthy:0.3|<token>:0.7]",
            )

    records: list[dict[str, Any]] = []
    lora_names: list[str] = []
    lora_weights: list[float] = []
    pipe = model.pipe
    # 2. Load: textual inversions into the tokenizer and text encoder, LoRAs as named peft adapters
    for spec, kind, weights_file, state_dict in loaded:
        manifest = read_manifest(spec.path, weights_file)
        record: dict[str, Any] = {
            "path": str(spec.path),
            "kind": kind,
            "weight": spec.weight,
            "sha256": sha256_file(weights_file),
        }
        if kind == TEXTUAL_INVERSION:
            record["tokens"] = _load_textual_inversion(
                pipe, spec.path, state_dict, token
            )
        else:
            name = f"adapter_{len(lora_names)}"
            _load_lora(model, spec.path, state_dict, name)
            lora_names.append(name)
            lora_weights.append(spec.weight)
            record["adapter_name"] = name
        if manifest:
            record["modality"] = manifest.get("modality")
            record["base_model"] = manifest.get("base_model")
            warn_if_other_base(model, spec.path, manifest)
        records.append(record)
    if lora_names:
        pipe.set_adapters(lora_names, lora_weights)

    # 3. The fast path encodes prompts itself and fuses QKV only without adapter layers: rebuild it
    model._fast_runner = None
    return records


def write_manifest(
    adapter_path: str | Path,
    *,
    kind: str,
    base_model: str | Path,
    modality: str | None = None,
    **extra,
) -> Path:
    """Write the manifest that `load_adapters` reads (for training code); returns its path."""
    from medgen.dicom.provenance import sha256_model

    adapter_path = Path(adapter_path)
    target = (
        adapter_path / MANIFEST_NAME
        if adapter_path.is_dir()
        else _file_manifest_path(adapter_path)
    )
    manifest = {
        "kind": kind,
        "base_model": {
            "name": Path(base_model).name,
            "sha256": sha256_model(base_model),
        },
        "modality": modality,
        **extra,
    }
    target.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return target


def describe_adapter(path: str | Path) -> dict:
    """What an adapter path holds, checked as loading checks it: {"kind", "manifest"} where kind is
    textual_inversion, lora or controlnet (a diffusers ControlNetModel folder) and manifest its
    adapter.json or None. A server lists these; a bad file fails here, at start, not at the first job."""
    path = Path(path)
    config = path / "config.json"
    if path.is_dir() and config.is_file():
        try:
            class_name = json.loads(config.read_text(encoding="utf-8")).get("_class_name")
        except (OSError, ValueError, AttributeError) as error:
            raise InputError(config, f"cannot read the folder's config: {error}") from error
        if class_name != "ControlNetModel":
            raise InputError(path, f"a folder with config.json must be a ControlNetModel, got {class_name!r}")
        return {"kind": CONTROLNET, "manifest": read_manifest(path, config)}
    kind, weights_file, _ = _read_adapter(path)
    return {"kind": kind, "manifest": read_manifest(path, weights_file)}


# --------------------------------------------------------------------------------------------------
# Reading files safely
# --------------------------------------------------------------------------------------------------


def _read_adapter(path: Path) -> tuple[str, Path, dict]:
    """(kind, weights file, state dict) of an adapter file or folder, read without unpickling."""
    if not path.exists():
        raise InputError(path, "no such adapter file or folder")
    weights_file = path
    if path.is_dir():
        found = [path / name for name in FOLDER_FILES if (path / name).is_file()]
        if len(found) != 1:
            raise InputError(
                path,
                f"an adapter folder must hold exactly one of {', '.join(FOLDER_FILES)}; found {len(found)}",
            )
        weights_file = found[0]
    suffix = weights_file.suffix.lower()
    if suffix not in SAFE_SUFFIXES + PICKLE_SUFFIXES:
        raise InputError(
            weights_file,
            f"not an adapter file: expected {', '.join(SAFE_SUFFIXES + PICKLE_SUFFIXES)}",
        )
    size = weights_file.stat().st_size
    if size > max(MAX_BYTES.values()):
        raise InputError(
            weights_file,
            f"{size / 2**30:.1f} GB is too large for an adapter (limit 2 GB)",
        )

    if suffix in SAFE_SUFFIXES:
        try:
            state_dict = load_file(str(weights_file), device="cpu")
        except (SafetensorError, OSError) as error:
            raise InputError(
                weights_file, f"not a readable safetensors file: {error}"
            ) from error
    else:
        try:
            state_dict = torch.load(weights_file, map_location="cpu", weights_only=True)
        except (
            pickle.UnpicklingError,
            RuntimeError,
            AttributeError,
            TypeError,
        ) as error:
            raise InputError(
                weights_file,
                "needs full unpickling, which can run code; refused. Convert it to safetensors in a sandbox",
            ) from error
        except (EOFError, OSError) as error:
            raise InputError(
                weights_file, f"not a readable PyTorch file: {error}"
            ) from error
    if not isinstance(state_dict, dict):
        if isinstance(
            state_dict, torch.Tensor
        ):  # a bare embedding, as some tools save one
            state_dict = {"": state_dict}
        else:
            raise InputError(
                weights_file,
                f"holds a {type(state_dict).__name__}, not a dictionary of tensors",
            )

    kind = _detect_kind(weights_file, state_dict)
    if size > MAX_BYTES[kind]:
        raise InputError(
            weights_file,
            f"{size / 2**20:.0f} MB is too large for a {kind} (limit {MAX_BYTES[kind] // 2**20} MB)",
        )
    return kind, weights_file, state_dict


def _detect_kind(weights_file: Path, state_dict: dict) -> str:
    keys = [str(k) for k in state_dict]
    if "string_to_param" in state_dict or any(
        k.startswith("string_to_param.") for k in keys
    ):
        return TEXTUAL_INVERSION  # A1111
    if "emb_params" in state_dict:
        return TEXTUAL_INVERSION  # A1111 .safetensors
    if any("lora" in k.lower() for k in keys):
        return LORA
    if len(state_dict) == 1 and isinstance(
        next(iter(state_dict.values())), torch.Tensor
    ):
        return TEXTUAL_INVERSION  # diffusers: {token: embedding}
    raise InputError(
        weights_file,
        "not a recognised adapter: neither a textual inversion (one embedding, or string_to_param) "
        "nor a LoRA (lora_* keys)",
    )


def _file_manifest_path(weights_file: Path) -> Path:
    return weights_file.with_name(f"{weights_file.stem}.adapter.json")


def read_manifest(path: Path, weights_file: Path) -> dict | None:
    candidates = (
        [path / MANIFEST_NAME]
        if path.is_dir()
        else [_file_manifest_path(weights_file), path.parent / MANIFEST_NAME]
    )
    for candidate in candidates:
        if candidate.is_file():
            try:
                manifest = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                raise InputError(
                    candidate, f"cannot read the adapter manifest: {error}"
                ) from error
            if not isinstance(manifest, dict):
                raise InputError(
                    candidate, "an adapter manifest must hold a JSON object"
                )
            return manifest
    return None


def warn_if_other_base(model: InpaintModel, path: Path, manifest: dict) -> None:
    from medgen.dicom.provenance import sha256_model

    base = manifest.get("base_model") or {}
    if not isinstance(base, dict):
        return
    if base.get("sha256"):
        if base["sha256"] != sha256_model(model.path):
            logger.warning(
                "%s was trained on base model %s (sha256 %s…), not on %s; results may be poor",
                path,
                base.get("name", "?"),
                str(base["sha256"])[:12],
                model.path.name,
            )
    elif base.get("name") and base["name"] != model.path.name:
        logger.warning(
            "%s was trained on base model %s, not on %s",
            path,
            base["name"],
            model.path.name,
        )


# --------------------------------------------------------------------------------------------------
# Textual inversion
# --------------------------------------------------------------------------------------------------


def _load_textual_inversion(
    pipe, path: Path, state_dict: dict, token: str | None
) -> list[str]:
    """Add the token (and token_1 … for multi-vector embeddings) and return the token names added."""
    if "string_to_param" in state_dict:  # A1111 .pt
        params = state_dict["string_to_param"]
        embedding = params.get("*") if isinstance(params, dict) else None
        file_token = state_dict.get("name")
    elif "string_to_param.*" in state_dict:
        embedding, file_token = state_dict["string_to_param.*"], None
    elif "emb_params" in state_dict:
        embedding, file_token = state_dict["emb_params"], None
    else:
        file_token, embedding = next(iter(state_dict.items()))
    if not isinstance(embedding, torch.Tensor):
        raise InputError(path, "the textual inversion holds no embedding tensor")
    token = (
        token
        or (file_token if isinstance(file_token, str) and file_token else None)
        or path.stem
    )
    if not _TOKEN_PATTERN.fullmatch(token):
        raise InputError(
            path,
            f"token {token!r} must be 1-64 letters, digits, '_', '-' or '.', optionally in <>",
        )
    vocab = pipe.tokenizer.get_vocab()
    if token in vocab or f"{token}</w>" in vocab:  # CLIP marks word ends with </w>
        raise InputError(
            path,
            f"token {token!r} is already a word of the tokenizer; pick another with --token",
        )

    hidden = pipe.text_encoder.config.hidden_size
    if embedding.ndim not in (1, 2) or embedding.shape[-1] != hidden:
        raise InputError(
            path,
            f"embedding of shape {tuple(embedding.shape)} does not fit this model's text encoder "
            f"(width {hidden}); it was trained for another base model",
        )
    embedding = embedding.reshape(-1, hidden).to(pipe.text_encoder.dtype)
    try:
        pipe.load_textual_inversion(
            embedding if len(embedding) > 1 else embedding[0], token=token
        )
    except ValueError as error:
        raise InputError(
            path, f"could not load the textual inversion: {error}"
        ) from error
    return [token] + [f"{token}_{i}" for i in range(1, len(embedding))]


# --------------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------------


def _load_lora(model: InpaintModel, path: Path, state_dict: dict, name: str) -> None:
    try:
        import peft  # noqa: F401
    except ImportError as error:
        raise InputError(
            path, "loading a LoRA needs the 'peft' package (pip install peft)"
        ) from error
    unet = model.pipe.unet
    if getattr(
        unet, "_medgen_qkv_fused", False
    ):  # the fast path fused Q, K, V; LoRA wraps them one by one
        unet.unfuse_qkv_projections()
        unet._medgen_qkv_fused = False
    try:
        model.pipe.load_lora_weights(dict(state_dict), adapter_name=name)
    except (ValueError, RuntimeError, KeyError, TypeError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "size mismatch" in str(error) or "shape" in str(error):
            message = (
                "its layer sizes do not match this model (a LoRA for another base model?): "
                + message
            )
        raise InputError(path, f"could not load the LoRA: {message}") from error
    if not any(
        name in getattr(m, "lora_A", {}) for m in model.pipe.unet.modules()
    ) and not any(
        name in getattr(m, "lora_A", {}) for m in model.pipe.text_encoder.modules()
    ):
        raise InputError(
            path,
            "no layer of this model matched the LoRA's keys (a LoRA for another architecture?)",
        )
