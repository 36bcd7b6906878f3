"""`medgen bench speed`: the engine's inpainting path against plain diffusers, same process, same inputs.

Both paths get the same images, masks, prompt and seeds. The work of one request (the UNet steps with
guidance, the VAE encode and decode) is counted once per shape with torch.utils.flop_counter, so
TFLOP/s and the share of the device's peak compare paths on the same footing. Warm-up, compile and
CUDA-graph capture are timed and reported on their own, never folded into the averages.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from medgen.cli_help import hidden_alias, new_parser

__all__ = ["PEAK_BF16_TFLOPS", "format_table", "main", "peak_tflops", "run_speed_bench"]

log = logging.getLogger(__name__)

# Dense bf16 (= fp16) tensor-core peak by device name (datasheet, no sparsity). First match wins, so
# the PCIe and NVL variants come before the plain name of the SXM part ("NVIDIA H100 80GB HBM3").
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H800 PCIe", 756.0),
    ("H200 NVL", 835.0),
    ("GH200", 989.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("H800", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
)

_PROMPT = "hypodense liver lesion, 2 cm"
_ARCHS = ("sd15-inpaint", "sd2-inpaint", "demo", "tiny")


def peak_tflops(device_name: str) -> float | None:
    """Datasheet bf16 dense peak for a CUDA device name, None when unknown (or a CPU).

    None for a MIG slice too: it has a fraction of the named device's tensor cores.
    """
    if "MIG" in device_name:
        return None
    for key, peak in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float, object]:
    """Wall seconds of one call, the device drained before and after (what a client waits for),
    and the host CPU seconds this process spent in it (steadier than wall time on a shared CPU)."""
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, time.process_time() - cpu_start, out


def make_inputs(batch: int, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth synthetic scan-like image in [-1, 1] and an elliptic lesion mask, one per item."""
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(-1, 1, height).view(1, 1, height, 1)
    x = torch.linspace(-1, 1, width).view(1, 1, 1, width)
    body = (x**2 / 0.8 + y**2 / 0.6 < 1).float()
    texture = 0.15 * torch.randn(batch, 1, height, width, generator=g)
    image = (body * (0.2 + 0.3 * torch.cos(3 * x) * torch.sin(2 * y)) - (1 - body) * 0.9 + texture * body)
    image = image.expand(batch, 3, height, width).clamp(-1, 1).contiguous()
    mask = (((x - 0.2) / 0.25) ** 2 + ((y + 0.1) / 0.2) ** 2 < 1).float().expand(batch, 1, height, width).contiguous()
    return image, mask


def _agreement(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Differences between two image batches in [-1, 1]; PSNR over the range 2."""
    diff = (a.float().cpu() - b.float().cpu()).abs()
    mse = float((diff**2).mean())
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "psnr_db": None if mse == 0 else 10 * math.log10(4.0 / mse),  # None: identical
    }


@torch.inference_mode()
def count_flops(pipe, batch: int, height: int, width: int, *, cfg: bool, vae_encodes: int = 1) -> dict[str, int]:
    """FLOPs of one request's parts, counted on the eager modules with FlopCounterMode.

    The text encoder (a few GFLOP) is left out. On the CPU attention is routed through the math
    backend for the count, since the counter knows no formula for the CPU flash kernel.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    device, dtype = pipe.unet.device, pipe.unet.dtype
    factor = pipe.vae_scale_factor
    latent_hw = (height // factor, width // factor)
    n = 2 * batch if cfg else batch
    seq = pipe.tokenizer.model_max_length
    sample = torch.randn(n, pipe.unet.config.in_channels, *latent_hw, device=device, dtype=dtype)
    timestep = torch.full((n,), 500, device=device, dtype=torch.long)
    embeds = torch.randn(n, seq, pipe.unet.config.cross_attention_dim, device=device, dtype=dtype)
    image = torch.rand(batch, 3, height, width, device=device, dtype=pipe.vae.dtype) * 2 - 1
    latents = torch.randn(batch, pipe.vae.config.latent_channels, *latent_hw, device=device, dtype=pipe.vae.dtype)

    counts = {}
    with sdpa_kernel([SDPBackend.MATH]) if device.type in ("cpu", "meta") else contextlib.nullcontext():
        for name, fn in (
            ("unet_step", lambda: pipe.unet(sample, timestep, encoder_hidden_states=embeds)),
            ("vae_encode", lambda: pipe.vae.encode(image)),
            ("vae_decode", lambda: pipe.vae.decode(latents)),
        ):
            counter = FlopCounterMode(display=False)
            with counter:
                fn()
            counts[name] = int(counter.get_total_flops())
    counts["vae_encode"] *= vae_encodes
    return counts


def _matmul_tflops(device: torch.device, dtype: torch.dtype = torch.bfloat16, size: int = 8192) -> float:
    """Measured ceiling: one large matrix product on random data, median of 10 timed with events.

    Runs with `device` current: events are recorded on the current device's stream.
    """
    with torch.cuda.device(device):
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        times = []
        for _ in range(10):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    return 2 * size**3 / statistics.median(times) / 1e12


def _build_pipeline(arch: str, model_path: str | None, device: torch.device, dtype: torch.dtype, seed: int):
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline

    from medgen.generate.archs import build_random_pipeline

    if model_path is None:
        return build_random_pipeline(arch, dtype=dtype, device=device, seed=seed)
    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        model_path, torch_dtype=dtype, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU {line.split(':', 1)[1].strip()} ({os.cpu_count()} logical cores)"
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()}"


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda or "n/a",
    }


# --------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------


def run_speed_bench(
    arch: str,
    batches: Sequence[int],
    steps: int,
    model_path: str | None = None,
    device: str = "auto",
    dtype: torch.dtype | str | None = None,
    json_path: str | Path | None = None,
    repeats: int = 3,
    *,
    dpm_steps: Sequence[int] = (15, 20),
    guidance_scale: float = 7.5,
    resolution: int | None = None,
    compile: bool | None = None,
    seed: int = 0,
) -> dict:
    """Time plain diffusers and the engine's FastInpaintRunner on the same requests; returns the result.

    A request of batch B is B variants of one image and mask with seeds seed..seed+B-1; for plain
    diffusers that is one call with B prompts, B images and B generators, which gives every variant
    the same result as a call of its own. Each timed engine request re-encodes its prompt.
    """
    from diffusers import DPMSolverMultistepScheduler

    from medgen.generate.fast import FastInpaintRunner

    # 1. Check inputs
    if arch not in _ARCHS:
        raise ValueError(f"arch must be one of {', '.join(_ARCHS)}, got {arch!r}")
    batches = [int(b) for b in batches]
    if not batches or min(batches) < 1:
        raise ValueError(f"batches must be positive integers, got {batches}")
    if steps < 1 or repeats < 1:
        raise ValueError(f"steps and repeats must be >= 1, got steps={steps}, repeats={repeats}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)

    # 2. Model and inputs
    build_start = time.perf_counter()
    if model_path is None and arch == "demo":
        from medgen.phantom.model import demo_model_path

        model_path = str(demo_model_path())  # the shipped phantom model, trained weights
    pipe = _build_pipeline(arch, model_path, dev, dtype, seed)
    build_s = time.perf_counter() - build_start
    resolution = resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    height = width = resolution
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name()
    # The tensor-core peak is a bf16/fp16 figure: a float32 run has no share of it.
    peak = peak_tflops(device_name) if dev.type == "cuda" and dtype in (torch.bfloat16, torch.float16) else None
    cfg = guidance_scale > 1.0

    def gens(batch: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(seed + i) for i in range(batch)]

    inputs = {b: make_inputs(b, height, width, seed) for b in batches}

    # 3. Work per request, counted once per shape
    flops = {}
    for b in batches:
        parts = count_flops(pipe, b, height, width, cfg=cfg)
        flops[b] = steps * parts["unet_step"] + parts["vae_encode"] + parts["vae_decode"]

    def row(batch: int, path: str, times: list[float], cpu_times: list[float], first_s: float,
            peak_mem: float | None) -> dict:
        s = statistics.median(times)
        tflops = flops[batch] / s / 1e12
        return {
            "batch": batch,
            "path": path,
            "s_per_request": s,
            "s_per_image": s / batch,
            "unet_steps_per_s": steps / s,
            "tflops": tflops,
            "peak_share": tflops / peak if peak else None,
            "peak_mem_gib": peak_mem,
            "first_call_s": first_s,
            "times_s": times,
            "host_cpu_s_per_request": statistics.median(cpu_times),
            "work_tflop": flops[batch] / 1e12,
        }

    def peak_mem_gib() -> float | None:
        return torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None

    def reset_peak() -> None:
        """Called before a path's first call: for the engine that is before warm-up, since a CUDA
        graph allocates its working memory while it is captured and replay allocates nothing."""
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)

    # 4. Plain diffusers (before the runner fuses projections and changes memory formats)
    rows, plain_out = [], {}
    for b in batches:
        image, mask = inputs[b]

        def plain_call(b=b, image=image, mask=mask):
            return pipe(prompt=[_PROMPT] * b, image=(image + 1) / 2, mask_image=mask, height=height, width=width,
                        num_inference_steps=steps, guidance_scale=guidance_scale, generator=gens(b),
                        output_type="pt").images

        reset_peak()
        first_s, _, _ = _timed(plain_call, dev)
        times, cpu_times = [], []
        for _ in range(repeats):
            t, cpu, out = _timed(plain_call, dev)
            times.append(t)
            cpu_times.append(cpu)
        plain_out[b] = out * 2 - 1
        rows.append(row(b, "diffusers", times, cpu_times, first_s, peak_mem_gib()))
        log.info("diffusers batch %d: %.3f s", b, statistics.median(times))

    # 5. The engine: build, warm up (compile + capture) per batch, then time
    start = time.perf_counter()
    runner = FastInpaintRunner(pipe, compile=compile)
    runner_build_s = time.perf_counter() - start
    warmup_s, engine_out, agreement = {}, {}, []
    for b in batches:
        image, mask = inputs[b]

        def engine_call(b=b, image=image, mask=mask, runner=runner):
            runner.clear_caches()  # count the prompt encoding in every request, as diffusers does
            return runner(image, mask, prompt=_PROMPT, num_inference_steps=steps, guidance_scale=guidance_scale,
                          generator=gens(b))

        reset_peak()
        warmup_s[b] = runner.warmup([b], (height, width), guidance_scale=guidance_scale)[b]
        first_s, _, _ = _timed(engine_call, dev)
        times, cpu_times = [], []
        for _ in range(repeats):
            t, cpu, out = _timed(engine_call, dev)
            times.append(t)
            cpu_times.append(cpu)
        engine_out[b] = out
        plain_row = next(r for r in rows if r["batch"] == b and r["path"] == "diffusers")
        engine_row = row(b, "engine", times, cpu_times, first_s, peak_mem_gib())
        engine_row["ratio_vs_diffusers"] = engine_row["s_per_request"] / plain_row["s_per_request"]
        plain_row["ratio_vs_diffusers"] = 1.0
        rows.append(engine_row)
        agreement.append({"batch": b, "what": "engine vs diffusers", **_agreement(out, plain_out[b])})
        log.info("engine batch %d: %.3f s", b, statistics.median(times))

    # 6. What compile and graphs cost in agreement: the same request through the eager loop
    if runner.is_compiled or runner.cuda_graphs:
        b = batches[0]
        eager = FastInpaintRunner(pipe, compile=False, cuda_graphs=False)
        out = eager(*inputs[b], prompt=_PROMPT, num_inference_steps=steps, guidance_scale=guidance_scale,
                    generator=gens(b))
        agreement.append({"batch": b, "what": "engine vs eager engine loop", **_agreement(engine_out[b], out)})

    # 7. Fewer steps with DPM-Solver++ (2M), against the 30-step (or --steps) result of the same seeds
    fewer = []
    if dpm_steps:
        b = batches[0]
        image, mask = inputs[b]
        default_scheduler = pipe.scheduler
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(
            default_scheduler.config, algorithm_type="dpmsolver++", solver_order=2
        )
        try:
            for n in dpm_steps:

                def dpm_call(n=n):
                    runner.clear_caches()
                    return runner(image, mask, prompt=_PROMPT, num_inference_steps=n,
                                  guidance_scale=guidance_scale, generator=gens(b))

                first_s, _, _ = _timed(dpm_call, dev)
                times = []
                for _ in range(repeats):
                    t, _, out = _timed(dpm_call, dev)
                    times.append(t)
                s = statistics.median(times)
                fewer.append({
                    "batch": b,
                    "scheduler": "DPM-Solver++ 2M",
                    "steps": n,
                    "s_per_request": s,
                    "first_call_s": first_s,
                    "ratio_vs_full_steps": s / next(r["s_per_request"] for r in rows
                                                    if r["batch"] == b and r["path"] == "engine"),
                    "vs_full_steps": _agreement(out, engine_out[b]),
                })
        finally:
            pipe.scheduler = default_scheduler

    result = {
        "meta": {
            "arch": arch,
            "weights": "random" if model_path is None else str(model_path),
            "device": device_name,
            "device_type": dev.type,
            "dtype": str(dtype).replace("torch.", ""),
            "resolution": [height, width],
            "steps": steps,
            "guidance_scale": guidance_scale,
            "scheduler": type(pipe.scheduler).__name__,
            "repeats": repeats,
            "peak_bf16_tflops": peak,
            "matmul_tflops": _matmul_tflops(dev) if dev.type == "cuda" else None,
            "compiled": runner.is_compiled,
            "cuda_graphs": runner.cuda_graphs,
            "cpu_threads": torch.get_num_threads(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "versions": _versions(),
            "flops_counted": "UNet steps (x2 batch with guidance) + VAE encode + VAE decode; text encoder not counted",
        },
        "rows": rows,
        "warmup": {
            "model_build_s": build_s,
            "engine_build_s": runner_build_s,
            "engine_warmup_s": [{"batch": b, "seconds": s} for b, s in warmup_s.items()],
            "diffusers_first_call_s": [{"batch": r["batch"], "seconds": r["first_call_s"]}
                                       for r in rows if r["path"] == "diffusers"],
        },
        "agreement": agreement,
        "fewer_steps": fewer,
    }
    if json_path is not None:
        Path(json_path).write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return result


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------

COLUMNS = ("batch", "path", "s/request", "s/image", "UNet steps/s", "TFLOP/s", "% of peak", "peak mem GiB",
           "engine/diffusers", "host CPU s")


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_table(result: dict) -> str:
    """The result as a plain-text table with its conditions, warm-up and agreement lines."""
    meta = result["meta"]
    v = meta["versions"]
    weights = "random weights" if meta["weights"] == "random" else f"weights from {meta['weights']}"
    lines = [
        f"medgen bench speed: {meta['arch']} ({weights}), {meta['resolution'][0]}x"
        f"{meta['resolution'][1]}, {meta['steps']} steps {meta['scheduler']}, guidance {meta['guidance_scale']}, "
        f"{meta['dtype']}, compiled={meta['compiled']}, cuda_graphs={meta['cuda_graphs']}",
        f"device: {meta['device']} (bf16 dense peak {_fmt(meta['peak_bf16_tflops'], '.0f')} TFLOP/s, "
        f"measured matmul {_fmt(meta['matmul_tflops'], '.0f')} TFLOP/s); torch {v['torch']}, diffusers "
        f"{v['diffusers']}, transformers {v['transformers']}; {meta['date']}",
        f"work counted: {meta['flops_counted']}; times are wall-clock medians of {meta['repeats']} "
        "(host CPU s: this process's CPU time per request)",
        "",
    ]
    table = [COLUMNS]
    for r in result["rows"]:
        table.append((
            str(r["batch"]), r["path"], _fmt(r["s_per_request"], ".3f"), _fmt(r["s_per_image"], ".3f"),
            _fmt(r["unet_steps_per_s"], ".1f"), _fmt(r["tflops"], ".3g"),
            "n/a" if r["peak_share"] is None else f"{100 * r['peak_share']:.1f}%",
            _fmt(r["peak_mem_gib"], ".2f"), _fmt(r.get("ratio_vs_diffusers"), ".3f"),
            _fmt(r["host_cpu_s_per_request"], ".3f"),
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    for row in table:
        cells = (cell.ljust(w) if i == 1 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        lines.append("  ".join(cells))

    w = result["warmup"]
    lines += [
        "",
        "warm-up, not in the averages: model build {:.1f} s; diffusers first call {}; engine build {:.2f} s; "
        "engine compile+capture {}".format(
            w["model_build_s"],
            ", ".join(f"b{x['batch']} {x['seconds']:.2f} s" for x in w["diffusers_first_call_s"]),
            w["engine_build_s"],
            ", ".join(f"b{x['batch']} {x['seconds']:.2f} s" for x in w["engine_warmup_s"]),
        ),
    ]
    for a in result["agreement"]:
        lines.append(f"agreement, batch {a['batch']}, {a['what']} (same seeds, [-1,1]): max abs {a['max_abs']:.2e}, "
                     f"mean abs {a['mean_abs']:.2e}, PSNR {_fmt(a['psnr_db'], '.1f')} dB")
    for f in result["fewer_steps"]:
        a = f["vs_full_steps"]
        lines.append(f"fewer steps, batch {f['batch']}: {f['scheduler']} {f['steps']} steps {f['s_per_request']:.3f} s "
                     f"({f['ratio_vs_full_steps']:.2f}x of the {meta['steps']}-step time); vs the {meta['steps']}-step "
                     f"result: mean abs {a['mean_abs']:.3f}, max abs {a['max_abs']:.3f}, "
                     f"PSNR {_fmt(a['psnr_db'], '.1f')} dB")
    return "\n".join(lines)


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("medgen bench speed", "Time the engine's inpainting path against plain diffusers on the same inputs.")
    parser.add_argument("--arch", choices=_ARCHS, default="sd15-inpaint",
                        help="model architecture; demo is the shipped phantom model (or --model PATH), tiny is for CPU tests")
    parser.add_argument("--random-weights", action="store_true",
                        help="random weights for sd15-inpaint/sd2-inpaint (the default unless --model is given)")
    parser.add_argument("--model", help="diffusers inpainting model folder to load instead of random weights, or "
                        "'demo' for the shipped phantom model (the same as --arch demo) (default: none)")
    parser.add_argument("--batch", type=_int_list, default=[1, 4, 8], help="batch sizes, e.g. 1,4,8")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps per request")
    parser.add_argument("--dpm-steps", type=_int_list, default=[15, 20],
                        help="DPM-Solver++ step counts to compare with --steps (empty to skip)")
    parser.add_argument("--guidance", type=float, default=7.5, dest="guidance_scale", metavar="SCALE",
                        help="classifier-free guidance scale; above 1 doubles the UNet batch")
    hidden_alias(parser, "--guidance-scale", dest="guidance_scale", type=float)
    parser.add_argument("--resolution", type=int, help="image side (default: the model's)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16", "float32", "float16", "bfloat16"),
                        help="precision (default: bf16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timed requests per row (median reported)")
    parser.add_argument("--no-compile", action="store_true", help="CUDA graphs of the eager UNet, no torch.compile")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    parser.add_argument("--json", dest="json_path", help="also write the full result as JSON to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if os.environ.get("MEDGEN_BENCH_VERBOSE") else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.model == "demo":  # the shipped model, by the name every other command accepts
        args.model, args.arch = None, "demo"
    args.dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}.get(args.dtype, args.dtype)
    if args.model and args.random_weights:
        build_parser().error("--model and --random-weights exclude each other")
    if args.model and not Path(args.model).is_dir():
        build_parser().error(f"--model {args.model}: no such model folder")
    try:
        result = run_speed_bench(
            args.arch, args.batch, args.steps, model_path=args.model, device=args.device, dtype=args.dtype,
            json_path=args.json_path, repeats=args.repeats, dpm_steps=args.dpm_steps,
            guidance_scale=args.guidance_scale, resolution=args.resolution,
            compile=False if args.no_compile else None, seed=args.seed,
        )
    except ValueError as error:
        print(f"medgen bench speed: error: {error}", file=sys.stderr)
        return 2
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
