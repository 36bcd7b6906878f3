"""ControlNet for inpainting: a diffusers ControlNetModel folder steers generation with a control image
computed from each crop (the mask's outline, the mask itself, or the source's edges).

`load_controlnet` builds diffusers' StableDiffusionControlNetInpaintPipeline from the loaded model's own
components (no second copy of the weights) and stores it on the model as `model.control`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from medgen.errors import InputError
from medgen.generate.path_spec import split_path_number

if TYPE_CHECKING:
    from medgen.generate.models import InpaintModel

logger = logging.getLogger(__name__)

CONTROL_KINDS = ("mask-edges", "mask", "source-edges")
"""What the control image is made from (`--control-from`)."""


def parse_controlnet_spec(text: str) -> tuple[Path, float]:
    """`PATH[:SCALE]`, scale 1 when left out."""
    return split_path_number(text, number_label="--controlnet scale")


def control_image(source_crop: np.ndarray, mask_crop: np.ndarray, kind: str = "mask-edges") -> np.ndarray:
    """The (H, W) float32 control image in [0, 1] for one crop.

    source_crop: model space [-1, 1]; mask_crop: [0, 1], >= 0.5 means inpaint.
    - "mask-edges": the mask's morphological gradient (dilation minus erosion), a ring on its outline
    - "mask": the binary mask
    - "source-edges": the Sobel gradient magnitude of the source, scaled so its maximum is 1
    """
    if kind not in CONTROL_KINDS:
        raise InputError(None, f"--control-from must be one of {', '.join(CONTROL_KINDS)}, got {kind!r}")
    mask = np.asarray(mask_crop) >= 0.5
    if kind == "mask":
        return mask.astype(np.float32)
    if kind == "mask-edges":
        structure = ndimage.generate_binary_structure(2, 1)
        ring = ndimage.binary_dilation(mask, structure) & ~ndimage.binary_erosion(mask, structure)
        return ring.astype(np.float32)
    source = np.asarray(source_crop, dtype=np.float64)
    magnitude = np.hypot(ndimage.sobel(source, axis=0), ndimage.sobel(source, axis=1))
    peak = magnitude.max()
    return (magnitude / peak if peak > 0 else magnitude).astype(np.float32)


def load_controlnet(model: InpaintModel, path: str | Path, scale: float = 1.0, kind: str = "mask-edges") -> None:
    """Load a diffusers ControlNetModel folder and route the model's inpainting through it."""
    from diffusers import ControlNetModel, StableDiffusionControlNetInpaintPipeline

    path = Path(path)
    # 1. Check the folder, then load (local files only, like the model)
    if kind not in CONTROL_KINDS:
        raise InputError(None, f"--control-from must be one of {', '.join(CONTROL_KINDS)}, got {kind!r}")
    if not (path / "config.json").is_file():
        raise InputError(path, "not a diffusers ControlNet folder: there is no config.json")
    try:
        controlnet = ControlNetModel.from_pretrained(path, local_files_only=True, torch_dtype=model.dtype)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(path, f"could not load the ControlNet: {message}") from error

    # 2. It must fit the model: same text-embedding width, 4 latent input channels, a 3-channel image
    #    downsampled like the VAE's
    unet = model.pipe.unet.config
    config = controlnet.config
    if config.cross_attention_dim != unet.cross_attention_dim:
        raise InputError(
            path,
            f"ControlNet cross-attention dim {config.cross_attention_dim} does not match the model's "
            f"{unet.cross_attention_dim}; it was made for another base model",
        )
    if config.in_channels != 4:
        raise InputError(path, f"ControlNet takes {config.in_channels} latent channels; the pipeline feeds it 4")
    if config.conditioning_channels != 3:
        raise InputError(path, f"ControlNet takes {config.conditioning_channels}-channel images; expected 3")
    downscale = 2 ** (len(config.conditioning_embedding_out_channels) - 1)
    if downscale != model.pipe.vae_scale_factor:
        raise InputError(
            path,
            f"ControlNet downsamples its control image by {downscale}, the model's VAE by "
            f"{model.pipe.vae_scale_factor}; it was made for another base model",
        )

    from medgen.generate.adapters import read_manifest, warn_if_other_base

    manifest = read_manifest(path, path / "config.json")  # adapter.json, as `medgen train controlnet` writes
    if manifest is not None:
        warn_if_other_base(model, path, manifest)

    # 3. A ControlNet inpainting pipeline sharing the model's components
    controlnet.to(model.device)
    pipe = StableDiffusionControlNetInpaintPipeline(
        **model.pipe.components, controlnet=controlnet, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    model.control = (pipe, float(scale), kind)
    logger.info("loaded ControlNet %s (scale %g, control from %s)", path, scale, kind)
