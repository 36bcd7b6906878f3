"""Architectures of the inpainting models we benchmark, written out as configs.

The speed of a diffusion model depends on its shapes, not its weights, so a pipeline built from
these configs with random weights times the same as the real checkpoint, with no download.
`sd15-inpaint` and `sd2-inpaint` follow the published configs of the Stable Diffusion 1.5 and
2.0 inpainting checkpoints; `tiny` is a few-kilobyte model with the same structure for CPU tests.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medgen.generate.clip_alphabet import byte_alphabet

__all__ = ["ARCHS", "InpaintArch", "build_random_pipeline", "make_clip_tokenizer"]

# The noise schedule every Stable Diffusion 1.x/2.x checkpoint was trained with.
_SD_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

_SD_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

_SD_UNET_BLOCKS: dict[str, Any] = {
    "in_channels": 9,  # 4 noisy latents + 1 mask + 4 masked-image latents
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
}


@dataclass(frozen=True)
class InpaintArch:
    """The configs of one inpainting model: UNet, VAE, CLIP text encoder and scheduler."""

    name: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(_SD_SCHEDULE))

    @property
    def resolution(self) -> int:
        """Image side the UNet was trained at (latent side times the VAE's downsampling)."""
        return self.unet["sample_size"] * 2 ** (len(self.vae["block_out_channels"]) - 1)


ARCHS: dict[str, InpaintArch] = {
    # runwayml/stable-diffusion-inpainting (SD 1.5): CLIP ViT-L/14 text encoder, 8 heads everywhere.
    "sd15-inpaint": InpaintArch(
        name="sd15-inpaint",
        unet={**_SD_UNET_BLOCKS, "sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8},
        vae=dict(_SD_VAE),
        text_encoder={
            "vocab_size": 49408,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
            "projection_dim": 768,
        },
    ),
    # stabilityai/stable-diffusion-2-inpainting (512x512): OpenCLIP ViT-H text encoder (penultimate
    # layer, hence 23 layers), 64-dim heads; diffusers names the head counts "attention_head_dim".
    "sd2-inpaint": InpaintArch(
        name="sd2-inpaint",
        unet={
            **_SD_UNET_BLOCKS,
            "sample_size": 64,
            "cross_attention_dim": 1024,
            "attention_head_dim": [5, 10, 20, 20],
            "use_linear_projection": True,
        },
        vae=dict(_SD_VAE),
        text_encoder={
            "vocab_size": 49408,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 23,
            "num_attention_heads": 16,
            "max_position_embeddings": 77,
            "hidden_act": "gelu",
            "projection_dim": 512,
        },
    ),
    # Same structure, tiny widths: 32x32 images, 16x16 latents, builds and runs in a second on a CPU.
    "tiny": InpaintArch(
        name="tiny",
        unet={
            "sample_size": 16,
            "in_channels": 9,
            "out_channels": 4,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            "block_out_channels": [32, 64],
            "layers_per_block": 1,
            "norm_num_groups": 32,
            "cross_attention_dim": 32,
            "attention_head_dim": 8,
        },
        vae={
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2,
            "block_out_channels": [32, 64],
            "layers_per_block": 1,
            "latent_channels": 4,
            "norm_num_groups": 32,
            "sample_size": 32,
            "scaling_factor": 0.18215,
        },
        text_encoder={
            "vocab_size": 1000,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "hidden_act": "gelu",
            "projection_dim": 32,
        },
    ),
}


def make_clip_tokenizer(directory: str | Path | None = None):
    """A CLIPTokenizer with a byte-level vocabulary and no merges (max length 77).

    Every prompt tokenizes to one id per byte, which is all a random-weight model needs: the ids
    only have to be valid and the sequence length the real 77.
    """
    from transformers import CLIPTokenizer

    directory = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="medgen-tok-"))
    directory.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    for char in byte_alphabet():
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer.from_pretrained(str(directory), model_max_length=77)


def build_random_pipeline(
    arch: str | InpaintArch,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
):
    """A StableDiffusionInpaintPipeline of `arch` with random weights (DDIM scheduler).

    Weights are initialised directly on `device` (seconds instead of a minute for the 860M-parameter
    UNet on a CPU), from `seed`, so two builds with the same arguments are identical.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if isinstance(arch, str):
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
        arch = ARCHS[arch]
    device = torch.device(device)

    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(arch.unet)
        vae = AutoencoderKL.from_config(arch.vae)
        text_encoder = CLIPTextModel(CLIPTextConfig(**arch.text_encoder))
    pipe = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=make_clip_tokenizer(),
        unet=unet,
        scheduler=DDIMScheduler.from_config(arch.scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype)
