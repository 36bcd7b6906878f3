"""LoRA on an inpainting UNet's attention projections, saved in diffusers' LoRA format.

peft adds rank-r adapters to to_q/to_k/to_v/to_out.0; the saved `pytorch_lora_weights.safetensors`
loads with plain `pipe.load_lora_weights(folder)`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import StableDiffusionInpaintPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from medgen.generate.models import load_model
from medgen.train.data import AdapterCrops
from medgen.train.loop import AdapterTrainSettings, train_adapter, write_manifest

logger = logging.getLogger(__name__)

LORA_FILE = "pytorch_lora_weights.safetensors"
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def add_lora(unet: torch.nn.Module, rank: int) -> list[torch.nn.Parameter]:
    """Freeze ``unet`` and give its attention projections rank-``rank`` LoRA layers; returns their parameters.

    At rank 4 that is 0.093% of SD 1.5's inpainting UNet and 0.096% of SD 2's (tests/test_train_adapters.py).
    """
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=list(LORA_TARGETS)))
    return [p for p in unet.parameters() if p.requires_grad]


def train_lora(
    base: str | Path,
    crops: AdapterCrops,
    out: str | Path,
    *,
    rank: int = 4,
    settings: AdapterTrainSettings | None = None,
    resume: Path | None = None,
) -> Path:
    """Train a rank-``rank`` UNet LoRA on ``crops`` and write pytorch_lora_weights.safetensors + adapter.json."""
    settings = settings or AdapterTrainSettings(learning_rate=1e-3)
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    out = Path(out)
    model = load_model(base, device=settings.device, dtype=torch.float32)
    pipe = model.pipe
    tokenizer, text_encoder, unet = pipe.tokenizer, pipe.text_encoder, pipe.unet

    # 1. Freeze everything, then add the adapters (only they take gradients)
    for module in (pipe.vae, text_encoder):
        module.requires_grad_(False)
    parameters = add_lora(unet, rank)
    trainable = sum(p.numel() for p in parameters)
    total = sum(p.numel() for p in unet.parameters()) - trainable
    share = trainable / total
    logger.info("LoRA rank %d: %d trainable parameters, %.3f%% of the UNet's %d", rank, trainable, 100 * share, total)

    @torch.no_grad()
    def encode_prompts(prompts: list[str]) -> torch.Tensor:
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        return text_encoder(ids.to(model.device))[0]

    def save(folder: Path) -> None:
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        StableDiffusionInpaintPipeline.save_lora_weights(folder, unet_lora_layers=layers, weight_name=LORA_FILE,
                                                         safe_serialization=True)

    unet.train()
    history = train_adapter(
        model, crops, trainable=unet, parameters=parameters, encode_prompts=encode_prompts, settings=settings,
        out=out, save_adapter=save, validation_prompt=crops.prompts[0], resume=resume,
    )
    write_manifest(out, kind="lora", base=Path(base), settings=settings, history=history, num_crops=len(crops),
                   rank=rank, target_modules=list(LORA_TARGETS), weights=LORA_FILE, trainable_parameters=trainable,
                   unet_parameters=total, trainable_share=share, prompt=crops.prompts[0], contract=crops.contract)
    return out / LORA_FILE
