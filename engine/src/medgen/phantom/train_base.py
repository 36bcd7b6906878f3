"""Train the shipped demo model from scratch on phantoms: VAE, then UNet and text encoder together.

The result is an ordinary diffusers inpainting folder (AutoencoderKL, 9-channel UNet2DConditionModel,
CLIPTextModel + CLIPTokenizer, DDIM scheduler) that loads through the same `from_pretrained` path as
any real model. Every setting lives in `TrainSettings`; the same settings and seed give the same data
and the same initial weights, and on the same machine and thread count the same weights.

The UNet is trained with exactly the conditioning `StableDiffusionInpaintPipeline` gives it at
inference: the mask downsampled to latent size by nearest-neighbour interpolation, the masked image
(zero under the mask) encoded by the VAE and scaled, and the text encoder's last hidden state of
the prompt padded to 77 tokens. The empty prompt (and "healthy", "normal tissue", ...) is trained to
mean healthy tissue, so classifier-free guidance pushes away from "no lesion".
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionInpaintPipeline,
    UNet2DConditionModel,
)
from tqdm import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from medgen.phantom.anatomy import Tissue
from medgen.phantom.dataset import HEALTHY, TrainingPairs, make_training_pairs
from medgen.phantom.lesions import BASE_TYPES, prompt_words, sample_prompt
from medgen.phantom.vocab import TEXT_MAX_LENGTH, build_tokenizer, save_tokenizer

logger = logging.getLogger(__name__)

# The SD 1.x noise schedule, shared by the training (DDPM) and the shipped inference (DDIM) scheduler.
NOISE_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


@dataclass
class TrainSettings:
    """Everything that decides the shipped weights. Change a number here, retrain, and say so in PHANTOM.md."""

    seed: int = 0
    resolution: int = 64  # the model's input size: the engine resizes its crops to this
    num_pairs: int = 12000  # phantom crops made once, reused by both stages
    healthy_fraction: float = 0.2  # pairs whose mask holds healthy tissue (taught as the empty prompt)
    # VAE: 64 -> 16 latents (x4), 4 latent channels
    vae_channels: tuple[int, ...] = (16, 32, 64)
    vae_steps: int = 1500
    vae_batch_size: int = 16
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    vae_lesion_weight: float = 4.0  # extra pixel-loss weight inside the mask: lesions are small
    vae_masked_fraction: float = 0.25  # also learn the masked images the UNet is conditioned on
    # UNet + text encoder
    unet_channels: tuple[int, ...] = (48, 96)
    unet_steps: int = 4000
    unet_batch_size: int = 32
    unet_lr: float = 4e-4
    warmup_steps: int = 100
    lesion_loss_weight: float = 4.0  # extra noise-loss weight on latents under (and next to) the mask
    min_snr_gamma: float = 5.0  # Min-SNR weighting: faster convergence for small budgets
    ema_decay: float = 0.995
    text_hidden_size: int = 64
    text_layers: int = 2
    num_threads: int = 2

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def build_vae(settings: TrainSettings) -> AutoencoderKL:
    n = len(settings.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=settings.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=settings.resolution,
        mid_block_add_attention=False,  # phantoms need no global attention; it would only cost time
    )


def build_unet(settings: TrainSettings, latent_size: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=9,  # 4 noisy latents + 1 mask + 4 masked-image latents
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=settings.unet_channels,
        layers_per_block=1,
        norm_num_groups=16,
        cross_attention_dim=settings.text_hidden_size,
        attention_head_dim=4,
    )


def build_text_encoder(settings: TrainSettings, tokenizer) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=settings.text_hidden_size,
            intermediate_size=2 * settings.text_hidden_size,
            num_hidden_layers=settings.text_layers,
            num_attention_heads=4,
            max_position_embeddings=TEXT_MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


class ThreadGovernor:
    """Drop to one thread while other jobs load the machine, and go back when they end.

    On a shared 2-core machine two processes with 2 OpenMP threads each slow each other down
    tenfold (threads wait at every barrier for a descheduled peer); one thread each is only 2x.
    The one-minute load average decides, checked every ``every`` steps. Thread count can change
    floating-point summation order, so weights are reproducible to rounding, not to the bit.
    """

    def __init__(self, max_threads: int, every: int = 20, busy_load: float = 2.6):
        self.max_threads, self.every, self.busy_load = max_threads, every, busy_load
        self.threads = max_threads
        torch.set_num_threads(max_threads)

    def step(self, step: int) -> None:
        if step % self.every or self.max_threads == 1:
            return
        wanted = 1 if os.getloadavg()[0] > self.busy_load else self.max_threads
        if wanted != self.threads:
            torch.set_num_threads(wanted)
            logger.info("step %d: load %.1f, now %d thread(s)", step, os.getloadavg()[0], wanted)
            self.threads = wanted


def _cosine_lr(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _as_rgb(images: torch.Tensor) -> torch.Tensor:
    """(B, R, R) grayscale -> (B, 3, R, R): the engine feeds grayscale as three equal channels."""
    return images[:, None].expand(-1, 3, -1, -1).contiguous()


def _masked(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The pipeline's masked image: zero (mid-window) wherever the mask is set."""
    return images * (masks < 0.5)


def train_vae(settings: TrainSettings, pairs: TrainingPairs, generator: torch.Generator) -> tuple[AutoencoderKL, list]:
    """Reconstruction (L1, heavier under the mask) plus a tiny KL term, as SD's VAE but without a GAN."""
    vae = build_vae(settings)
    governor = ThreadGovernor(settings.num_threads)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    images = torch.from_numpy(pairs.images.astype(np.float32))
    masks = torch.from_numpy(pairs.masks.astype(np.float32))
    history = []
    bar = tqdm(range(settings.vae_steps), desc="VAE", unit="step", mininterval=5.0)
    for step in bar:
        governor.step(step)
        for group in optimizer.param_groups:
            group["lr"] = settings.vae_lr * _cosine_lr(step, settings.vae_steps, settings.warmup_steps)
        index = torch.randint(len(pairs), (settings.vae_batch_size,), generator=generator)
        x, m = images[index], masks[index]
        use_masked = torch.rand(len(index), generator=generator) < settings.vae_masked_fraction
        x = torch.where(use_masked[:, None, None], _masked(x, m), x)
        posterior = vae.encode(_as_rgb(x)).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(z).sample
        weight = 1.0 + settings.vae_lesion_weight * F.max_pool2d(m[:, None], 5, stride=1, padding=2)
        l1 = (weight * (recon - _as_rgb(x)).abs()).mean()
        kl = posterior.kl().mean()
        loss = l1 + settings.vae_kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == settings.vae_steps - 1:
            history.append({"step": step, "l1": l1.item(), "kl": kl.item()})
            bar.set_postfix(l1=f"{l1.item():.4f}")
            logger.info("vae step %d l1 %.4f kl %.1f", step, l1.item(), kl.item())
    vae.eval().requires_grad_(False)
    return vae, history


@torch.no_grad()
def encode_pairs(vae: AutoencoderKL, pairs: TrainingPairs, batch_size: int = 128) -> dict[str, torch.Tensor]:
    """Posterior mean and std of every image and of its masked version, computed once (the VAE is frozen)."""
    out = {"mean": [], "std": [], "masked_mean": [], "masked_std": []}
    for start in range(0, len(pairs), batch_size):
        x = torch.from_numpy(pairs.images[start : start + batch_size].astype(np.float32))
        m = torch.from_numpy(pairs.masks[start : start + batch_size].astype(np.float32))
        for key, image in (("", x), ("masked_", _masked(x, m))):
            posterior = vae.encode(_as_rgb(image)).latent_dist
            out[key + "mean"].append(posterior.mean)
            out[key + "std"].append(posterior.std)
    return {k: torch.cat(v) for k, v in out.items()}


def _sample_latents(latents, prefix: str, index, scaling_factor: float, generator) -> torch.Tensor:
    mean, std = latents[prefix + "mean"][index], latents[prefix + "std"][index]
    return (mean + std * torch.randn(mean.shape, generator=generator)) * scaling_factor


def train_unet(
    settings: TrainSettings,
    pairs: TrainingPairs,
    latents: dict[str, torch.Tensor],
    scaling_factor: float,
    tokenizer,
    generator: torch.Generator,
    rng: np.random.Generator,
) -> tuple[UNet2DConditionModel, CLIPTextModel, list]:
    """Epsilon-prediction training of UNet and text encoder on the precomputed latents."""
    latent_size = latents["mean"].shape[-1]
    unet = build_unet(settings, latent_size)
    text_encoder = build_text_encoder(settings, tokenizer)
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=settings.unet_lr, weight_decay=1e-4)
    ema = [p.detach().clone() for p in parameters]
    scheduler = DDPMScheduler(**NOISE_SCHEDULE)
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1.0 - alphas)
    masks = torch.from_numpy(pairs.masks.astype(np.float32))[:, None]
    governor = ThreadGovernor(settings.num_threads)
    history = []
    bar = tqdm(range(settings.unet_steps), desc="UNet", unit="step", mininterval=5.0)
    for step in bar:
        governor.step(step)
        for group in optimizer.param_groups:
            group["lr"] = settings.unet_lr * _cosine_lr(step, settings.unet_steps, settings.warmup_steps)
        index = torch.randint(len(pairs), (settings.unet_batch_size,), generator=generator)
        # 1. Clean and masked-image latents, sampled from the posterior as the pipeline does
        x0 = _sample_latents(latents, "", index, scaling_factor, generator)
        masked_latents = _sample_latents(latents, "masked_", index, scaling_factor, generator)
        mask_latent = F.interpolate(masks[index], size=(latent_size, latent_size))  # nearest, as the pipeline
        # 2. Prompts drawn from the vocabulary for each pair's content
        prompts = [
            sample_prompt(
                None if int(pairs.lesion_types[i]) == HEALTHY else BASE_TYPES[int(pairs.lesion_types[i])],
                "liver" if int(pairs.organs[i]) == Tissue.LIVER else "spleen",
                float(pairs.radii_mm[i]),
                rng,
            )
            for i in index.tolist()
        ]
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        # 3. Noise, predict it back
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(index),), generator=generator)
        noisy = scheduler.add_noise(x0, noise, t)
        hidden = text_encoder(ids)[0]
        pred = unet(torch.cat([noisy, mask_latent, masked_latents], dim=1), t, encoder_hidden_states=hidden).sample
        # 4. Weighted loss: more weight where the lesion is, Min-SNR over timesteps
        near_mask = F.max_pool2d(F.interpolate(masks[index], size=(latent_size, latent_size), mode="area"), 3, 1, 1)
        pixel_weight = 1.0 + settings.lesion_loss_weight * (near_mask > 0).float()
        time_weight = torch.clamp(snr[t], max=settings.min_snr_gamma) / snr[t]
        per_sample = (pixel_weight * (pred - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (time_weight * per_sample).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        decay = min(settings.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, parameters):
                e.mul_(decay).add_(p.detach(), alpha=1.0 - decay)
        if step % 50 == 0 or step == settings.unet_steps - 1:
            history.append({"step": step, "loss": loss.item()})
            bar.set_postfix(loss=f"{loss.item():.4f}")
            logger.info("unet step %d loss %.4f", step, loss.item())
    with torch.no_grad():
        for e, p in zip(ema, parameters):
            p.copy_(e)
    return unet.eval(), text_encoder.eval(), history


def _load_or_make_pairs(settings: TrainSettings, cache: Path | None) -> TrainingPairs:
    key = np.array([settings.seed, settings.resolution, settings.num_pairs, settings.healthy_fraction])
    if cache is not None and Path(cache).is_file():
        stored = np.load(cache)
        if np.array_equal(stored["key"], key):
            return TrainingPairs(*(stored[name] for name in ("images", "masks", "lesion_types", "organs", "radii_mm")))
    with tqdm(total=settings.num_pairs, desc="phantom crops", unit="crop", mininterval=5.0) as bar:
        pairs = make_training_pairs(
            settings.num_pairs,
            seed=settings.seed,
            resolution=settings.resolution,
            healthy_fraction=settings.healthy_fraction,
            progress=bar.update,
        )
    if cache is not None:
        np.savez(cache, key=key, **{name: getattr(pairs, name) for name in
                                    ("images", "masks", "lesion_types", "organs", "radii_mm")})
    return pairs


def train_base_model(out: Path, settings: TrainSettings | None = None, pairs_cache: Path | None = None) -> Path:
    """Make the data, train both stages, and save a diffusers folder (safetensors) to ``out``.

    ``pairs_cache`` (an .npz path) keeps the phantom crops between runs; they depend only on the
    seed, resolution, count and healthy fraction, which are checked when the cache is read.
    """
    settings = settings or TrainSettings()
    out = Path(out)
    torch.set_num_threads(settings.num_threads)
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed + 1)
    timings = {}

    # 1. Phantom crops, made as the engine makes them
    start = time.perf_counter()
    pairs = _load_or_make_pairs(settings, pairs_cache)
    timings["data_s"] = time.perf_counter() - start

    # 2. VAE
    start = time.perf_counter()
    vae, vae_history = train_vae(settings, pairs, generator)
    latents = encode_pairs(vae, pairs)
    scaling_factor = float(1.0 / latents["mean"].std())  # unit-variance latents, as SD's 0.18215
    vae.register_to_config(scaling_factor=scaling_factor)
    timings["vae_s"] = time.perf_counter() - start

    # 3. UNet + text encoder
    start = time.perf_counter()
    tokenizer = build_tokenizer(prompt_words())
    unet, text_encoder, unet_history = train_unet(
        settings, pairs, latents, scaling_factor, tokenizer, generator, rng
    )
    timings["unet_s"] = time.perf_counter() - start

    # 4. Save as a standard diffusers inpainting folder
    pipe = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**NOISE_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tokenizer, out / "tokenizer")
    timings["total_s"] = sum(timings.values())
    record = {
        "settings": settings.to_json(),
        "timings": timings,
        "torch": torch.__version__,
        "vae_history": vae_history,
        "unet_history": unet_history,
    }
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    write_recommended_settings(out)
    return out


MODALITY_ADAPTERS = {"MR": "modalities/mr", "CR": "modalities/cr"}
"""Where in the model folder the LoRA trained for each further modality lives (``train_modality_adapters``)."""


@dataclass
class ModalityAdapterSettings:
    """How the MR and CR adapters of the demo model are trained (``medgen phantom train-adapters``)."""

    crops: int = 400
    steps: int = 1500
    rank: int = 8
    batch_size: int = 16
    learning_rate: float = 1e-3
    seed: int = 0


def train_modality_adapters(model_dir: Path, settings: ModalityAdapterSettings | None = None) -> list[Path]:
    """Train one LoRA per further modality on phantom crops rendered as that modality
    (``phantom.modalities``) on top of the model in ``model_dir``, into its ``modalities/`` folder, and
    state them in its medgen.json; the model then takes an MR or a radiograph without --force-modality."""
    from medgen.train.data import phantom_modality_crops
    from medgen.train.lora import train_lora
    from medgen.train.loop import AdapterTrainSettings

    settings = settings or ModalityAdapterSettings()
    model_dir = Path(model_dir)
    written = []
    for modality, folder in MODALITY_ADAPTERS.items():
        out = model_dir / folder
        crops = phantom_modality_crops(settings.crops, modality, seed=settings.seed,
                                       resolution=read_resolution(model_dir))
        train_settings = AdapterTrainSettings(steps=settings.steps, batch_size=settings.batch_size,
                                              learning_rate=settings.learning_rate, seed=settings.seed, device="cpu")
        with tempfile.TemporaryDirectory(dir=model_dir) as staging:
            train_lora(model_dir, crops, Path(staging) / "adapter", rank=settings.rank, settings=train_settings)
            shutil.rmtree(Path(staging) / "adapter" / "checkpoints", ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            out.parent.mkdir(exist_ok=True)
            os.replace(Path(staging) / "adapter", out)
        written.append(out)
    write_recommended_settings(model_dir)
    return written


def read_resolution(model_dir: Path) -> int:
    """The model's input size from its configs: UNet sample size times the VAE's downsampling."""
    unet = json.loads((Path(model_dir) / "unet" / "config.json").read_text(encoding="utf-8"))
    vae = json.loads((Path(model_dir) / "vae" / "config.json").read_text(encoding="utf-8"))
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def write_recommended_settings(model_dir: Path) -> Path:
    """medgen.json: the settings `medgen inpaint` and the API use for this model unless told otherwise,
    and its intensity contracts: CT through the soft-tissue window the training pairs were made with,
    and MR and CR by the percentile rule for each modality adapter present in the folder."""
    from medgen.generate.settings import write_model_settings
    from medgen.imaging.intensity import PERCENTILE_RANGE, IntensityContract, ModelContracts, Window
    from medgen.phantom.dataset import SOFT_TISSUE_WINDOW
    from medgen.phantom.model import DEMO_CROP_PADDING_PX, DEMO_GUIDANCE_SCALE, DEMO_STEPS

    settings = {
        "guidance_scale": DEMO_GUIDANCE_SCALE,
        "num_inference_steps": DEMO_STEPS,
        "crop_padding_px": DEMO_CROP_PADDING_PX,
    }
    main = IntensityContract(modality="CT", window=Window(*SOFT_TISSUE_WINDOW))
    others = tuple(
        IntensityContract(modality=modality, percentiles=PERCENTILE_RANGE, adapter=folder)
        for modality, folder in MODALITY_ADAPTERS.items()
        if (Path(model_dir) / folder / "adapter.json").is_file()
    )
    return write_model_settings(model_dir, settings, ModelContracts(main, others), lesion_intensity_table())


def lesion_intensity_table() -> dict:
    """What the base types the model was trained on measure (`generate.calibration`): their nominal HU
    and the spread of a uniform draw of ±hu_spread (std = spread / sqrt 3). The held-out type is not
    in it: the base model never saw one."""
    from medgen.phantom.lesions import BASE_TYPES, LESION_SPECS

    return {
        t.value: {"phrases": list(LESION_SPECS[t].phrases), "modality": "CT", "mean": LESION_SPECS[t].hu,
                  "std": round(LESION_SPECS[t].hu_spread / np.sqrt(3.0), 3)}
        for t in BASE_TYPES
    }
