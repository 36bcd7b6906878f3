"""The fast inpainting path (medgen.generate.fast) and `medgen bench speed`, on tiny random-weight models.

CPU only. Tolerance: for the same generators the fast loop reproduces plain diffusers to float32
rounding; measured max abs difference about 3e-6 in [-1, 1], asserted at 1e-4.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import DDIMScheduler, DPMSolverMultistepScheduler  # noqa: E402

from medgen.bench.speed import COLUMNS, main  # noqa: E402
from medgen.generate import fast  # noqa: E402
from medgen.generate.archs import ARCHS, build_random_pipeline  # noqa: E402
from medgen.generate.fast import FastInpaintRunner  # noqa: E402

TOLERANCE = 1e-4  # max abs difference in [-1, 1], CPU float32; measured ~3e-6
SIZE = ARCHS["tiny"].resolution  # 32
PROMPT = "hypodense lesion"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def pipe():
    return build_random_pipeline("tiny", seed=0)


def inputs(batch: int, seed: int = 7):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, SIZE, SIZE, generator=g) * 2 - 1
    mask = torch.zeros(batch, 1, SIZE, SIZE)
    mask[..., 8:24, 6:20] = 1
    return image, mask


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def plain_diffusers(pipe, image, mask, seeds, **kwargs) -> torch.Tensor:
    """The reference: one plain pipeline call with one prompt, image and generator per item."""
    out = pipe(prompt=[PROMPT] * len(seeds), image=(image + 1) / 2, mask_image=mask, generator=generators(seeds),
               output_type="pt", **kwargs).images
    return out * 2 - 1


def test_tiny_random_weight_fast_path_matches_plain_diffusers(pipe):
    image, mask = inputs(2)
    seeds = [3, 11]
    cases = [
        ("ddim", dict(num_inference_steps=6, guidance_scale=7.5, strength=1.0)),
        ("ddim", dict(num_inference_steps=8, guidance_scale=7.5, strength=0.6)),
        ("ddim", dict(num_inference_steps=5, guidance_scale=1.0, strength=1.0)),  # no guidance: batch B
        ("dpm++", dict(num_inference_steps=6, guidance_scale=5.0, strength=1.0)),
        ("dpm++ heun v", dict(num_inference_steps=7, guidance_scale=7.5, strength=0.8)),
    ]
    schedulers = {
        "ddim": pipe.scheduler,
        "dpm++": DPMSolverMultistepScheduler.from_config(pipe.scheduler.config),
        "dpm++ heun v": DPMSolverMultistepScheduler.from_config(
            pipe.scheduler.config, solver_type="heun", prediction_type="v_prediction"
        ),
    }
    # References first: the runner fuses the UNet's projections in place.
    references = []
    for name, kwargs in cases:
        pipe.scheduler = schedulers[name]
        references.append(plain_diffusers(pipe, image, mask, seeds, **kwargs))

    runner = FastInpaintRunner(pipe)
    assert not runner.is_compiled and not runner.cuda_graphs  # CPU defaults
    for (name, kwargs), reference in zip(cases, references):
        pipe.scheduler = schedulers[name]
        out = runner(image, mask, prompt=PROMPT, generator=generators(seeds), **kwargs)
        assert out.shape == (2, 3, SIZE, SIZE)
        assert out.min() >= -1 and out.max() <= 1
        error = (out - reference).abs().max().item()
        assert error < TOLERANCE, f"{name} {kwargs}: max abs difference {error}"
    # The inpainted region actually changed, so the comparison above compared something.
    assert (out - image).abs()[mask.expand_as(out) > 0].mean() > 0.05


@pytest.mark.parametrize(
    "scheduler",
    [
        DDIMScheduler.from_config(ARCHS["tiny"].scheduler, prediction_type="v_prediction"),
        DDIMScheduler.from_config(ARCHS["tiny"].scheduler, prediction_type="sample", timestep_spacing="trailing"),
        DPMSolverMultistepScheduler.from_config(ARCHS["tiny"].scheduler, use_karras_sigmas=True),
        DPMSolverMultistepScheduler.from_config(ARCHS["tiny"].scheduler, solver_order=1),
    ],
    ids=["ddim-v", "ddim-sample-trailing", "dpm++-karras", "dpm++-order1"],
)
def test_tiny_random_weight_host_side_sampler_equals_scheduler_step(scheduler):
    """The sync-free update rules follow diffusers' step() for the same model outputs."""
    fast_sampler = fast._make_sampler(scheduler, 9, 1.0)
    assert type(fast_sampler) is not fast._Sampler, "expected a host-side fast sampler"
    generic = fast._Sampler(scheduler, 9, 1.0)
    g = torch.Generator().manual_seed(0)
    x_fast = x_ref = torch.randn(2, 4, 8, 8, generator=g)
    for i in range(len(fast_sampler.timesteps)):
        model_output = torch.randn(2, 4, 8, 8, generator=g)
        x_fast = fast_sampler.step(i, model_output, x_fast)
        x_ref = generic.step(i, model_output, x_ref)
        assert torch.allclose(x_fast, x_ref, rtol=1e-4, atol=1e-4), f"step {i}"


def test_tiny_random_weight_batched_variants_are_independent(pipe):
    """Item i depends only on its own inputs and generator, not on what else is in the batch."""
    runner = FastInpaintRunner(pipe)
    image, mask = inputs(3)
    kwargs = dict(prompt=PROMPT, num_inference_steps=4, guidance_scale=7.5, strength=1.0)
    batch = runner(image, mask, generator=generators([5, 6, 7]), **kwargs)
    alone_first = runner(image[:1], mask[:1], generator=generators([5]), **kwargs)
    alone_last = runner(image[2:], mask[2:], generator=generators([7]), **kwargs)
    assert (batch[:1] - alone_first).abs().max() < TOLERANCE
    assert (batch[2:] - alone_last).abs().max() < TOLERANCE
    # Same image, different seeds: different variants.
    same_image = runner(image[:1].expand(2, -1, -1, -1), mask[:1].expand(2, -1, -1, -1),
                        generator=generators([5, 6]), **kwargs)
    assert (same_image[0] - same_image[1]).abs().max() > 0.05
    assert (same_image[:1] - alone_first).abs().max() < TOLERANCE


class _ReusedOutput:
    """Stands in for CUDA graphs on the CPU: every call of a shape returns the same, overwritten buffer."""

    def __init__(self, fn):
        self.fn, self.outs = fn, {}

    def __call__(self, *inputs):
        result = self.fn(*inputs)
        return self.outs.setdefault(result.shape, torch.empty_like(result)).copy_(result)


def test_tiny_random_weight_generic_schedulers_match_plain_diffusers(pipe):
    """Schedulers without a host-side sampler: stochastic steps draw from the request's generators,
    and a scheduler that keeps past model outputs (PNDM) never sees a graph's reused output buffer."""
    from diffusers import EulerAncestralDiscreteScheduler, PNDMScheduler

    image, mask = inputs(2)
    seeds = [3, 11]
    cases = [
        (EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config),
         dict(num_inference_steps=5, guidance_scale=7.5, strength=0.8)),
        (PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True),
         dict(num_inference_steps=6, guidance_scale=1.0, strength=1.0)),
    ]
    references = []
    for scheduler, kwargs in cases:
        pipe.scheduler = scheduler
        references.append(plain_diffusers(pipe, image, mask, seeds, **kwargs))

    runner = FastInpaintRunner(pipe)
    runner._unet = _ReusedOutput(runner._unet)
    for (scheduler, kwargs), reference in zip(cases, references):
        pipe.scheduler = scheduler
        out = runner(image, mask, prompt=PROMPT, generator=generators(seeds), **kwargs)
        error = (out - reference).abs().max().item()
        assert error < TOLERANCE, f"{type(scheduler).__name__} {kwargs}: max abs difference {error}"


def test_tiny_random_weight_compile_failure_falls_back_to_eager_once(pipe, monkeypatch, caplog):
    image, mask = inputs(2)
    kwargs = dict(prompt=PROMPT, num_inference_steps=3, guidance_scale=7.5, generator=generators([1, 2]))
    reference = FastInpaintRunner(pipe, compile=False)(image, mask, **kwargs)

    def broken_compile(fn, **_):
        def compiled(*args):
            raise RuntimeError("backend exploded")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    runner = FastInpaintRunner(pipe, compile=True)
    assert runner.is_compiled
    with caplog.at_level(logging.WARNING, logger="medgen.generate.fast"):
        out = runner(image, mask, **{**kwargs, "generator": generators([1, 2])})
        again = runner(image, mask, **{**kwargs, "generator": generators([1, 2])})
    warnings = [r for r in caplog.records if "torch.compile of the UNet failed" in r.getMessage()]
    assert len(warnings) == 1 and "backend exploded" in warnings[0].getMessage()
    assert not runner.is_compiled
    assert (out - reference).abs().max() < TOLERANCE
    assert (again - reference).abs().max() < TOLERANCE


def test_tiny_random_weight_forced_compile_on_cpu_works_or_falls_back(pipe):
    """compile=True on the CPU: dynamo traces the UNet (code generation left out to stay fast)."""
    image, mask = inputs(2)
    kwargs = dict(prompt=PROMPT, num_inference_steps=2, guidance_scale=7.5)
    reference = FastInpaintRunner(pipe, compile=False)(image, mask, generator=generators([4, 9]), **kwargs)
    runner = FastInpaintRunner(pipe, compile=True, compile_backend="eager")
    out = runner(image, mask, generator=generators([4, 9]), **kwargs)
    assert (out - reference).abs().max() < TOLERANCE
    # Another batch size reuses the one compile (batch dimension dynamic) or falls back; never wrong.
    out3 = runner(*inputs(3), generator=generators([4, 9, 1]), **kwargs)
    assert out3.shape == (3, 3, SIZE, SIZE)
    assert (out3[:1] - reference[:1]).abs().max() < TOLERANCE


def test_tiny_random_weight_graph_capture_failure_falls_back(caplog):
    """Without CUDA, capture fails; the cache logs once and calls the function directly."""
    calls = []

    def double(x):
        calls.append(x.shape)
        return 2 * x

    cache = fast._GraphCache("test function", double, enabled=True)
    with caplog.at_level(logging.WARNING, logger="medgen.generate.fast"):
        x = torch.arange(4.0)
        assert torch.equal(cache(x), 2 * x)
        assert torch.equal(cache(x + 1), 2 * (x + 1))
    if not torch.cuda.is_available():
        assert not cache.enabled
        assert sum("CUDA graph capture of the test function failed" in r.getMessage() for r in caplog.records) == 1


def test_tiny_random_weight_runner_checks_inputs(pipe):
    runner = FastInpaintRunner(pipe)
    image, mask = inputs(2)
    with pytest.raises(ValueError, match="strength must be in"):
        runner(image, mask, prompt=PROMPT, strength=0.0, generator=generators([1, 2]))
    with pytest.raises(ValueError, match="list of 2 torch.Generator"):
        runner(image, mask, prompt=PROMPT, generator=generators([1]))
    with pytest.raises(ValueError, match=r"mask must be a \(2, 1, 32, 32\)"):
        runner(image, mask[:, :, :16], prompt=PROMPT, generator=generators([1, 2]))
    with pytest.raises(ValueError, match="at least one step"):
        runner(image, mask, prompt=PROMPT, num_inference_steps=3, strength=0.2, generator=generators([1, 2]))


def test_tiny_random_weight_named_architectures_match_published_sizes():
    """The written-out configs build the real architectures: parameter counts of the checkpoints."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    expected = {
        "sd15-inpaint": (859_535_364, 83_653_863, 123_060_480),
        "sd2-inpaint": (865_925_124, 83_653_863, 340_387_840),
    }
    for name, (n_unet, n_vae, n_text) in expected.items():
        arch = ARCHS[name]
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(arch.unet)
            vae = AutoencoderKL.from_config(arch.vae)
            text = CLIPTextModel(CLIPTextConfig(**arch.text_encoder))
        counts = tuple(sum(p.numel() for p in m.parameters()) for m in (unet, vae, text))
        assert counts == (n_unet, n_vae, n_text), name
        assert arch.resolution == 512 and unet.config.in_channels == 9


def test_tiny_random_weight_pipeline_is_reproducible_with_77_token_prompts():
    a, b = build_random_pipeline("tiny", seed=3), build_random_pipeline("tiny", seed=3)
    assert torch.equal(a.unet.conv_in.weight, b.unet.conv_in.weight)
    ids = a.tokenizer(PROMPT * 20, padding="max_length", max_length=a.tokenizer.model_max_length,
                      truncation=True, return_tensors="pt").input_ids
    assert a.tokenizer.model_max_length == 77 and ids.shape == (1, 77)
    assert int(ids.max()) < a.text_encoder.config.vocab_size
    with pytest.raises(ValueError, match="arch must be one of"):
        build_random_pipeline("sd3")


def test_peak_tflops_by_device_name():
    """Dense bf16 datasheet peaks for the names torch.cuda.get_device_name reports."""
    from medgen.bench.speed import peak_tflops

    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H100 NVL") == 835.0
    assert peak_tflops("NVIDIA H800 PCIe") == 756.0
    assert peak_tflops("NVIDIA GH200 480GB") == 989.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("NVIDIA H100 80GB HBM3 MIG 3g.40gb") is None
    assert peak_tflops("NVIDIA GeForce RTX 4090") is None


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"not valid JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_tiny_random_weight_speed_bench_cli_end_to_end(tmp_path, capsys):
    json_path = tmp_path / "bench.json"
    assert main(["--arch", "tiny", "--batch", "1,2", "--steps", "2", "--dpm-steps", "2", "--repeats", "1",
                 "--json", str(json_path)]) == 0
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.lstrip().startswith("batch"))
    for column in COLUMNS:
        assert column in header
    table = [line.split() for line in printed.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert sorted((row[0], row[1]) for row in table) == [("1", "diffusers"), ("1", "engine"),
                                                         ("2", "diffusers"), ("2", "engine")]
    assert all(len(row) == len(COLUMNS) for row in table)
    assert "warm-up, not in the averages" in printed and "DPM-Solver++" in printed

    result = strict_json(json_path.read_text())
    assert result["meta"]["arch"] == "tiny" and result["meta"]["steps"] == 2
    assert result["meta"]["versions"]["diffusers"]
    engine = [r for r in result["rows"] if r["path"] == "engine"]
    assert [r["batch"] for r in engine] == [1, 2]
    for r in result["rows"]:
        assert r["s_per_request"] > 0 and r["tflops"] > 0 and r["work_tflop"] > 0
        assert r["s_per_image"] == pytest.approx(r["s_per_request"] / r["batch"])
        assert r["peak_share"] is None and r["peak_mem_gib"] is None  # CPU: n/a
    assert engine[1]["work_tflop"] == pytest.approx(2 * engine[0]["work_tflop"], rel=1e-6)
    assert all(a["max_abs"] < TOLERANCE for a in result["agreement"] if a["what"] == "engine vs diffusers")
    assert result["fewer_steps"][0]["steps"] == 2 and result["fewer_steps"][0]["vs_full_steps"]["psnr_db"] > 0


def test_tiny_random_weight_speed_bench_loads_a_model_folder(tmp_path, capsys):
    """--arch demo --model PATH: the from_pretrained path the shipped demo model will use."""
    build_random_pipeline("tiny", seed=1).save_pretrained(tmp_path / "model")
    assert main(["--arch", "demo", "--model", str(tmp_path / "model"), "--batch", "1", "--steps", "1",
                 "--dpm-steps", "", "--repeats", "1"]) == 0
    assert "demo (" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--arch", "demo", "--batch", "1", "--random-weights", "--model", str(tmp_path / "model")])


def test_speed_bench_demo_arch_runs_the_shipped_phantom_model(tmp_path, capsys):
    from medgen.phantom.model import demo_model_path

    assert main(["--arch", "demo", "--batch", "1", "--steps", "2", "--dpm-steps", "", "--repeats", "1",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"demo (weights from {demo_model_path()})" in out and "engine/diffusers" in out
    with pytest.raises(SystemExit):
        main(["--arch", "demo", "--model", str(tmp_path / "missing")])
    assert "no such model folder" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_random_weight_cuda_graphs_and_compile_stay_close_to_eager_on_gpu():
    """On a GPU (run with -m gpu): compiled + graphed output against the eager loop, bf16."""
    pipe = build_random_pipeline("tiny", dtype=torch.bfloat16, device="cuda")
    image, mask = inputs(2)
    kwargs = dict(prompt=PROMPT, num_inference_steps=10, guidance_scale=7.5)
    reference = FastInpaintRunner(pipe, compile=False, cuda_graphs=False)(
        image, mask, generator=generators([1, 2]), **kwargs)
    runner = FastInpaintRunner(pipe)
    assert runner.cuda_graphs
    runner.warmup([1, 2], SIZE)
    out = runner(image, mask, generator=generators([1, 2]), **kwargs)
    assert len(runner._unet.graphs) == 2 and runner._unet.enabled
    assert torch.isfinite(out).all()
    assert (out - reference).abs().mean() < 0.05
