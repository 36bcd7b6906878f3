"""ControlNet for an inpainting model, trained so the lesion keeps to the outline it is given.

The ControlNet starts as a copy of the base UNet's encoder (its first convolution cut to the 4 noisy
latent channels, which is what `StableDiffusionControlNetInpaintPipeline` feeds it) with zeroed
output convolutions, so at step 0 it changes nothing. The base model stays frozen. Training crops are
inpainted under the lesion mask dilated by a random margin while the control image is made from the
mask itself (`data.with_controls`), the situation `medgen inpaint --controlnet` meets: a segment
outline inside a larger region to blend in. The result is a plain diffusers ControlNetModel folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import ControlNetModel, StableDiffusionControlNetInpaintPipeline, UNet2DConditionModel

from medgen.generate.models import load_model
from medgen.train.data import AdapterCrops
from medgen.train.loop import AdapterTrainSettings, train_adapter, write_manifest

logger = logging.getLogger(__name__)

CONDITIONING_CHANNELS = (16, 32, 96, 256)
"""Widths of the control-image embedding stages (SD's); a VAE that downsamples less uses the first few."""


def controlnet_from_unet(unet: UNet2DConditionModel, vae_scale_factor: int) -> ControlNetModel:
    """A ControlNet initialised from ``unet``'s encoder, taking 4 latent channels even when the UNet takes 9."""
    stages = vae_scale_factor.bit_length()  # 1 + log2(factor): one stride-2 stage per halving
    if 2 ** (stages - 1) != vae_scale_factor or stages > len(CONDITIONING_CHANNELS):
        raise ValueError(f"VAE scale factor {vae_scale_factor} is not a power of two up to 8")
    template = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS[:stages], load_weights_from_unet=False
    )
    controlnet = ControlNetModel.from_config({**dict(template.config), "in_channels": 4})
    with torch.no_grad():
        controlnet.conv_in.weight.copy_(unet.conv_in.weight[:, :4])  # the noisy-latent channels
        controlnet.conv_in.bias.copy_(unet.conv_in.bias)
    for name in ("time_proj", "time_embedding", "down_blocks", "mid_block"):
        getattr(controlnet, name).load_state_dict(getattr(unet, name).state_dict())
    return controlnet


def train_controlnet(
    base: str | Path,
    crops: AdapterCrops,
    out: str | Path,
    *,
    control_from: str,
    settings: AdapterTrainSettings | None = None,
    resume: Path | None = None,
) -> Path:
    """Train a ControlNet on ``crops`` (with control images) and write it as a diffusers folder + adapter.json."""
    settings = settings or AdapterTrainSettings(learning_rate=1e-4)
    if crops.controls is None:
        raise ValueError("ControlNet training needs control images (train.data.with_controls)")
    out = Path(out)
    model = load_model(base, device=settings.device, dtype=torch.float32)
    pipe = model.pipe
    for module in (pipe.vae, pipe.text_encoder, pipe.unet):
        module.requires_grad_(False)

    # 1. The ControlNet, and a pipeline around it for validation images
    controlnet = controlnet_from_unet(pipe.unet, pipe.vae_scale_factor).to(model.device)
    controlnet.train()
    if settings.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
    control_pipe = StableDiffusionControlNetInpaintPipeline(**pipe.components, controlnet=controlnet,
                                                            requires_safety_checker=False)
    control_pipe.set_progress_bar_config(disable=True)
    model.control = (control_pipe, 1.0, control_from)
    controls = torch.from_numpy(crops.controls)[:, None].expand(-1, 3, -1, -1)  # as the pipeline's RGB input
    parameters = [p for p in controlnet.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in parameters)
    logger.info("ControlNet: %d trainable parameters", trainable)

    @torch.no_grad()
    def encode_prompts(prompts: list[str]) -> torch.Tensor:
        ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return pipe.text_encoder(ids.to(model.device))[0]

    # 2. The noise prediction: ControlNet residuals added into the frozen UNet, as the pipeline does
    def predict_noise(unet_in: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        cond = controls[index].to(unet_in.device, unet_in.dtype)
        down, mid = controlnet(unet_in[:, :4], t, encoder_hidden_states=hidden, controlnet_cond=cond,
                               return_dict=False)
        return pipe.unet(unet_in, t, encoder_hidden_states=hidden, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample

    def save(folder: Path) -> None:
        controlnet.save_pretrained(folder, safe_serialization=True)

    history = train_adapter(
        model, crops, trainable=controlnet, parameters=parameters, encode_prompts=encode_prompts,
        settings=settings, out=out, save_adapter=save, validation_prompt=crops.prompts[0], resume=resume,
        predict_noise=predict_noise,
    )
    write_manifest(out, kind="controlnet", base=Path(base), settings=settings, history=history,
                   num_crops=len(crops), control_from=control_from, weights="diffusion_pytorch_model.safetensors",
                   trainable_parameters=trainable)
    return out
