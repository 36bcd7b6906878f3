"""The inpainting core: model-space slices and masks in, N x num_variants inpainted slices out.

It drives diffusers' StableDiffusionInpaintPipeline, which handles both UNet kinds:
- 9 input channels (an inpainting model): the UNet sees the noisy latents, the mask and the latents of
  the masked image at every step.
- 4 input channels (a base text-to-image model): after every step, the latents outside the mask are
  replaced by the source image's latents noised to the next timestep ("latent blending"), so only the
  masked region is generated. diffusers 0.42 does this in `StableDiffusionInpaintPipeline.__call__`
  (`if num_channels_unet == 4: ... latents = (1 - init_mask) * init_latents_proper + init_mask * latents`).

Images cross into diffusers as float tensors in [0, 1] and come back as float tensors
(`output_type="pt"`): no uint8 or PIL round trip anywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from medgen.errors import InputError
from medgen.generate.feature_cache import cached_unet_calls, check_cache_interval, check_model
from medgen.generate.prompt_blend import encode_blended_prompt, has_blend

if TYPE_CHECKING:
    from diffusers import StableDiffusionInpaintPipeline

    from medgen.generate.models import InpaintModel

logger = logging.getLogger(__name__)

MAX_SEED = 2**63 - 1  # what survives JSON, SQLite and DICOM integer fields unchanged


def inpaint(
    model: InpaintModel,
    images: np.ndarray,
    masks: np.ndarray,
    *,
    prompt: str,
    negative_prompt: str | None = None,
    num_variants: int = 1,
    seeds: list[int],
    num_inference_steps: int = 30,
    guidance_scale: float = 7.5,
    strength: float = 1.0,
    callback: Callable[[int, int], None] | None = None,
    control_images: np.ndarray | None = None,
    cache_interval: int = 1,
) -> np.ndarray:
    """Inpaint `masks` (N, H, W; >= 0.5 means inpaint) into `images` (N, H, W; model space [-1, 1]).

    Returns float32 (N, num_variants, H, W) in [-1, 1], the mean of the decoder's three channels.
    Variant v of every slice starts from a CPU torch.Generator seeded with seeds[v], so a slice and its
    neighbours share their noise, and the same seeds, settings and device reproduce the output exactly,
    however the pairs happen to be batched. `callback(steps_done, total_steps)` is called after every
    denoising step of every batch; an exception raised in it stops the run (use that to cancel).
    With a ControlNet loaded (`model.control`), `control_images` (N, H, W) in [0, 1] steer each slice.
    `cache_interval` N > 1 runs the whole UNet every N-th step only, reusing its deep features in the
    steps between (generate.feature_cache); a model it cannot split (a ControlNet) is refused.
    """
    pipe = model.pipe

    # 1. Check inputs
    images, masks = check_inputs(
        model,
        images,
        masks,
        prompt=prompt,
        negative_prompt=negative_prompt,
        num_variants=num_variants,
        seeds=seeds,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        strength=strength,
    )
    check_cache_interval(cache_interval)
    check_model(model, cache_interval)
    num_slices, height, width = images.shape
    if model.control is not None:
        if control_images is None or np.shape(control_images) != images.shape:
            raise InputError(None, f"a ControlNet is loaded: control_images must have shape {images.shape}")
        control_tensor = torch.from_numpy(np.asarray(control_images, np.float32))[:, None].expand(-1, 3, -1, -1)

    # 2. Encode the prompt once; every batch reuses the embeddings
    cut = prompt_overflow(pipe, prompt)
    if cut is not None:
        logger.warning(
            "prompt is longer than the text encoder's %d tokens; this part was cut: '%s'",
            pipe.tokenizer.model_max_length,
            cut,
        )
    do_classifier_free_guidance = guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
    prompt_embeds, negative_prompt_embeds = pipe.encode_prompt(
        prompt,
        model.device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=do_classifier_free_guidance,
        negative_prompt=negative_prompt,
    )
    blended = has_blend(prompt)  # "[healthy:0.3|diseased:0.7]": a weighted mix of the encoded alternatives
    if blended:
        prompt_embeds = encode_blended_prompt(pipe, prompt, model.device)

    # 3. Pair every slice with every variant, each pair with its own generator
    pairs = [(n, v) for n in range(num_slices) for v in range(num_variants)]
    batches = [pairs[i : i + model.max_batch_size] for i in range(0, len(pairs), model.max_batch_size)]

    # 4. Model space [-1, 1] grayscale → the pipeline's 3-channel [0, 1] input (it maps back to [-1, 1])
    image_tensor = torch.from_numpy((images + 1.0) / 2.0)[:, None].expand(-1, 3, -1, -1)
    mask_tensor = torch.from_numpy(masks)[:, None]

    # 5. Progress: count steps over all batches
    steps_done = 0

    def on_step_end(pipeline, step, timestep, callback_kwargs):
        nonlocal steps_done
        steps_done += 1
        if callback is not None:
            callback(steps_done, pipeline.num_timesteps * len(batches))
        return {}

    # 6. Denoise batch by batch: 9-channel UNets through the engine's own loop (fast path), 4-channel
    #    UNets through diffusers, which blends latents outside the mask; with a ControlNet, every UNet
    #    kind through diffusers' ControlNet inpainting pipeline
    output = np.empty((num_slices, num_variants, height, width), dtype=np.float32)
    runner = model.fast_runner if model.control is None else None
    control_kwargs = {}
    if model.control is not None:
        pipe, control_scale, _ = model.control
        pipe.scheduler = model.pipe.scheduler  # follow set_scheduler
    steps_per_batch = min(int(num_inference_steps * strength), num_inference_steps)

    def on_runner_step(step, timestep, latents):
        nonlocal steps_done
        steps_done += 1
        if callback is not None:
            callback(steps_done, steps_per_batch * len(batches))

    for batch in batches:
        slice_index = [n for n, _ in batch]
        generators = [torch.Generator("cpu").manual_seed(seeds[v]) for _, v in batch]
        if runner is not None:
            result = runner(
                image_tensor[slice_index].mul(2.0).sub(1.0).contiguous(),
                mask_tensor[slice_index],
                prompt=prompt,
                negative_prompt=negative_prompt,
                prompt_embeds=prompt_embeds if blended else None,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                strength=strength,
                generator=generators,
                callback=on_runner_step,
                cache_interval=cache_interval,
            )
            gray = result.float().mean(dim=1).clamp(-1.0, 1.0).cpu().numpy()
            for (n, v), slice_out in zip(batch, gray):
                output[n, v] = slice_out
            continue
        if model.control is not None:
            control_kwargs = {
                "control_image": control_tensor[slice_index].contiguous(),
                "controlnet_conditioning_scale": control_scale,
            }
        with cached_unet_calls(pipe.unet, cache_interval):  # 4-channel UNets: the same split inside diffusers
            result = pipe(
                image=image_tensor[slice_index].contiguous(),
                mask_image=mask_tensor[slice_index],
                prompt_embeds=prompt_embeds.expand(len(batch), -1, -1),
                negative_prompt_embeds=(
                    negative_prompt_embeds.expand(len(batch), -1, -1) if do_classifier_free_guidance else None
                ),
                height=height,
                width=width,
                strength=strength,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                generator=generators,
                output_type="pt",
                callback_on_step_end=on_step_end,
                return_dict=False,
                **control_kwargs,
            )[0]

        # 7. Back to grayscale model space: [0, 1] RGB → mean of the channels → [-1, 1]
        gray = result.float().mean(dim=1).mul(2.0).sub(1.0).clamp(-1.0, 1.0).cpu().numpy()
        for (n, v), slice_out in zip(batch, gray):
            output[n, v] = slice_out
    return output


def check_inputs(
    model: InpaintModel,
    images: np.ndarray,
    masks: np.ndarray,
    *,
    prompt: str,
    negative_prompt: str | None,
    num_variants: int,
    seeds: list[int],
    num_inference_steps: int,
    guidance_scale: float,
    strength: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Check every argument before any work starts; return images and masks as float32 arrays."""
    size = model.resolution
    images = np.asarray(images)
    masks = np.asarray(masks)
    if images.ndim != 3 or images.shape[0] < 1 or images.shape[1:] != (size, size):
        raise InputError(None, f"images must have shape (N, {size}, {size}) for this model, got {images.shape}")
    if masks.shape != images.shape:
        raise InputError(None, f"masks must have the shape of images {images.shape}, got {masks.shape}")
    images = images.astype(np.float32, copy=False)
    masks = masks.astype(np.float32, copy=False)
    if not np.isfinite(images).all():
        raise InputError(None, "images contain NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if low < -1.001 or high > 1.001:
        raise InputError(None, f"images must be in model space [-1, 1], got values in [{low:.4g}, {high:.4g}]")
    images = np.clip(images, -1.0, 1.0)  # absorb float rounding from the intensity mapping
    if not np.isfinite(masks).all() or masks.min() < 0 or masks.max() > 1:
        raise InputError(None, "masks must be in [0, 1] (1 = inpaint)")
    if not isinstance(prompt, str):
        raise InputError(None, f"prompt must be a string, got {type(prompt).__name__}")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise InputError(None, f"negative_prompt must be a string or None, got {type(negative_prompt).__name__}")
    if not isinstance(num_variants, int) or num_variants < 1:
        raise InputError(None, f"num_variants must be an integer >= 1, got {num_variants}")
    if len(seeds) != num_variants:
        raise InputError(None, f"seeds must hold one seed per variant ({num_variants}), got {len(seeds)}")
    for seed in seeds:
        if not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
            raise InputError(None, f"seeds must be integers in [0, 2**63 - 1], got {seed!r}")
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise InputError(None, f"num_inference_steps must be an integer >= 1, got {num_inference_steps}")
    if not guidance_scale >= 0:  # also catches NaN
        raise InputError(None, f"guidance_scale must be >= 0, got {guidance_scale}")
    if not 0 < strength <= 1:
        raise InputError(None, f"strength must be in (0, 1], got {strength}")
    if int(num_inference_steps * strength) < 1:
        raise InputError(
            None,
            f"strength {strength} with {num_inference_steps} steps leaves no denoising step; "
            "raise num_inference_steps or strength",
        )
    return images, masks


def prompt_overflow(pipe: StableDiffusionInpaintPipeline, prompt: str) -> str | None:
    """The text the CLIP text encoder will not see because the prompt has too many tokens, or None."""
    if hasattr(pipe, "maybe_convert_prompt"):  # expand textual-inversion tokens as encode_prompt will
        prompt = pipe.maybe_convert_prompt(prompt, pipe.tokenizer)
    tokenizer = pipe.tokenizer
    limit = tokenizer.model_max_length
    encoded = tokenizer(prompt, truncation=False, return_offsets_mapping=tokenizer.is_fast, verbose=False)
    ids = encoded["input_ids"]
    if len(ids) <= limit:
        return None
    # The encoder keeps the start token, limit - 2 prompt tokens and the end token; index limit - 1 is
    # the first token lost. The offsets point into the original text, so the user sees their own words.
    if tokenizer.is_fast:
        return prompt[encoded["offset_mapping"][limit - 1][0] :].strip()
    return tokenizer.decode(ids[limit - 1 : -1]).strip()
