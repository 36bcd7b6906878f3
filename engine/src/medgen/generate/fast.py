"""The engine's own denoising loop for 9-channel inpainting UNets, built for speed on CUDA.

Why not call the diffusers pipeline: at batch 1 a 512x512 Stable Diffusion inpaint is bound by the
CPU launching kernels, and the pipeline also stalls the host every step (its schedulers index
tables with device tensors). This loop keeps every per-step number on the host, runs classifier-free
guidance as one UNet call of 2B, encodes the prompt once per prompt, and replays the UNet and the VAE
as CUDA graphs (of a torch.compile'd UNet where compile works). On the CPU it is the same loop with
neither, and for the same generators it reproduces the plain pipeline to float rounding.

``cache_interval`` N > 1 spends fewer UNet evaluations: every N-th step runs the whole UNet, the steps
between reuse its deep features and run only its shallow layers (generate.feature_cache, DeepCache).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["FastInpaintRunner"]

log = logging.getLogger(__name__)

_PROMPT_CACHE_SIZE = 16
_GRAPH_WARMUP_ITERS = 2


# --------------------------------------------------------------------------------------------------
# Samplers: the scheduler's update written as host-side coefficients, so a step never syncs.
# --------------------------------------------------------------------------------------------------


class _Sampler:
    """One request's denoising schedule: timesteps on the host and the update x_t -> x_{t-1}.

    A fresh scheduler is made from the pipeline's config for each request, so requests never share
    scheduler state and the pipeline's own scheduler is never touched. Stochastic schedulers draw
    their step noise from the request's generators, as in diffusers' pipeline.
    """

    def __init__(self, scheduler, num_inference_steps: int, strength: float, generator=None):
        self.scheduler = scheduler.__class__.from_config(scheduler.config)
        accepts = inspect.signature(self.scheduler.step).parameters
        self.step_kwargs = {"generator": generator} if generator is not None and "generator" in accepts else {}
        self.scheduler.set_timesteps(num_inference_steps, device="cpu")
        # Same truncation as diffusers' get_timesteps: strength < 1 starts part-way down the schedule.
        init_steps = min(int(num_inference_steps * strength), num_inference_steps)
        self.begin = max(num_inference_steps - init_steps, 0) * self.scheduler.order
        self.timesteps = self.scheduler.timesteps[self.begin :]
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(self.begin)
        self.init_noise_sigma = float(self.scheduler.init_noise_sigma)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.scheduler.add_noise(latents, noise, self.timesteps[:1].repeat(latents.shape[0]))

    def scale_model_input(self, latents: torch.Tensor, i: int) -> torch.Tensor:
        return self.scheduler.scale_model_input(latents, self.timesteps[i])

    def step(self, i: int, model_output: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        # Host-side timestep: the diffusers schedulers then index their CPU tables without a sync.
        return self.scheduler.step(model_output, self.timesteps[i], latents, **self.step_kwargs, return_dict=False)[0]


def _prediction_to_x0_eps(prediction_type: str, alpha: float, sigma: float) -> tuple[float, float, float, float]:
    """(p, q, r, s) with x0 = p*x + q*m and eps = r*x + s*m, where m is the model output.

    alpha and sigma are the signal and noise scales of x at this step (alpha^2 + sigma^2 = 1).
    """
    if prediction_type == "epsilon":
        return 1.0 / alpha, -sigma / alpha, 0.0, 1.0
    if prediction_type == "v_prediction":
        return alpha, -sigma, sigma, alpha
    if prediction_type == "sample":
        return 0.0, 1.0, 1.0 / sigma, -alpha / sigma
    raise ValueError(f"prediction_type must be epsilon, v_prediction or sample, got {prediction_type!r}")


class _DDIMSampler(_Sampler):
    """Deterministic DDIM (eta = 0) as one multiply-add per step: x' = a*x + b*m."""

    @staticmethod
    def supports(scheduler) -> bool:
        from diffusers import DDIMScheduler

        cfg = scheduler.config
        return (
            type(scheduler) is DDIMScheduler
            and not cfg.thresholding
            and not cfg.clip_sample
            and cfg.prediction_type in ("epsilon", "v_prediction", "sample")
        )

    def __init__(self, scheduler, num_inference_steps: int, strength: float):
        super().__init__(scheduler, num_inference_steps, strength)
        sched = self.scheduler
        acp = sched.alphas_cumprod.double()
        stride = sched.config.num_train_timesteps // sched.num_inference_steps
        self.coefficients = []
        for t in self.timesteps.tolist():
            a_t = float(acp[t])
            a_prev = float(acp[t - stride]) if t - stride >= 0 else float(sched.final_alpha_cumprod)
            p, q, r, s = _prediction_to_x0_eps(sched.config.prediction_type, math.sqrt(a_t), math.sqrt(1 - a_t))
            # x_prev = sqrt(a_prev) * x0 + sqrt(1 - a_prev) * eps
            c0, c1 = math.sqrt(a_prev), math.sqrt(1 - a_prev)
            self.coefficients.append((c0 * p + c1 * r, c0 * q + c1 * s))

    def scale_model_input(self, latents: torch.Tensor, i: int) -> torch.Tensor:
        return latents

    def step(self, i: int, model_output: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        a, b = self.coefficients[i]
        return torch.add(latents * a, model_output, alpha=b)


class _DPMSolverPlusPlusSampler(_Sampler):
    """DPM-Solver++ (multistep, order 1 or 2) in data-prediction form, coefficients on the host.

    Follows diffusers' DPMSolverMultistepScheduler step for step, including its first-order first
    step and its lower-order final step, so the same sigmas give the same trajectory.
    """

    @staticmethod
    def supports(scheduler) -> bool:
        from diffusers import DPMSolverMultistepScheduler

        cfg = scheduler.config
        return (
            type(scheduler) is DPMSolverMultistepScheduler
            and cfg.algorithm_type == "dpmsolver++"
            and cfg.solver_order in (1, 2)
            and cfg.solver_type in ("midpoint", "heun")
            and not cfg.thresholding
            and cfg.variance_type is None
            and not getattr(cfg, "use_flow_sigmas", False)
            and cfg.prediction_type in ("epsilon", "v_prediction", "sample")
        )

    def __init__(self, scheduler, num_inference_steps: int, strength: float):
        super().__init__(scheduler, num_inference_steps, strength)
        cfg = self.scheduler.config
        sigmas = self.scheduler.sigmas.double().tolist()
        n_total = len(self.scheduler.timesteps)

        def alpha_sigma(sigma: float) -> tuple[float, float]:
            alpha = 1.0 / math.sqrt(sigma * sigma + 1.0)
            return alpha, sigma * alpha

        def lam(alpha: float, sigma: float) -> float:
            return math.log(alpha) - math.log(sigma)

        # Per step: x0 = p*x + q*m; then x' = c*x + d*x0 + e*x0_prev.
        self.coefficients = []
        for k in range(len(self.timesteps)):
            j = self.begin + k
            alpha_s, sigma_s = alpha_sigma(sigmas[j])
            p, q, _, _ = _prediction_to_x0_eps(cfg.prediction_type, alpha_s, sigma_s)
            lower_order_final = j == n_total - 1 and (
                cfg.euler_at_final
                or (cfg.lower_order_final and n_total < 15)
                or cfg.final_sigmas_type == "zero"
            )
            first_order = cfg.solver_order == 1 or k == 0 or lower_order_final
            if sigmas[j + 1] == 0.0:
                # The last step to sigma = 0 lands on the data prediction itself.
                self.coefficients.append((p, q, 0.0, 1.0, 0.0))
                continue
            alpha_t, sigma_t = alpha_sigma(sigmas[j + 1])
            h = lam(alpha_t, sigma_t) - lam(alpha_s, sigma_s)
            phi = alpha_t * (math.exp(-h) - 1.0)
            c = sigma_t / sigma_s
            if first_order:
                d, e = -phi, 0.0
            else:
                alpha_s1, sigma_s1 = alpha_sigma(sigmas[j - 1])
                r0 = (lam(alpha_s, sigma_s) - lam(alpha_s1, sigma_s1)) / h
                if cfg.solver_type == "midpoint":
                    d, e = -phi - 0.5 * phi / r0, 0.5 * phi / r0
                else:  # heun
                    k_heun = alpha_t * ((math.exp(-h) - 1.0) / h + 1.0)
                    d, e = -phi + k_heun / r0, -k_heun / r0
            self.coefficients.append((p, q, c, d, e))
        self._x0_prev: torch.Tensor | None = None

    def scale_model_input(self, latents: torch.Tensor, i: int) -> torch.Tensor:
        return latents

    def step(self, i: int, model_output: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        p, q, c, d, e = self.coefficients[i]
        x0 = torch.add(latents * p, model_output, alpha=q)
        out = torch.add(latents * c, x0, alpha=d)
        if e != 0.0:
            out.add_(self._x0_prev, alpha=e)
        self._x0_prev = x0
        return out


def _make_sampler(scheduler, num_inference_steps: int, strength: float, generator=None) -> _Sampler:
    for fast in (_DDIMSampler, _DPMSolverPlusPlusSampler):
        if fast.supports(scheduler):
            return fast(scheduler, num_inference_steps, strength)
    return _Sampler(scheduler, num_inference_steps, strength, generator)


# --------------------------------------------------------------------------------------------------
# Compiled and graphed callables, each with a clean way back to eager.
# --------------------------------------------------------------------------------------------------


class _CompiledOrEager:
    """Calls a torch.compile'd function; on its first failure logs once and stays eager for good."""

    def __init__(self, name: str, eager: Callable, compiled: Callable | None):
        self.name = name
        self.eager = eager
        self.compiled = compiled

    @property
    def is_compiled(self) -> bool:
        return self.compiled is not None

    def __call__(self, *inputs: torch.Tensor):
        if self.compiled is not None:
            for x in inputs:
                if x.dim() > 0 and x.shape[0] > 1:
                    # One compile serves every batch size; CUDA graphs are still captured per shape.
                    torch._dynamo.maybe_mark_dynamic(x, 0)
            try:
                return self.compiled(*inputs)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as exc:  # compile can fail in many ways (no compiler, unsupported op)
                log.warning("torch.compile of the %s failed (%s: %s); running it eagerly from now on",
                            self.name, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                self.compiled = None
        return self.eager(*inputs)


class _GraphedCall:
    """One CUDA graph of `fn` at fixed input shapes: replay copies the inputs into static buffers.

    The outputs live in the graph's memory and are overwritten by the next replay: use them (or
    copy them) before calling again.
    """

    def __init__(self, fn: Callable, inputs: Sequence[torch.Tensor], pool):
        device = inputs[0].device
        self.static_inputs = [x.clone() for x in inputs]
        # Warm-up and capture on one side stream of the inputs' device (torch.cuda.graph's own
        # default stream is made once per process, on whichever device was current then).
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(_GRAPH_WARMUP_ITERS):  # compiles, autotunes and allocates outside capture
                fn(*self.static_inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, stream=side):
            self.static_outputs = fn(*self.static_inputs)

    def __call__(self, *inputs: torch.Tensor):
        for static, x in zip(self.static_inputs, inputs):
            static.copy_(x)
        self.graph.replay()
        return self.static_outputs


class _GraphCache:
    """CUDA graphs of one function, one per input shape, all in one memory pool.

    Falls back to calling `fn` directly (and logs once) if capture fails, for example when a module
    does something a graph cannot hold (a host sync, a CPU tensor).
    """

    def __init__(self, name: str, fn: Callable, enabled: bool, pool=None):
        self.name = name
        self.fn = fn
        self.enabled = enabled
        self.pool = pool
        self.graphs: dict[tuple, _GraphedCall] = {}

    def __call__(self, *inputs: torch.Tensor):
        if not self.enabled:
            return self.fn(*inputs)
        key = tuple((tuple(x.shape), x.dtype) for x in inputs)
        graphed = self.graphs.get(key)
        if graphed is None:
            try:
                graphed = _GraphedCall(self.fn, inputs, self.pool)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as exc:
                log.warning("CUDA graph capture of the %s failed (%s: %s); launching it eagerly from now on",
                            self.name, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                self.enabled = False
                self.graphs.clear()
                return self.fn(*inputs)
            self.graphs[key] = graphed
        return graphed(*inputs)


def _compile_supported(device: torch.device) -> bool:
    """Whether torch.compile can generate code here: Triton for CUDA (on the CPU we default off)."""
    if device.type != "cuda" or not hasattr(torch, "compile"):
        return False
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return has_triton()


def _on_device(device: torch.device):
    """Make a CUDA `device` current, so streams and graphs are made on it even when it is not cuda:0."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _has_adapter_layers(module: torch.nn.Module) -> bool:
    """LoRA/PEFT layers wrap to_q/to_k/to_v; fused projections would silently skip them."""
    return any("lora" in type(m).__name__.lower() or hasattr(m, "lora_A") for m in module.modules())


# --------------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------------


class FastInpaintRunner:
    """Fast denoising for a loaded StableDiffusionInpaintPipeline with a 9-channel UNet.

    On CUDA: channels_last, fused QKV projections, SDPA, the UNet compiled with torch.compile
    (one compile for every batch size) and replayed as a CUDA graph per shape, the VAE replayed as
    CUDA graphs. On the CPU: the same loop, eager. Compile or capture that fails falls back to eager
    with one warning.

    The runner changes the pipeline's modules in place (memory format, fused projections) and keeps
    compiled code and graphs tied to their weights' addresses: load or fuse adapters first, then
    build the runner; after changing adapters or the text encoder, build a new one. The pipeline's
    scheduler is read at every call, so swapping `pipe.scheduler` (DDIM, DPM-Solver++) just works.
    Calls are serialised by a lock.
    """

    def __init__(
        self,
        pipe,
        *,
        compile: bool | None = None,
        cuda_graphs: bool | None = None,
        compile_backend: str = "inductor",
    ):
        if pipe.unet.config.in_channels != 9:
            raise ValueError(
                f"FastInpaintRunner needs a 9-channel inpainting UNet, got in_channels={pipe.unet.config.in_channels}"
            )
        self.pipe = pipe
        self.device = pipe.unet.device
        self.dtype = pipe.unet.dtype
        on_cuda = self.device.type == "cuda"
        self.compile = _compile_supported(self.device) if compile is None else bool(compile)
        self.cuda_graphs = on_cuda if cuda_graphs is None else bool(cuda_graphs) and on_cuda
        self._compile_backend = compile_backend

        self._prepare_modules(on_cuda)
        unet, vae = pipe.unet, pipe.vae

        def unet_forward(sample, timestep, encoder_hidden_states):
            return unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]

        compiled = None
        if self.compile:
            try:
                compiled = torch.compile(unet_forward, backend=compile_backend)
            except Exception as exc:  # torch.compile itself refuses (unsupported Python, missing backend)
                log.warning("torch.compile is unavailable (%s: %s); running the UNet eagerly", type(exc).__name__, exc)
        self._unet_fn = _CompiledOrEager("UNet", unet_forward, compiled)

        def vae_moments(image):
            dist = vae.encode(image).latent_dist
            return dist.mean, dist.std

        def vae_decode(latents):
            return vae.decode(latents, return_dict=False)[0]

        pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self._pool = pool
        self._unet = _GraphCache("UNet", self._unet_fn, self.cuda_graphs, pool)
        # generate.feature_cache's full and shallow UNet calls, built on the first request that caches
        self.feature_cache = None
        self._unet_full: _GraphCache | None = None
        self._unet_shallow: _GraphCache | None = None
        self._encode = _GraphCache("VAE encoder", vae_moments, self.cuda_graphs, pool)
        self._decode = _GraphCache("VAE decoder", vae_decode, self.cuda_graphs, pool)
        self._prompt_cache: OrderedDict[tuple, tuple[torch.Tensor | None, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def is_compiled(self) -> bool:
        """True while the UNet runs compiled code (False after a fallback to eager)."""
        return self._unet_fn.is_compiled

    def _prepare_modules(self, on_cuda: bool) -> None:
        pipe = self.pipe
        if on_cuda:
            # Convolutions in NHWC run on the tensor cores without transposes.
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        # One GEMM for Q, K and V instead of three (K and V for cross-attention); the fused
        # processor also runs attention through scaled_dot_product_attention. Only over the stock
        # processors: fusing replaces every processor, which would drop an IP-Adapter's or LoRA's.
        stock = {"AttnProcessor", "AttnProcessor2_0"}
        if getattr(pipe.unet, "_medgen_qkv_fused", False):
            pass
        elif _has_adapter_layers(pipe.unet) or any(
            type(p).__name__ not in stock for p in pipe.unet.attn_processors.values()
        ):
            log.info("UNet has adapter layers or custom attention processors; QKV projections left unfused")
        else:
            try:
                pipe.unet.fuse_qkv_projections()
                pipe.unet._medgen_qkv_fused = True
            except (ValueError, AttributeError) as exc:
                log.info("QKV projections not fused: %s", exc)

    def _feature_cache_calls(self) -> tuple[_GraphCache, _GraphCache]:
        """The full (output and kept deep state) and shallow UNet calls of generate.feature_cache, each
        compiled and graph-captured like the plain UNet call. Refuses a UNet it cannot split (InputError)."""
        if self.feature_cache is None:
            from medgen.generate.feature_cache import FeatureCache

            cache = FeatureCache(self.pipe.unet)
            calls = []
            for name, fn in (("UNet (full, keeping deep features)", cache.full), ("UNet (shallow)", cache.shallow)):
                compiled = None
                if self.compile:
                    try:
                        compiled = torch.compile(fn, backend=self._compile_backend)
                    except Exception as exc:  # torch.compile itself refuses
                        log.warning("torch.compile is unavailable (%s: %s); running the %s eagerly",
                                    type(exc).__name__, exc, name)
                calls.append(_GraphCache(name, _CompiledOrEager(name, fn, compiled), self.cuda_graphs, self._pool))
            self._unet_full, self._unet_shallow = calls
            self.feature_cache = cache
        return self._unet_full, self._unet_shallow

    def clear_caches(self) -> None:
        """Forget cached prompt embeddings (call after changing the tokenizer or text encoder)."""
        with self._lock:
            self._prompt_cache.clear()

    # ----------------------------------------------------------------------------------------------

    def check_inputs(self, image, mask, prompt, num_inference_steps, guidance_scale, strength, generator,
                     cache_interval: int = 1) -> None:
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be a (B, 3, H, W) tensor, got {getattr(image, 'shape', type(image))}")
        batch, _, height, width = image.shape
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (batch, 1, height, width):
            raise ValueError(
                f"mask must be a ({batch}, 1, {height}, {width}) tensor, got {getattr(mask, 'shape', type(mask))}"
            )
        factor = self.pipe.vae_scale_factor
        if height % factor or width % factor:
            raise ValueError(f"height and width must be multiples of {factor}, got {height}x{width}")
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        if num_inference_steps < 1 or int(num_inference_steps * strength) < 1:
            raise ValueError(
                f"num_inference_steps * strength must give at least one step, got {num_inference_steps} * {strength}"
            )
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if not isinstance(generator, (list, tuple)) or len(generator) != batch:
            raise ValueError(f"generator must be a list of {batch} torch.Generator, got {generator!r}")
        if isinstance(cache_interval, bool) or not isinstance(cache_interval, int) or cache_interval < 1:
            raise ValueError(f"cache_interval must be an integer >= 1, got {cache_interval!r}")

    def _prompt_embeds(self, prompt: str, negative_prompt: str | None, cfg: bool):
        key = (prompt, negative_prompt, cfg)
        if key in self._prompt_cache:
            self._prompt_cache.move_to_end(key)
            return self._prompt_cache[key]
        positive, negative = self.pipe.encode_prompt(prompt, self.device, 1, cfg, negative_prompt)
        self._prompt_cache[key] = (negative, positive)
        if len(self._prompt_cache) > _PROMPT_CACHE_SIZE:
            self._prompt_cache.popitem(last=False)
        return negative, positive

    def _draw_noise(self, generator, latent_shape, need_init_latents: bool):
        """Every random number of the request, drawn first and in diffusers' order per generator.

        Per item diffusers draws: the init image's latent sample (only when strength < 1), then the
        starting noise, then the masked image's latent sample. Drawing all of it up front keeps the
        host from waiting on the device later (a copy from pageable memory waits for the stream).
        """
        from diffusers.utils.torch_utils import randn_tensor

        noise_dtype = self.pipe.text_encoder.dtype if self.pipe.text_encoder is not None else self.dtype
        vae_dtype = self.pipe.vae.dtype
        shape = (1, *latent_shape)
        init_eps, noise, mask_eps = [], [], []
        for g in generator:
            where = g.device
            if need_init_latents:
                init_eps.append(randn_tensor(shape, generator=g, device=where, dtype=vae_dtype))
            noise.append(randn_tensor(shape, generator=g, device=where, dtype=noise_dtype))
            mask_eps.append(randn_tensor(shape, generator=g, device=where, dtype=vae_dtype))

        def stack(parts):
            return torch.cat(parts).to(self.device) if parts else None

        return stack(init_eps), stack(noise), stack(mask_eps)

    def _encode_latents(self, image: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Sample the VAE posterior of a batch with pre-drawn noise (one batched encoder call)."""
        mean, std = self._encode(image.to(self.device, self.pipe.vae.dtype))
        return self.pipe.vae.config.scaling_factor * (mean + std * eps)

    @torch.inference_mode()
    def __call__(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        *,
        prompt: str,
        negative_prompt: str | None = None,
        prompt_embeds: torch.Tensor | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        strength: float = 1.0,
        generator: list[torch.Generator],
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        cache_interval: int = 1,
    ) -> torch.Tensor:
        """Inpaint `image` where `mask` is 1; returns (B, 3, H, W) in [-1, 1] on the pipeline's device.

        Item i depends only on its inputs and `generator[i]`: it equals the plain pipeline's result
        for that generator, whatever else is in the batch. `prompt_embeds` (1, tokens, width), when
        given, replaces the encoded `prompt` (a blended prompt); the negative side is encoded as usual. `callback(step, timestep, latents)` runs
        after each step; reading values from `latents` there makes the host wait for the device.
        `cache_interval` N > 1 runs the whole UNet on steps 0, N, 2N, ... only and its shallow layers on
        the deep features of the last full step otherwise (generate.feature_cache): an item then still
        depends only on its inputs and generator, not on the rest of the batch.
        """
        with self._lock, _on_device(self.device):
            return self._run(image, mask, prompt, negative_prompt, num_inference_steps, guidance_scale,
                             strength, generator, callback, prompt_embeds, cache_interval)

    def _run(self, image, mask, prompt, negative_prompt, num_inference_steps, guidance_scale, strength,
             generator, callback, prompt_embeds=None, cache_interval=1):
        pipe = self.pipe
        # 1. Check inputs
        self.check_inputs(image, mask, prompt, num_inference_steps, guidance_scale, strength, generator,
                          cache_interval)
        if cache_interval > 1:
            unet_full, unet_shallow = self._feature_cache_calls()
        batch, _, height, width = image.shape
        factor = pipe.vae_scale_factor
        latent_shape = (pipe.vae.config.latent_channels, height // factor, width // factor)
        cfg = guidance_scale > 1.0

        # 2. Draw all random numbers before any device work
        need_init_latents = strength < 1.0
        init_eps, noise, mask_eps = self._draw_noise(generator, latent_shape, need_init_latents)

        # 3. Encode the prompt once and expand it to the batch (uncond first, as in diffusers)
        negative, positive = self._prompt_embeds(prompt, negative_prompt, cfg)
        if prompt_embeds is not None:
            positive = prompt_embeds.to(self.device, positive.dtype)
        embeds = positive.expand(batch, -1, -1)
        if cfg:
            embeds = torch.cat([negative.expand(batch, -1, -1), embeds])

        # 4. Timesteps on the host, once for the whole request
        sampler = _make_sampler(pipe.scheduler, num_inference_steps, strength, generator)
        timesteps_host = sampler.timesteps.tolist()
        timesteps_device = sampler.timesteps.to(self.device)

        # 5. Mask and masked image: binarised mask, image zeroed under it, both to latent space
        image = image.to(self.device, torch.float32)
        mask_cond = (mask.to(self.device, torch.float32) >= 0.5).to(torch.float32)
        masked_latents = self._encode_latents(image * (mask_cond < 0.5), mask_eps).to(self.dtype)
        mask_latent = F.interpolate(mask_cond, size=latent_shape[1:]).to(self.dtype)
        if cfg:
            masked_latents = torch.cat([masked_latents, masked_latents])
            mask_latent = torch.cat([mask_latent, mask_latent])

        # 6. Starting latents (kept in float32 through the loop; the UNet sees its own dtype)
        if need_init_latents:
            init_latents = self._encode_latents(image, init_eps).to(noise.dtype)
            latents = sampler.add_noise(init_latents, noise).float()
        else:
            latents = noise.float() * sampler.init_noise_sigma

        # 7. Denoising loop: one UNet call of 2B per step, no host syncs; with cache_interval N, the
        #    steps between full ones run the shallow layers on the kept deep features
        deep = None
        for i, t in enumerate(timesteps_host):
            model_input = torch.cat([latents, latents]) if cfg else latents
            model_input = sampler.scale_model_input(model_input, i)
            model_input = torch.cat([model_input.to(self.dtype), mask_latent, masked_latents], dim=1)
            timestep = timesteps_device[i].expand(model_input.shape[0])
            if cache_interval == 1:
                raw = self._unet(model_input, timestep, embeds)
            elif i % cache_interval == 0:
                # the kept features live in the full call's graph buffer until its next replay, which
                # replaces them anyway
                raw, deep = unet_full(model_input, timestep, embeds)
            else:
                raw = unet_shallow(model_input, timestep, embeds, deep)
            # Always a copy: a graph's output buffer is rewritten by the next step, and a scheduler may
            # keep the model output it was given (PNDM does).
            noise_pred = raw.to(torch.float32, copy=True)
            if cfg:
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + guidance_scale * (text - uncond)
            latents = sampler.step(i, noise_pred, latents)
            if callback is not None:
                callback(i, t, latents)

        # 8. Decode (a fresh tensor: the graph's output buffer is reused by the next call; contiguous,
        #    not the channels_last layout of the VAE's convolutions)
        decoded = self._decode((latents / pipe.vae.config.scaling_factor).to(pipe.vae.dtype))
        return torch.clamp(decoded.to(torch.float32, memory_format=torch.contiguous_format), -1.0, 1.0)

    # ----------------------------------------------------------------------------------------------

    def warmup(
        self,
        batch_sizes: Sequence[int],
        resolution: int | tuple[int, int],
        *,
        guidance_scale: float = 7.5,
        prompt: str = "warm-up",
        cache_interval: int = 1,
    ) -> dict[int, float]:
        """Compile and capture every shape a server will see, before the first request (with
        ``cache_interval`` > 1, the full and shallow UNet calls of generate.feature_cache).

        Returns the seconds spent per batch size (the first one includes the compile).
        """
        height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
        seconds: dict[int, float] = {}
        for batch in batch_sizes:
            start = time.perf_counter()
            g = torch.Generator().manual_seed(batch)
            image = torch.rand(batch, 3, height, width, generator=g) * 2 - 1
            mask = (torch.rand(batch, 1, height, width, generator=g) > 0.5).float()
            generators = [torch.Generator().manual_seed(i) for i in range(batch)]
            self(image, mask, prompt=prompt, num_inference_steps=2, guidance_scale=guidance_scale,
                 generator=generators, cache_interval=min(cache_interval, 2))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds[batch] = time.perf_counter() - start
        return seconds
