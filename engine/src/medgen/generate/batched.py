"""Several requests through the model together: their crops stacked into shared UNet calls.

A batch run gains when the model sees more than one crop per call (one walk through the UNet's modules
for several crops). By default the layers run batched, as the kernels like best: a row run with others
equals the same row run alone only within float rounding (a stored value may differ by one).
Every (crop, variant) pair keeps its own CPU generator seeded with its variant's seed, so its noise is
drawn as when it runs alone, whatever else is in the call.

:func:`batch_invariant` (``medgen batch --batch-invariant``) makes a row's bytes the same however it
was batched and wherever it ran, at the cost of most of batching's gain:

- Convolutions, linear layers and group norms pick their kernels by batch size and memory layout
  (oneDNN and MKL on the CPU, cuDNN and cuBLAS on CUDA), so the same crop rounds differently in a batch
  of 1 and of 8. These layers of the model run unit by unit inside the batched call, each unit
  contiguous: a crop, or inside a UNet call with classifier-free guidance the crop's unconditional and
  conditional halves together (as a one-crop request gives them to the UNet). Everything else
  (attention, layer norms, element-wise work, the sampler) is computed per item by construction and
  stays batched.
- On the CPU the rounding of oneDNN's convolutions (and of a few other kernels) also depends on
  torch's thread count, which differs between a local run (torch's default: a thread per core) and a
  Ray worker (one thread): the model runs on :data:`INVARIANT_THREADS` thread while a batch-invariant
  generation lasts.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from medgen.generate.inpaint import check_inputs, prompt_overflow
from medgen.generate.prompt_blend import encode_blended_prompt, has_blend

if TYPE_CHECKING:
    from medgen.generate.models import InpaintModel

logger = logging.getLogger(__name__)


@dataclass
class Generation:
    """The model work of one request: its crops in model space and the settings to generate them."""

    crops: np.ndarray  # float32 (slices, H, W) in [-1, 1]
    masks: np.ndarray  # float32 (slices, H, W), 1 = inpaint
    control_images: np.ndarray | None
    prompts: list[str]  # per variant
    seeds: list[int]  # per variant
    negative_prompt: str | None
    num_inference_steps: int
    guidance_scale: float
    strength: float
    cache_interval: int = 1  # generate.feature_cache: the whole UNet every N-th step only

    def call_settings(self) -> tuple:
        """What every pair of one model call must share (prompts may differ: one embedding per pair)."""
        return (self.negative_prompt, self.num_inference_steps, self.guidance_scale, self.strength,
                self.cache_interval)


_PER_UNIT = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm)
"""Layers run unit by unit: their kernels pick their algorithm, and for group norms their reduction
order, by the batch size and the memory layout of the input."""


class _Units:
    """Which items of a layer's input run together; ``guided_batch`` is the batch size of the guided
    UNet call under way (its unconditional half first), else None."""

    def __init__(self):
        self.guided_batch: int | None = None

    def wrap(self, forward, has_batch):
        def run(x, *args, **kwargs):
            if not has_batch(x):
                return forward(x, *args, **kwargs)
            size = x.shape[0]
            if self.guided_batch == size and size % 2 == 0 and size > 2:
                half = size // 2
                outs = [forward(x[[i, half + i]].contiguous(), *args, **kwargs) for i in range(half)]
                return torch.cat([out[:1] for out in outs] + [out[1:] for out in outs])
            if size == 1 or self.guided_batch == size == 2:  # one unit: the whole input
                return forward(x.contiguous(), *args, **kwargs)
            return torch.cat([forward(x[i : i + 1].contiguous(), *args, **kwargs) for i in range(size)])

        return run


def _has_batch(module):
    """Whether a layer's input has a batch dimension first (an unbatched Conv2d input is (C, H, W))."""
    if isinstance(module, torch.nn.Conv2d):
        return lambda x: isinstance(x, torch.Tensor) and x.dim() == 4
    return lambda x: isinstance(x, torch.Tensor) and x.dim() >= 2


INVARIANT_THREADS = 1
"""torch threads of a batch-invariant generation on the CPU: what a Ray worker runs by default, so a
row's bytes do not depend on ``--threads`` or on the process that ran it."""


@contextlib.contextmanager
def batch_invariant(model: InpaintModel, *, guided: bool):
    """Run the model's convolutions, linear layers and group norms unit by unit, and on the CPU on
    INVARIANT_THREADS thread (see the module's docstring), so an item's result does not depend on the
    batch it is in nor on the process's thread count. ``guided``: the UNet calls of this generation
    carry classifier-free guidance (guidance scale > 1), unconditional half first. Not re-entrant: one
    at a time per model."""
    units = _Units()
    threads = torch.get_num_threads()
    on_cpu = torch.device(model.device).type == "cpu"

    def enter_unet(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        units.guided_batch = sample.shape[0] if guided else None

    def leave_unet(module, args, output):
        units.guided_batch = None

    pipe = model.pipe
    roots = [pipe.unet, pipe.vae, pipe.text_encoder]
    layers = [m for root in roots if root is not None for m in root.modules() if isinstance(m, _PER_UNIT)]
    for layer in layers:  # an instance attribute: nn.Module.__call__ calls it instead of the class's forward
        layer.forward = units.wrap(layer.forward, _has_batch(layer))
    hooks = [pipe.unet.register_forward_pre_hook(enter_unet, with_kwargs=True),
             pipe.unet.register_forward_hook(leave_unet)]
    if on_cpu and threads != INVARIANT_THREADS:
        torch.set_num_threads(INVARIANT_THREADS)
    try:
        yield
    finally:
        if on_cpu and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        for hook in hooks:
            hook.remove()
        for layer in layers:
            del layer.forward


def model_calls(model: InpaintModel, *, guided: bool, invariant: bool):
    """The context a generation's model calls run in: :func:`batch_invariant` when ``invariant``, else
    none (layers batched: the same images within float rounding, at batching's full speed)."""
    return batch_invariant(model, guided=guided) if invariant else contextlib.nullcontext()


def can_generate_together(model: InpaintModel) -> bool:
    """Shared calls go through the engine's own loop: 9-channel UNets without a ControlNet."""
    return model.control is None and model.fast_runner is not None


def generate_together(model: InpaintModel, works: list[Generation], *, invariant: bool = False) -> list[np.ndarray]:
    """Every variant of every crop of several requests, pairs of the same call settings stacked into
    UNet calls of up to ``model.max_batch_size`` pairs. Returns one float32 (slices, variants, H, W)
    array per request: ``medgen.api.generate_alone`` of that request within float rounding, or bit for
    bit when both run ``invariant`` (under :func:`batch_invariant`)."""
    runner = model.fast_runner
    resolution = model.resolution
    outputs, images, masks = [], [], []
    pairs_by_settings: dict[tuple, list[tuple[int, int, int]]] = {}
    for i, work in enumerate(works):
        crops, crop_masks = check_inputs(
            model, work.crops, work.masks, prompt=work.prompts[0], negative_prompt=work.negative_prompt,
            num_variants=len(work.seeds), seeds=work.seeds, num_inference_steps=work.num_inference_steps,
            guidance_scale=work.guidance_scale, strength=work.strength,
        )
        outputs.append(np.empty((len(crops), len(work.seeds), resolution, resolution), np.float32))
        # the same arithmetic as inpaint(): [0, 1] three-channel images, mapped back to [-1, 1] per call
        images.append(torch.from_numpy((crops + 1.0) / 2.0)[:, None].expand(-1, 3, -1, -1))
        masks.append(torch.from_numpy(crop_masks)[:, None])
        pairs = pairs_by_settings.setdefault(work.call_settings(), [])
        pairs += [(i, n, v) for n in range(len(crops)) for v in range(len(work.seeds))]

    for (negative_prompt, steps, guidance_scale, strength, cache_interval), pairs in pairs_by_settings.items():
        cfg = guidance_scale > 1.0
        with model_calls(model, guided=cfg, invariant=invariant):
            positive = {}
            for i, _, v in pairs:
                prompt = works[i].prompts[v]
                if prompt not in positive:
                    positive[prompt] = _positive_embeds(model, prompt, negative_prompt, cfg)
            for start in range(0, len(pairs), model.max_batch_size):
                batch = pairs[start : start + model.max_batch_size]
                result = runner(
                    torch.stack([images[i][n] for i, n, _ in batch]).mul(2.0).sub(1.0).contiguous(),
                    torch.stack([masks[i][n] for i, n, _ in batch]),
                    # only the negative side of this prompt is used: each pair's own embedding is given
                    prompt=works[batch[0][0]].prompts[batch[0][2]],
                    negative_prompt=negative_prompt,
                    prompt_embeds=torch.cat([positive[works[i].prompts[v]] for i, _, v in batch]),
                    num_inference_steps=steps,
                    guidance_scale=guidance_scale,
                    strength=strength,
                    generator=[torch.Generator("cpu").manual_seed(works[i].seeds[v]) for i, _, v in batch],
                    cache_interval=cache_interval,
                )
                gray = result.float().mean(dim=1).clamp(-1.0, 1.0).cpu().numpy()
                for (i, n, v), slice_out in zip(batch, gray):
                    outputs[i][n, v] = slice_out
    return outputs


def _positive_embeds(model: InpaintModel, prompt: str, negative_prompt: str | None, cfg: bool) -> torch.Tensor:
    """The prompt's embedding (1, tokens, width) exactly as the engine's loop makes it for one request."""
    runner = model.fast_runner
    cut = prompt_overflow(model.pipe, prompt)
    if cut is not None:
        logger.warning("prompt is longer than the text encoder's %d tokens; this part was cut: '%s'",
                       model.pipe.tokenizer.model_max_length, cut)
    with torch.inference_mode():
        _, positive = runner._prompt_embeds(prompt, negative_prompt, cfg)
        if has_blend(prompt):
            positive = encode_blended_prompt(model.pipe, prompt, model.device).to(runner.device, positive.dtype)
    return positive
