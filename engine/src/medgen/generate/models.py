"""Loading a Stable Diffusion model from disk, choosing device, precision and scheduler.

Everything loads from local files only (`local_files_only=True`): the engine runs where there may be
no model hub, and a model that silently downloads something is not reproducible.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionInpaintPipeline,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from safetensors import SafetensorError, safe_open

from medgen.errors import InputError
from medgen.generate.settings import read_recommended_settings

logger = logging.getLogger(__name__)

SUPPORTED_UNET_CHANNELS = (4, 9)
"""9: an inpainting UNet (latents + mask + masked-image latents); 4: a base UNet, inpainted by latent blending."""

REQUIRED_COMPONENTS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")

SCHEDULERS: dict[str, Callable[[dict], SchedulerMixin]] = {
    "ddim": lambda config: DDIMScheduler.from_config(config),
    "dpm++": lambda config: DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++"),
    "euler": lambda config: EulerDiscreteScheduler.from_config(config),
    "unipc": lambda config: UniPCMultistepScheduler.from_config(config),
}
"""Scheduler names accepted by `--scheduler`; each is built from the model's own scheduler config so that
the training noise schedule (betas, prediction type, offsets) carries over."""

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}

# The key whose shape tells an original-layout checkpoint's UNet input channels (4 or 9).
_LDM_UNET_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
_UNSAFE_CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


@dataclass
class InpaintModel:
    """A loaded pipeline plus what callers need to know about it (resolution, channels, device, dtype).

    Inpaint with `medgen.generate.inpaint.inpaint(model, ...)`: the core imports this module, never
    the other way round."""

    pipe: StableDiffusionInpaintPipeline
    path: Path
    device: torch.device
    dtype: torch.dtype
    max_batch_size: int = 8
    """How many (slice, variant) pairs go through the UNet together (twice that with guidance)."""
    _scheduler_config: dict = field(default_factory=dict, repr=False)

    _fast_runner: object = field(default=None, repr=False)
    control: tuple | None = field(default=None, repr=False)
    """(ControlNet inpainting pipeline, conditioning scale, control kind), set by `control.load_controlnet`."""

    @property
    def fast_runner(self):
        """The engine's own denoising loop for 9-channel UNets (compiled and graph-captured on CUDA).

        None for 4-channel UNets, which keep diffusers' latent-blending loop. Built on first use and
        reused, so compiled graphs survive across requests.
        """
        if self.in_channels != 9:
            return None
        if self._fast_runner is None:
            from medgen.generate.fast import FastInpaintRunner

            self._fast_runner = FastInpaintRunner(self.pipe)
        return self._fast_runner

    @property
    def recommended_settings(self) -> dict:
        """Settings the model's author recommends (its medgen.json); empty when there are none."""
        return read_recommended_settings(self.path) if self.path.is_dir() else {}

    @property
    def model_id(self) -> str:
        return str(self.path)

    @property
    def resolution(self) -> int:
        """Side length in pixels of the square images the model works on."""
        return self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor

    @property
    def in_channels(self) -> int:
        return self.pipe.unet.config.in_channels

    @property
    def scheduler_name(self) -> str:
        return type(self.pipe.scheduler).__name__

    def set_scheduler(self, name: str | None) -> None:
        """Switch scheduler (None: the model's own), always derived from the config the model shipped with."""
        self.pipe.scheduler = make_scheduler(name, self._scheduler_config)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" → the first CUDA device if there is one, else the CPU; "cuda" without CUDA is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InputError(None, f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(None, f"device {device!r} was requested but this machine has no usable CUDA device")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InputError(None, f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    elif resolved.type != "cpu":
        raise InputError(None, f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None/"auto" → fp32 on CPU (half precision is slow or unsupported there), bf16 on GPUs that have it
    (same range as fp32, so no overflow in the VAE), else fp16."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise InputError(None, f"dtype must be one of fp32, fp16, bf16, got {dtype}")
        return dtype
    if dtype is None or dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise InputError(None, f"dtype must be one of auto, fp32, fp16, bf16, got {dtype!r}")
    return DTYPES[dtype]


def make_scheduler(name: str | None, config: dict) -> SchedulerMixin:
    """Build the named scheduler from a scheduler config; None rebuilds the model's own class."""
    if name is None:
        return getattr(diffusers.schedulers, config["_class_name"]).from_config(config)
    if name not in SCHEDULERS:
        raise InputError(None, f"scheduler must be one of {', '.join(SCHEDULERS)}, got {name!r}")
    return SCHEDULERS[name](config)


def load_model(
    path: str | Path,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    scheduler: str | None = None,
    config: str | Path | None = None,
) -> InpaintModel:
    """Load a diffusers folder (with model_index.json) or a single-file .safetensors checkpoint.

    A single-file checkpoint needs `config`: a local diffusers folder of the same architecture (its
    config files, tokenizer and scheduler are used; its weights are not). diffusers would otherwise look
    the architecture up on the hub, which is not there offline.
    """
    path = Path(path)
    # 1. Check the files before importing any weights: errors name the path and say what is wrong.
    if not path.exists():
        raise InputError(path, "no such model folder or checkpoint file")
    if path.is_dir():
        in_channels = _check_diffusers_folder(path)
    else:
        in_channels = _check_single_file(path, config)
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise InputError(None, f"scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)

    # 2. Load. The pipeline class is the inpainting one for both UNet kinds: with a 4-channel UNet
    #    diffusers' StableDiffusionInpaintPipeline blends the noised source latents back in outside the
    #    mask after every step. No safety checker: it blanks images it mistakes for nudity, and scans
    #    are not photographs.
    common = dict(
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        dtype=torch_dtype,
        local_files_only=True,
    )
    try:
        if path.is_dir():
            pipe = StableDiffusionInpaintPipeline.from_pretrained(path, **common)
        else:
            pipe = StableDiffusionInpaintPipeline.from_single_file(str(path), config=str(config), **common)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        raise InputError(path, f"could not load the model: {error}") from error
    if pipe.unet.config.in_channels != in_channels:  # a config folder that disagrees with the weights
        raise InputError(path, f"the UNet has {pipe.unet.config.in_channels} input channels, expected {in_channels}")

    # 3. Place it, and pick the scheduler.
    pipe.to(torch_device)
    pipe.set_progress_bar_config(disable=True)  # progress goes to the caller's callback instead
    scheduler_config = dict(pipe.scheduler.config)
    model = InpaintModel(
        pipe=pipe, path=path, device=torch_device, dtype=torch_dtype, _scheduler_config=scheduler_config
    )
    if scheduler is not None:
        model.set_scheduler(scheduler)
    logger.info(
        "loaded %s (%d-channel UNet, %s, %s, %s)", path, in_channels, torch_device, torch_dtype, model.scheduler_name
    )
    return model


def _check_diffusers_folder(folder: Path, *, role: str = "model") -> int:
    """Check that `folder` holds an SD 1.x/2.x diffusers pipeline and return its UNet's input channels."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise InputError(folder, f"not a diffusers {role} folder: there is no model_index.json")
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(index_file, f"cannot be read as JSON: {error}") from error
    if "text_encoder_2" in index or "transformer" in index:
        pipeline = index.get("_class_name", "this pipeline")
        raise InputError(folder, f"{pipeline} is not supported: only Stable Diffusion 1.x/2.x models are")
    for name in REQUIRED_COMPONENTS:
        entry = index.get(name)
        if not entry or entry[0] is None or not (folder / name).is_dir():
            raise InputError(folder, f"not a complete Stable Diffusion {role}: component '{name}' is missing")
    unet_config = folder / "unet" / "config.json"
    try:
        in_channels = json.loads(unet_config.read_text(encoding="utf-8"))["in_channels"]
    except (OSError, ValueError, KeyError) as error:
        raise InputError(unet_config, f"cannot read the UNet's in_channels: {error}") from error
    _check_unet_channels(folder, in_channels)
    return in_channels


def _check_single_file(checkpoint: Path, config: str | Path | None) -> int:
    """Check a single-file checkpoint and its config folder; return the checkpoint's UNet input channels."""
    if checkpoint.suffix.lower() in _UNSAFE_CHECKPOINT_SUFFIXES:
        raise InputError(
            checkpoint,
            f"{checkpoint.suffix} checkpoints are pickles that can run code when loaded; only .safetensors is "
            "accepted (convert it once in a sandbox, e.g. with diffusers' conversion scripts)",
        )
    if checkpoint.suffix.lower() != ".safetensors":
        raise InputError(checkpoint, "not a diffusers model folder or a .safetensors checkpoint")
    if config is None:
        raise InputError(
            checkpoint,
            "a single-file checkpoint needs config=<local diffusers folder of the same architecture> "
            "(e.g. a copy of the stable-diffusion-inpainting repository without weights); offline, "
            "diffusers cannot fetch the original configuration",
        )
    config_in_channels = _check_diffusers_folder(Path(config), role="config")
    try:
        with safe_open(str(checkpoint), framework="pt") as weights:
            if _LDM_UNET_CONV_IN not in weights.keys():
                raise InputError(
                    checkpoint,
                    "not an original-layout Stable Diffusion checkpoint: no model.diffusion_model.* weights",
                )
            in_channels = weights.get_slice(_LDM_UNET_CONV_IN).get_shape()[1]
    except (SafetensorError, OSError) as error:
        raise InputError(checkpoint, f"not a readable safetensors file: {error}") from error
    _check_unet_channels(checkpoint, in_channels)
    if in_channels != config_in_channels:
        raise InputError(
            checkpoint,
            f"the checkpoint's UNet has {in_channels} input channels but the config folder {config} "
            f"describes {config_in_channels}; use a config folder of the same architecture",
        )
    return in_channels


def _check_unet_channels(source: Path, in_channels: int) -> None:
    if in_channels not in SUPPORTED_UNET_CHANNELS:
        raise InputError(
            source,
            f"the UNet has {in_channels} input channels; supported are 9 (an inpainting model) "
            "and 4 (a base model, inpainted by latent blending)",
        )
