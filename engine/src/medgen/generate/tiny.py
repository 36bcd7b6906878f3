"""Tiny random-weight Stable Diffusion models, built locally so that tests and CI never need the hub.

The architecture is the real one (AutoencoderKL, UNet2DConditionModel, CLIPTextModel, CLIPTokenizer, a
diffusers scheduler) shrunk to a few MB, so loading, scheduling and inpainting run the same code paths
as a full-size model. The images it makes are noise: it proves plumbing, not quality.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from medgen.errors import InputError
from medgen.generate.clip_alphabet import byte_alphabet

MODEL_KINDS = {"inpaint": 9, "base": 4}
"""UNet input channels per kind: 4 noisy latents + 1 mask + 4 masked-image latents, or latents only."""

TEXT_MAX_LENGTH = 77  # the same context length as SD's CLIP, so prompt truncation behaves as in real use
_WORDS = ("lesion", "liver", "lung", "nodule", "tumor", "hypodense", "hyperdense", "cyst", "mass", "ct", "mri")
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def create_tiny_model(out_dir: Path, *, kind: str = "inpaint", seed: int = 0, resolution: int = 64) -> Path:
    """Write a tiny random-weight SD pipeline (diffusers folder, safetensors) to `out_dir` and return it.

    kind "inpaint" gives a 9-channel inpainting UNet, "base" a 4-channel text-to-image UNet. The VAE
    downsamples by 2, so the UNet's sample_size is resolution // 2. Same seed → identical weights.
    """
    if kind not in MODEL_KINDS:
        raise InputError(None, f"kind must be one of {sorted(MODEL_KINDS)}, got {kind!r}")
    if resolution < 16 or resolution % 8:
        raise InputError(None, f"resolution must be a multiple of 8 and at least 16, got {resolution}")
    out_dir = Path(out_dir)

    torch.manual_seed(seed)  # every component below draws its random init from this one stream
    tokenizer = _tiny_tokenizer()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        sample_size=resolution,
    )
    vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    unet = UNet2DConditionModel(
        sample_size=resolution // vae_scale_factor,
        in_channels=MODEL_KINDS[kind],
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TEXT_MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    # The SD 1.x training schedule; DDIM because it is deterministic and fine with very few steps.
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    # Build in a scratch folder and write model_index.json last, so that a folder with
    # model_index.json is always complete (callers such as the demo cache test for it).
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent) as scratch:
        pipe.save_pretrained(scratch, safe_serialization=True)
        write_bpe_files(tokenizer, Path(scratch) / "tokenizer")
        shutil.copytree(scratch, out_dir, ignore=shutil.ignore_patterns("model_index.json"), dirs_exist_ok=True)
        shutil.copy2(Path(scratch) / "model_index.json", out_dir / "model_index.json")
    return out_dir


def create_tiny_single_file(
    out_file: Path, *, config_dir: Path, kind: str = "inpaint", seed: int = 0, resolution: int = 64
) -> Path:
    """Write a tiny model as a diffusers folder in `config_dir` and as one original-layout checkpoint.

    Loading the checkpoint offline needs `config=config_dir` (see `medgen.generate.models.load_model`).
    """
    create_tiny_model(config_dir, kind=kind, seed=seed, resolution=resolution)
    return save_single_file(config_dir, out_file)


def save_single_file(model_dir: Path, out_file: Path) -> Path:
    """Write an SD 1.x-architecture diffusers folder as one original (LDM/CompVis) layout safetensors file.

    This is the layout real single-file checkpoints use (`model.diffusion_model.*`,
    `first_stage_model.*`, `cond_stage_model.transformer.*`), so `from_single_file` runs its real key
    conversion on it. Only CLIP text encoders (SD 1.x) are handled; SD 2.x uses OpenCLIP's layout.
    """
    model_dir, out_file = Path(model_dir), Path(out_file)
    if out_file.suffix != ".safetensors":
        raise InputError(out_file, "a single-file checkpoint must end in .safetensors")
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", local_files_only=True)

    checkpoint: dict[str, torch.Tensor] = {}
    for key, value in _unet_to_ldm(unet.state_dict(), unet.config).items():
        checkpoint["model.diffusion_model." + key] = value
    for key, value in _vae_to_ldm(vae.state_dict(), vae.config).items():
        checkpoint["first_stage_model." + key] = value
    for key, value in text_encoder.state_dict().items():
        # transformers >= 5.6 dropped the `text_model.` level inside CLIPTextModel; the LDM layout keeps it.
        checkpoint["cond_stage_model.transformer.text_model." + key.removeprefix("text_model.")] = value

    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in checkpoint.items()}, str(out_file))
    return out_file


def _tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP byte-level BPE tokenizer with a 512-symbol alphabet plus a few whole medical words."""
    alphabet = byte_alphabet()
    vocab: dict[str, int] = {}
    for symbol in [_BOS, _EOS, *alphabet, *(c + "</w>" for c in alphabet)]:
        vocab.setdefault(symbol, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        # Merge left to right: "l i v e r</w>" → "li" → "liv" → "live" → "liver</w>".
        piece = word[0]
        for i, char in enumerate(word[1:], start=1):
            right = char + "</w>" if i == len(word) - 1 else char
            if (piece, right) not in merges:
                merges.append((piece, right))
            piece += right
            vocab.setdefault(piece, len(vocab))
    return CLIPTokenizer(
        vocab=vocab, merges=merges, model_max_length=TEXT_MAX_LENGTH, unk_token=_EOS, pad_token=_EOS
    )


def write_bpe_files(tokenizer: CLIPTokenizer, folder: Path) -> None:
    """Also write vocab.json and merges.txt: transformers 4.x's slow CLIPTokenizer reads only those."""
    vocab = dict(sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]))  # a fixed order: same bytes
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0), encoding="utf-8")
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    lines = ["#version: 0.2", *(" ".join(pair) if isinstance(pair, list) else pair for pair in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _unet_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Rename diffusers UNet keys to the original `openaimodel.UNetModel` layout (inverse of diffusers' loader)."""
    per_block = config.layers_per_block + 1  # LDM counts each block's resnets plus its down/upsampler
    resnet_names = [
        ("norm1", "in_layers.0"),
        ("conv1", "in_layers.2"),
        ("norm2", "out_layers.0"),
        ("conv2", "out_layers.3"),
        ("time_emb_proj", "emb_layers.1"),
        ("conv_shortcut", "skip_connection"),
    ]
    prefixes = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
        "mid_block.resnets.0.": "middle_block.0.",
        "mid_block.attentions.0.": "middle_block.1.",
        "mid_block.resnets.1.": "middle_block.2.",
    }
    for i in range(len(config.down_block_types)):
        for j in range(config.layers_per_block):
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{per_block * i + j + 1}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{per_block * i + j + 1}.1."
        prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{per_block * (i + 1)}.0.op."
    for i, block_type in enumerate(config.up_block_types):
        for j in range(per_block):
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{per_block * i + j}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{per_block * i + j}.1."
        # The upsampler follows the last resnet, and its attention when the block has one.
        upsampler_slot = 2 if "CrossAttn" in block_type else 1
        prefixes[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{per_block * i + per_block - 1}.{upsampler_slot}."

    converted = {}
    for key, value in state.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"no original-layout name for UNet weight {key!r}")
        rest = key[len(prefix) :]
        if ".resnets." in prefix:
            for new, old in resnet_names:
                rest = rest.replace(new, old)
        converted[prefixes[prefix] + rest] = value
    return converted


def _vae_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Rename diffusers AutoencoderKL keys to the original `autoencoder.AutoencoderKL` layout."""
    num_blocks = len(config.block_out_channels)
    prefixes = {"encoder.conv_norm_out.": "encoder.norm_out.", "decoder.conv_norm_out.": "decoder.norm_out."}
    for part in ("encoder", "decoder"):
        for k in range(2):
            prefixes[f"{part}.mid_block.resnets.{k}."] = f"{part}.mid.block_{k + 1}."
        prefixes[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
    for i in range(num_blocks):
        prefixes[f"encoder.down_blocks.{i}.resnets."] = f"encoder.down.{i}.block."
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        # The decoder's blocks are numbered from the lowest resolution up in the original layout.
        prefixes[f"decoder.up_blocks.{i}.resnets."] = f"decoder.up.{num_blocks - 1 - i}.block."
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{num_blocks - 1 - i}.upsample."
    attention_names = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}

    converted = {}
    for key, value in state.items():
        prefix = next((p for p in prefixes if key.startswith(p)), "")
        rest = key[len(prefix) :]
        if ".attn_1." in prefixes.get(prefix, ""):
            name, param = rest.rsplit(".", 1)
            rest = f"{attention_names[name]}.{param}"
            if value.ndim == 2:  # the original attention uses 1x1 convolutions, diffusers linear layers
                value = value[:, :, None, None]
        else:
            rest = rest.replace("conv_shortcut", "nin_shortcut")
        converted[prefixes.get(prefix, "") + rest] = value
    return converted

