"""The inpainting-aware training loop shared by textual inversion, LoRA and ControlNet.

The UNet sees exactly the conditioning `StableDiffusionInpaintPipeline` gives it at inference (the
mask at latent size by nearest-neighbour interpolation, the VAE latents of the image with the mask
zeroed), and the noise-prediction loss counts only latents under or next to the lesion mask, so the
adapter learns the lesion, not the anatomy around it. Built on accelerate: mixed precision, gradient
checkpointing, `save_state`/`load_state` checkpoints for `--resume`, seeded, a tqdm bar with the loss.
The loss on one fixed batch (same crops, noise and timesteps) is measured before and after training
and written into adapter.json, so "did it learn" has an answer that step-to-step noise cannot blur.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler
from tqdm import tqdm

from medgen.generate.inpaint import inpaint
from medgen.generate.models import InpaintModel
from medgen.train.data import AdapterCrops

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
FIXED_BATCH_SIZE = 16
"""Crops in the fixed batch whose loss is measured before and after training (adapter.json)."""


@dataclass
class AdapterTrainSettings:
    """Every number that decides an adapter's weights; written into its adapter.json."""

    steps: int = 400
    batch_size: int = 16
    learning_rate: float = 5e-3
    seed: int = 0
    mixed_precision: str = "auto"  # "no", "fp16", "bf16"; auto: no on CPU, bf16/fp16 on CUDA
    gradient_checkpointing: bool = False
    outside_loss_weight: float = 0.0  # loss weight of latents away from the mask (0: lesion only)
    checkpoint_every: int = 0  # save accelerate state every K steps (0: only at the end)
    validation_every: int = 0  # write validation images every K steps (0: never)
    validation_count: int = 4
    validation_steps: int = 20
    validation_guidance_scale: float = 1.4
    device: str = "auto"
    optimizer: str = "adamw"  # or "adamw-8bit" (bitsandbytes)

    def to_json(self) -> dict:
        return asdict(self)


class _LoopState:
    """Step counter and data/noise generator, checkpointed with the model so `--resume` continues exactly."""

    def __init__(self, seed: int):
        self.step = 0
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        return {"step": self.step, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])


def make_accelerator(settings: AdapterTrainSettings, device: torch.device) -> Accelerator:
    precision = settings.mixed_precision
    if precision == "auto":
        precision = "no" if device.type != "cuda" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    if device.type != "cuda" and precision != "no":
        raise ValueError(f"mixed precision {precision!r} needs CUDA; got device {device}")
    return Accelerator(mixed_precision=precision, cpu=device.type != "cuda")


OPTIMIZERS = ("adamw", "adamw-8bit")


def check_optimizer(name: str) -> None:
    """Fail before any work when the optimizer is unknown or its package is missing."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    if name == "adamw-8bit":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ValueError("--optimizer adamw-8bit needs bitsandbytes: pip install bitsandbytes") from None


def make_optimizer(parameters: list[torch.nn.Parameter], settings: AdapterTrainSettings) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW (a quarter of the optimizer memory) when asked for and installed."""
    check_optimizer(settings.optimizer)
    if settings.optimizer == "adamw-8bit":
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(parameters, lr=settings.learning_rate, weight_decay=0.0)
    return torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=0.0)


@torch.no_grad()
def encode_crops(model: InpaintModel, crops: AdapterCrops) -> dict[str, torch.Tensor]:
    """Posterior mean/std of each crop and of its masked version, plus the latent-size masks (VAE is frozen)."""
    vae = model.pipe.vae
    images = torch.from_numpy(crops.images.astype(np.float32))[:, None].expand(-1, 3, -1, -1)
    masks = torch.from_numpy(crops.masks.astype(np.float32))[:, None]
    out: dict[str, list] = {"mean": [], "std": [], "masked_mean": [], "masked_std": []}
    for start in range(0, len(crops), 64):
        x = images[start : start + 64].to(model.device, vae.dtype)
        m = masks[start : start + 64].to(model.device, vae.dtype)
        for key, image in (("", x), ("masked_", x * (m < 0.5))):
            posterior = vae.encode(image).latent_dist
            out[key + "mean"].append(posterior.mean.float().cpu())
            out[key + "std"].append(posterior.std.float().cpu())
    latents = {k: torch.cat(v) for k, v in out.items()}
    size = latents["mean"].shape[-2:]
    latents["mask"] = F.interpolate(masks, size=size)  # nearest, as the pipeline
    near = F.max_pool2d(F.interpolate(masks, size=size, mode="area"), 3, 1, 1) > 0
    latents["near_mask"] = near.float()
    return latents


def train_adapter(
    model: InpaintModel,
    crops: AdapterCrops,
    *,
    trainable: torch.nn.Module,
    parameters: list[torch.nn.Parameter],
    encode_prompts: Callable[[list[str]], torch.Tensor],
    settings: AdapterTrainSettings,
    out: Path,
    after_step: Callable[[], None] | None = None,
    save_adapter: Callable[[Path], None],
    validation_prompt: str,
    resume: Path | None = None,
    predict_noise: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> list[dict]:
    """Train ``parameters`` (inside ``trainable``, the module accelerate prepares) and return the loss history.

    ``predict_noise(unet_input, timesteps, prompt_embeddings, crop_indices)`` replaces the plain UNet
    call where the adapter sits outside the UNet (a ControlNet adds residuals to it).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = model.pipe
    accelerator = make_accelerator(settings, model.device)
    torch.manual_seed(settings.seed)
    state = _LoopState(settings.seed)
    latents = encode_crops(model, crops)
    scaling = float(pipe.vae.config.scaling_factor)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    optimizer = make_optimizer(parameters, settings)
    prepared, optimizer = accelerator.prepare(trainable, optimizer)
    accelerator.register_for_checkpointing(state)
    if resume is not None:
        accelerator.load_state(str(resume))
        logger.info("resumed from %s at step %d", resume, state.step)
    if settings.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        pipe.unet.train()  # diffusers checkpoints only in training mode; the demo UNet has no dropout
        if hasattr(pipe.text_encoder, "gradient_checkpointing_enable"):
            pipe.text_encoder.gradient_checkpointing_enable()
    device = model.device
    history: list[dict] = []
    bar = tqdm(range(state.step, settings.steps), desc="adapter", unit="step", initial=state.step,
               total=settings.steps, mininterval=2.0)
    def batch_loss(index: torch.Tensor, g: torch.Generator, t: torch.Tensor | None = None) -> torch.Tensor:
        # 1. Latents sampled from the posterior, as the pipeline's VAE encode does
        x0 = latents["mean"][index] + latents["std"][index] * torch.randn(latents["mean"][index].shape, generator=g)
        masked = latents["masked_mean"][index] + latents["masked_std"][index] * torch.randn(
            latents["masked_mean"][index].shape, generator=g
        )
        x0, masked = x0 * scaling, masked * scaling
        noise = torch.randn(x0.shape, generator=g)
        if t is None:
            t = torch.randint(0, scheduler.config.num_train_timesteps, (len(index),), generator=g)
        noisy = scheduler.add_noise(x0, noise, t)
        unet_in = torch.cat([noisy, latents["mask"][index], masked], dim=1).to(device)
        near = latents["near_mask"][index]
        weight = (near + settings.outside_loss_weight * (1 - near)).to(device)
        # 2. Predict the noise with the prompts' embeddings; loss on the lesion's latents only
        with accelerator.autocast():
            hidden = encode_prompts([crops.prompts[i] for i in index.tolist()])
            if predict_noise is None:
                pred = pipe.unet(unet_in.to(pipe.unet.dtype), t.to(device), encoder_hidden_states=hidden).sample
            else:
                pred = predict_noise(unet_in.to(pipe.unet.dtype), t.to(device), hidden, index)
            return (weight * (pred.float() - noise.to(device)) ** 2).sum() / weight.sum().clamp(min=1.0)

    @torch.no_grad()
    def fixed_batch_loss() -> float:
        """The loss on the same crops, noise and timesteps every time: comparable across steps and runs."""
        count = min(len(crops), FIXED_BATCH_SIZE)
        index = torch.arange(count)
        t = torch.linspace(50, scheduler.config.num_train_timesteps - 50, count).long()
        return float(batch_loss(index, torch.Generator().manual_seed(settings.seed + 1), t))

    history.append({"step": state.step, "fixed_batch_loss": fixed_batch_loss()})
    for step in bar:
        index = torch.randint(len(crops), (settings.batch_size,), generator=state.generator)
        loss = batch_loss(index, state.generator)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if after_step is not None:
            after_step()  # e.g. textual inversion keeps every other embedding row's gradient at zero
        optimizer.step()
        state.step = step + 1
        bar.set_postfix(loss=f"{loss.item():.4f}")
        history.append({"step": state.step, "loss": float(loss.item())})
        if settings.checkpoint_every and state.step % settings.checkpoint_every == 0:
            accelerator.save_state(str(out / CHECKPOINTS_DIR / f"step-{state.step}"))
        if settings.validation_every and state.step % settings.validation_every == 0:
            write_validation(model, crops, validation_prompt, settings, out / "validation" / f"step-{state.step}.png")
    history.append({"step": state.step, "fixed_batch_loss": fixed_batch_loss()})
    logger.info("loss on the fixed batch: %.4f -> %.4f", history[0]["fixed_batch_loss"], history[-1]["fixed_batch_loss"])
    pipe.unet.eval()
    accelerator.save_state(str(out / CHECKPOINTS_DIR / "last"))
    save_adapter(out)
    write_training_crop_index(out, crops)
    return history


def write_training_crop_index(out: Path, crops: AdapterCrops) -> None:
    """The index of the crops this adapter saw, for the memorization check of `medgen report`."""
    from medgen.imaging.crop_index import write_crop_index

    origins = crops.origins or [{"file": None, "slice": None, "crop_box": None, "prompt": p} for p in crops.prompts]
    write_crop_index(out, crops.images, crops.masks, origins)


@torch.no_grad()
def write_validation(model: InpaintModel, crops: AdapterCrops, prompt: str, settings: AdapterTrainSettings,
                     path: Path) -> Path:
    """Inpaint the first crops with the adapter as it stands: source row above, generated row below (PNG)."""
    from PIL import Image

    n = min(settings.validation_count, len(crops))
    fresh = dataclasses.replace(model, _fast_runner=None)  # prompt embeddings change while training
    controls = crops.controls[:n] if crops.controls is not None else None
    out = inpaint(fresh, crops.images[:n], crops.masks[:n], prompt=prompt, seeds=[settings.seed],
                  num_inference_steps=settings.validation_steps,
                  guidance_scale=settings.validation_guidance_scale, control_images=controls)[:, 0]
    grid = np.concatenate([np.concatenate(list(crops.images[:n]), axis=1), np.concatenate(list(out), axis=1)], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.uint8(np.clip((grid + 1) * 127.5, 0, 255))).save(path)
    return path


def write_manifest(out: Path, *, kind: str, base: Path, settings: AdapterTrainSettings, history: list[dict],
                   num_crops: int, contract=None, **extra) -> Path:
    """adapter.json in the form `--adapter` reads: what it is, which base model (by SHA-256) it was
    trained on, and how. ``contract``: the intensity contract the crops were made through when it is not
    the base model's (phantom MR crops for a CT base, say)."""
    from medgen.generate.adapters import write_manifest as write_adapter_manifest

    from medgen.generate.settings import read_intensity_contract

    steps = [h["loss"] for h in history if "loss" in h]
    fixed = [h["fixed_batch_loss"] for h in history if "fixed_batch_loss" in h]
    # the adapter was trained through its base model's intensity contract: record it with the adapter
    if contract is None:
        contract = read_intensity_contract(base) if Path(base).is_dir() else None

    return write_adapter_manifest(
        Path(out),
        kind=kind,
        base_model=base,
        modality=contract.modality if contract is not None else None,
        intensity=contract.to_json()["intensity"] if contract is not None else None,
        **extra,
        num_crops=num_crops,
        settings=settings.to_json(),
        final_loss=float(np.mean(steps[-20:])) if steps else None,
        fixed_batch_loss={"before": fixed[0], "after": fixed[-1]} if fixed else None,
        torch=torch.__version__,
    )
