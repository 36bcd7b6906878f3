"""Textual inversion on an inpainting model: a new token whose embedding rows are the only trainable weights.

The result is diffusers' own format (`learned_embeds.safetensors` = {token: tensor[N, dim]}), so
`pipe.load_textual_inversion(path, token=...)` loads it in plain diffusers; N > 1 vectors load as
"<token> <token>_1 ...", which diffusers' `maybe_convert_prompt` expands in prompts, as we do here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from medgen.generate.models import load_model
from medgen.train.data import AdapterCrops
from medgen.train.loop import AdapterTrainSettings, train_adapter, write_manifest

logger = logging.getLogger(__name__)

EMBEDDINGS_FILE = "learned_embeds.safetensors"


def token_names(token: str, num_vectors: int) -> list[str]:
    """The tokenizer entries of a multi-vector token, named as diffusers' loader names them."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def train_textual_inversion(
    base: str | Path,
    crops: AdapterCrops,
    out: str | Path,
    *,
    token: str = "<spiculated>",
    initializer: str = "mass",
    num_vectors: int = 1,
    settings: AdapterTrainSettings | None = None,
    resume: Path | None = None,
) -> Path:
    """Train ``token`` on ``crops`` (whose prompts use it) and write learned_embeds.safetensors + adapter.json."""
    settings = settings or AdapterTrainSettings()
    if num_vectors < 1:
        raise ValueError(f"num_vectors must be >= 1, got {num_vectors}")
    if not any(token in p for p in crops.prompts):
        raise ValueError(f"no training prompt contains the token {token!r}; got e.g. {crops.prompts[0]!r}")
    out = Path(out)
    model = load_model(base, device=settings.device, dtype=torch.float32)
    pipe = model.pipe
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder

    # 1. Add the token's entries, initialised from the initializer word's embedding
    names = token_names(token, num_vectors)
    if tokenizer.add_tokens(names) != num_vectors:
        raise ValueError(f"token {token!r} is already in the tokenizer; choose another")
    init_ids = tokenizer.encode(initializer, add_special_tokens=False)
    if len(init_ids) != 1:
        raise ValueError(f"initializer {initializer!r} must be one token, got {len(init_ids)}")
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    new_ids = tokenizer.convert_tokens_to_ids(names)
    embeddings = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        embeddings[new_ids] = embeddings[init_ids[0]].clone()
    original = embeddings.detach().clone()
    frozen_rows = torch.ones(len(tokenizer), dtype=torch.bool, device=embeddings.device)
    frozen_rows[new_ids] = False

    # 2. Only the embedding table takes gradients, and only the new rows keep them
    pipe.vae.requires_grad_(False)
    pipe.unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    text_encoder.get_input_embeddings().requires_grad_(True)
    expanded = " ".join(names)

    def encode_prompts(prompts: list[str]) -> torch.Tensor:
        ids = tokenizer([p.replace(token, expanded) for p in prompts], padding="max_length",
                        max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        return text_encoder(ids.to(model.device))[0]

    def keep_other_rows() -> None:
        grad = text_encoder.get_input_embeddings().weight.grad
        if grad is not None:
            grad[frozen_rows] = 0

    def save(folder: Path) -> None:
        with torch.no_grad():
            learned = text_encoder.get_input_embeddings().weight[new_ids].detach().float().cpu().contiguous()
        save_file({token: learned}, str(folder / EMBEDDINGS_FILE))

    text_encoder.train()
    history = train_adapter(
        model, crops, trainable=text_encoder, parameters=[text_encoder.get_input_embeddings().weight],
        encode_prompts=encode_prompts, settings=settings, out=out, after_step=keep_other_rows,
        save_adapter=save, validation_prompt=crops.prompts[0], resume=resume,
    )
    with torch.no_grad():  # AdamW with zero gradient leaves rows alone; assert it rather than trust it
        drift = (text_encoder.get_input_embeddings().weight[frozen_rows] - original[frozen_rows]).abs().max()
    if drift > 0:
        raise RuntimeError(f"frozen embedding rows changed by {float(drift):g}")
    write_manifest(out, kind="textual_inversion", base=Path(base), settings=settings, history=history,
                   num_crops=len(crops), token=token, num_vectors=num_vectors, initializer=initializer,
                   weights=EMBEDDINGS_FILE, trainable_parameters=num_vectors * embeddings.shape[1])
    logger.info("textual inversion %s: %d vector(s) x %d", token, num_vectors, embeddings.shape[1])
    return out / EMBEDDINGS_FILE
