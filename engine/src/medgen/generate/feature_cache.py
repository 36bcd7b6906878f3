"""Fewer UNet evaluations per image: reuse the UNet's deep features across adjacent denoising steps.

Why: between adjacent steps the deep, low-resolution features of a diffusion UNet hardly change, while
the shallow, full-resolution layers carry the step-to-step detail (Ma, Fang and Wang, "DeepCache:
Accelerating Diffusion Models for Free", CVPR 2024; training-free). So with ``cache_interval`` N, step
k runs the whole UNet when k is a multiple of N and keeps the hidden state entering the last layers of
the UNet's last up block; the N - 1 steps after it run only the time embedding, ``conv_in``, the first
``branch`` layers of the first down block (the skip connections those last layers take), those last
layers fed the kept state, and ``conv_out``. Every skipped step still sees its own latents, timestep
and prompt; only the deep part of its prediction is one to N - 1 steps old. ``cache_interval`` 1 runs
the stock UNet every step: the same bytes as without this module.

``branch`` 0 (DeepCache's default, the shallowest skip branch) recomputes the last up layer only,
whose skip is ``conv_in``'s output; ``branch`` b recomputes the last b + 1 up layers and the first b
down layers. The split is written for diffusers' ``UNet2DConditionModel`` with the stock SD block types
(``DownBlock2D``/``CrossAttnDownBlock2D`` first, ``UpBlock2D``/``CrossAttnUpBlock2D`` last); any other
UNet, a ControlNet (which would still run in full every step) and FreeU are refused in one line
naming the option, never silently run in full.

Used by the engine's own loop (:class:`medgen.generate.fast.FastInpaintRunner`, which compiles and
graph-captures the full and the shallow call on CUDA as it does its plain UNet call) and, through
:func:`cached_unet_calls`, by diffusers' pipeline for 4-channel UNets. Under generate.batched's
batch_invariant the shallow calls run their layers crop by crop, so a row's bytes still do not depend
on its batch.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from medgen.errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_BRANCH",
    "MAX_CACHE_INTERVAL",
    "FeatureCache",
    "cached_unet_calls",
    "check_cache_interval",
    "check_model",
    "is_full_step",
    "unsupported_reason",
]


MAX_CACHE_INTERVAL = 10
"""Beyond ten steps between full UNet calls the deep features are too stale to be worth measuring."""
DEFAULT_BRANCH = 0
OPTION = "--cache-interval"


def check_cache_interval(value, option: str = OPTION, *, controlnet: str | None = None) -> int:
    """``value`` as an int in [1, MAX_CACHE_INTERVAL], else an InputError naming ``option``; above 1
    with a ``controlnet`` (a request's --controlnet) refused too, before any file is read."""
    import numpy as np

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_CACHE_INTERVAL:
        raise InputError(None, f"{option} must be a whole number from 1 to {MAX_CACHE_INTERVAL} (1: the whole UNet "
                         f"every step), got {value!r}")
    if value > 1 and controlnet is not None:
        raise InputError(None, _CONTROLNET_REFUSAL.format(option=option, interval=value))
    return int(value)


_CONTROLNET_REFUSAL = ("{option} {interval} needs a model without a ControlNet (the ControlNet would still run in full "
                       "every step); use {option} 1 with --controlnet")


def is_full_step(step: int, interval: int) -> bool:
    """Whether denoising step ``step`` (0-based) runs the whole UNet: every ``interval``-th, the first always."""
    return step % interval == 0


def _freeu_enabled(block) -> bool:
    return all(getattr(block, name, None) for name in ("s1", "s2", "b1", "b2"))


def unsupported_reason(unet, branch: int = DEFAULT_BRANCH) -> str | None:
    """Why the deep features of ``unet`` cannot be reused, or None when they can."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.unets.unet_2d_blocks import (
        CrossAttnDownBlock2D,
        CrossAttnUpBlock2D,
        DownBlock2D,
        UpBlock2D,
    )

    if type(unet) is not UNet2DConditionModel:
        return f"the UNet is a {type(unet).__name__}, not diffusers' UNet2DConditionModel"
    config = unet.config
    if config.center_input_sample:
        return "the UNet centres its input (center_input_sample)"
    if unet.class_embedding is not None or config.addition_embed_type is not None:
        return "the UNet takes class or added embeddings"
    if config.time_cond_proj_dim is not None:
        return "the UNet takes a timestep condition (time_cond_proj_dim)"
    if unet.encoder_hid_proj is not None:
        return "the UNet projects its encoder hidden states (encoder_hid_proj)"
    if len(unet.down_blocks) < 2 or len(unet.up_blocks) < 2:
        return "the UNet has a single resolution level: there are no deep features to reuse"
    first, last = unet.down_blocks[0], unet.up_blocks[-1]
    if type(first) not in (DownBlock2D, CrossAttnDownBlock2D) or type(last) not in (UpBlock2D, CrossAttnUpBlock2D):
        return (f"the UNet's outer blocks are {type(first).__name__} and {type(last).__name__}; supported are "
                "DownBlock2D/CrossAttnDownBlock2D and UpBlock2D/CrossAttnUpBlock2D")
    if last.upsamplers is not None:
        return "the UNet's last up block upsamples"
    if _freeu_enabled(last):
        return "FreeU is enabled on the UNet"
    if not 0 <= branch < len(last.resnets) or branch > len(first.resnets):
        return f"branch {branch} is outside the UNet's outer blocks"
    return None


def check_model(model, interval: int) -> None:
    """Refuse, in one line naming the option, a model whose deep features cannot be reused at
    ``interval`` > 1 (a ControlNet, an unusual UNet); nothing to check at 1."""
    if interval == 1:
        return
    if model.control is not None:
        raise InputError(None, _CONTROLNET_REFUSAL.format(option=OPTION, interval=interval))
    reason = unsupported_reason(model.pipe.unet)
    if reason is not None:
        raise InputError(None, f"{OPTION} {interval} cannot reuse this model's deep features: {reason}; "
                         f"use {OPTION} 1")


class FeatureCache:
    """The split of one UNet into the deep part, run on full steps only, and the shallow part run on
    every step; :meth:`full` and :meth:`shallow` are the two kinds of UNet call.

    ``call`` runs the stock UNet (default: the module itself, so its hooks fire); pass the class's
    forward bound to the UNet when the module's forward is being replaced.
    """

    def __init__(self, unet, branch: int = DEFAULT_BRANCH, call=None):
        reason = unsupported_reason(unet, branch)
        if reason is not None:
            raise InputError(None, f"{OPTION} cannot reuse this model's deep features: {reason}; use {OPTION} 1")
        self.unet = unet
        self.branch = branch
        self.first = unet.down_blocks[0]
        self.last = unet.up_blocks[-1]
        layers = len(self.last.resnets)
        self.entry_layer = layers - 1 - branch
        # The skips the recomputed layers take: conv_in's output and the first down block's layers,
        # all with the first block's channel count.
        self.skip_channels = unet.config.block_out_channels[0]
        self._call = call if call is not None else unet
        self.full_calls = 0
        self.shallow_calls = 0

    def full(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, **kwargs):
        """The stock UNet's output and the hidden state entering the recomputed layers (kept for the
        shallow steps that follow)."""
        kept = []

        def keep(module, args):
            hidden = args[0]
            kept.append(hidden[:, : hidden.shape[1] - self.skip_channels].contiguous())

        handle = self.last.resnets[self.entry_layer].register_forward_pre_hook(keep)
        try:
            out = self._call(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False,
                             **kwargs)[0]
        finally:
            handle.remove()
        self.full_calls += 1
        return out, kept[-1]

    def shallow(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                deep: torch.Tensor) -> torch.Tensor:
        """The UNet's output from its shallow layers on this step's input and ``deep``, the state kept
        by the last full step of the same batch."""
        unet, first, last = self.unet, self.first, self.last
        # 1. Time embedding, as UNet2DConditionModel.forward (no class, added or timestep-condition
        #    embeddings: refused above)
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        # 2. The skips: conv_in, then the first `branch` layers of the first down block
        hidden = unet.conv_in(sample)
        skips = [hidden]
        for j in range(self.branch):
            hidden = first.resnets[j](hidden, emb)
            if getattr(first, "attentions", None) is not None:
                hidden = first.attentions[j](hidden, encoder_hidden_states=encoder_hidden_states,
                                             return_dict=False)[0]
            skips.append(hidden)
        # 3. The last up layers on the kept deep state, taking the skips from the deepest back
        import torch

        hidden = deep
        for j in range(self.entry_layer, len(last.resnets)):
            hidden = torch.cat([hidden, skips.pop()], dim=1)
            hidden = last.resnets[j](hidden, emb)
            if getattr(last, "attentions", None) is not None:
                hidden = last.attentions[j](hidden, encoder_hidden_states=encoder_hidden_states,
                                            return_dict=False)[0]
        # 4. Post-process
        if unet.conv_norm_out is not None:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        self.shallow_calls += 1
        return unet.conv_out(hidden)


_PLAIN_KWARGS = ("timestep_cond", "cross_attention_kwargs", "added_cond_kwargs", "class_labels", "attention_mask",
                 "encoder_attention_mask", "down_block_additional_residuals", "mid_block_additional_residual",
                 "down_intrablock_additional_residuals")


@contextlib.contextmanager
def cached_unet_calls(unet, interval: int, branch: int = DEFAULT_BRANCH):
    """Within: call k of ``unet`` (diffusers' pipelines call it once per denoising step) runs the whole
    UNet when k is a multiple of ``interval``, else its shallow part on the deep state of the last full
    call. Wrap one pipeline call (one request's batch), so the count starts at its first step. A call
    with conditioning this split does not carry (a ControlNet's residuals, added embeddings) is refused."""
    if interval == 1:
        yield None
        return
    cache = FeatureCache(unet, branch, call=type(unet).forward.__get__(unet))
    state = {"calls": 0, "deep": None}

    def forward(sample, timestep, encoder_hidden_states=None, *args, return_dict: bool = True, **kwargs):
        extra = [name for name in _PLAIN_KWARGS if kwargs.get(name) is not None] + (["positional"] if args else [])
        if extra:
            raise InputError(None, f"{OPTION} {interval}: the pipeline gives the UNet {', '.join(extra)}, which the "
                             f"shallow steps cannot carry; use {OPTION} 1")
        kwargs = {name: value for name, value in kwargs.items() if value is not None}
        step = state["calls"]
        state["calls"] += 1
        deep = state["deep"]
        if is_full_step(step, interval) or deep is None or deep.shape[0] != sample.shape[0]:
            out, state["deep"] = cache.full(sample, timestep, encoder_hidden_states, **kwargs)
        else:
            out = cache.shallow(sample, timestep, encoder_hidden_states, deep)
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)

    unet.forward = forward  # an instance attribute: nn.Module.__call__ calls it instead of the class's
    try:
        yield cache
    finally:
        del unet.forward
