"""`--cache-interval` (generate.feature_cache): the whole UNet every N-th step, its deep features reused in
the steps between. Tiny random-weight models on the CPU.

Tolerances: a shallow call fed the deep features of the same input reproduces the stock UNet exactly
(asserted equal). With interval 3 the tiny model's images stay within PSNR 20 dB of the full
computation in [-1, 1] (measured: about 30 dB for the 9-channel model, 35 dB for the 4-channel one);
the trained demo model gives about 50 dB (`medgen bench cache`).
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from medgen.api import InpaintRequest, check_request  # noqa: E402
from medgen.errors import InputError  # noqa: E402
from medgen.generate.archs import build_random_pipeline  # noqa: E402
from medgen.generate.feature_cache import (  # noqa: E402
    MAX_CACHE_INTERVAL,
    FeatureCache,
    cached_unet_calls,
    check_model,
)
from medgen.generate.inpaint import inpaint  # noqa: E402
from medgen.generate.models import load_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 6
MIN_PSNR_DB = 20.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def crops(model, n: int = 2):
    size = model.resolution
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    image = (0.8 * (x - 0.5) + 0.6 * ((x - 0.3) ** 2 + (y - 0.6) ** 2 < 0.05)).astype(np.float32)
    images = np.stack([np.clip(image + 0.1 * k, -1, 1) for k in range(n)]).astype(np.float32)
    masks = np.zeros_like(images)
    masks[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    return images, masks


def run(model, **kwargs):
    images, masks = crops(model)
    return inpaint(model, images, masks, prompt="hypodense lesion", seeds=[7, 8], num_variants=2,
                   num_inference_steps=STEPS, guidance_scale=7.5, **kwargs)


class CallCounter:
    """Forward calls of the UNet's deep part (its mid block) and of its shallow ends (conv_in, conv_out)."""

    def __init__(self, unet):
        self.counts = {"mid": 0, "conv_in": 0, "conv_out": 0}
        self.handles = [
            module.register_forward_hook(lambda *args, name=name: self.counts.__setitem__(name, self.counts[name] + 1))
            for name, module in (("mid", unet.mid_block), ("conv_in", unet.conv_in), ("conv_out", unet.conv_out))
        ]

    def __enter__(self):
        return self.counts

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def base_model(tiny_base_model_dir):
    return load_model(tiny_base_model_dir, device="cpu")


@pytest.mark.parametrize("branch", [0, 1])
def test_shallow_call_on_the_same_steps_deep_features_is_the_stock_unet(branch):
    unet = build_random_pipeline("tiny", seed=0).unet
    cache = FeatureCache(unet, branch)
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, unet.config.in_channels, 16, 16, generator=g)
    timestep = torch.tensor([500, 500])
    embeds = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    with torch.inference_mode():
        stock = unet(sample, timestep, encoder_hidden_states=embeds).sample
        full, deep = cache.full(sample, timestep, embeds)
        shallow = cache.shallow(sample, timestep, embeds, deep)
    assert torch.equal(full, stock)
    assert torch.equal(shallow, stock)
    assert not unet.up_blocks[-1].resnets[-1 - branch]._forward_pre_hooks  # the capture hook is gone


def test_interval_1_is_todays_output_and_builds_no_cache(model):
    today = run(model)
    assert np.array_equal(run(model, cache_interval=1), today)
    assert model.fast_runner.feature_cache is None


def test_interval_3_runs_the_deep_blocks_every_third_step_and_stays_close(model):
    with CallCounter(model.pipe.unet) as counts:
        full = run(model)
    assert counts == {"mid": STEPS, "conv_in": STEPS, "conv_out": STEPS}  # one call per step: 4 pairs, 1 batch
    with CallCounter(model.pipe.unet) as counts:
        cached = run(model, cache_interval=3)
    assert counts == {"mid": 2, "conv_in": STEPS, "conv_out": STEPS}  # steps 0 and 3 in full
    assert model.fast_runner.feature_cache.shallow_calls >= 4
    assert not np.array_equal(cached, full)
    assert psnr(cached, full) > MIN_PSNR_DB
    # deterministic, and a pair's result does not depend on the rest of its batch
    assert np.array_equal(run(model, cache_interval=3), cached)
    images, masks = crops(model)
    alone = inpaint(model, images[:1], masks[:1], prompt="hypodense lesion", seeds=[8], num_variants=1,
                    num_inference_steps=STEPS, guidance_scale=7.5, cache_interval=3)
    np.testing.assert_allclose(alone[0, 0], cached[0, 1], atol=1e-4)


def test_a_4_channel_unet_caches_inside_diffusers_pipeline(base_model):
    with CallCounter(base_model.pipe.unet) as counts:
        full = run(base_model)
    with CallCounter(base_model.pipe.unet) as counts_cached:
        cached = run(base_model, cache_interval=2)
    assert counts["mid"] == STEPS and counts_cached == {"mid": STEPS // 2, "conv_in": STEPS, "conv_out": STEPS}
    assert "forward" not in vars(base_model.pipe.unet)  # the stock forward is back
    assert not np.array_equal(cached, full) and psnr(cached, full) > MIN_PSNR_DB


def test_cached_unet_calls_refuses_conditioning_it_cannot_carry():
    unet = build_random_pipeline("tiny", seed=0).unet
    sample = torch.zeros(1, unet.config.in_channels, 16, 16)
    embeds = torch.zeros(1, 77, unet.config.cross_attention_dim)
    with cached_unet_calls(unet, 2), pytest.raises(InputError, match="--cache-interval 2: .*timestep_cond"):
        unet(sample, 1, encoder_hidden_states=embeds, timestep_cond=torch.zeros(1, 4))


@pytest.mark.parametrize("value", [0, -1, MAX_CACHE_INTERVAL + 1, 2.5, True, "3"])
def test_bad_intervals_are_refused_in_one_line(tmp_path, value):
    request = InpaintRequest(input=tmp_path / "in.dcm", mask=tmp_path / "m.nrrd", prompt="cyst", out=tmp_path / "o",
                             cache_interval=value)
    with pytest.raises(InputError, match="--cache-interval must be a whole number from 1 to 10") as error:
        check_request(request)
    assert "\n" not in str(error.value)


def test_a_controlnet_or_an_unusual_unet_is_refused_naming_the_option(tmp_path, model):
    (tmp_path / "cn").mkdir()
    request = InpaintRequest(input=tmp_path / "in.dcm", mask=tmp_path / "m.nrrd", prompt="cyst", out=tmp_path / "o",
                             controlnet=str(tmp_path / "cn"), cache_interval=2)
    with pytest.raises(InputError, match="--cache-interval 2 needs a model without a ControlNet"):
        check_request(request)
    check_request(dataclasses.replace(request, cache_interval=1))  # no refusal at 1

    freeu = dataclasses.replace(model)
    freeu.pipe = build_random_pipeline("tiny", seed=0)
    freeu.pipe.unet.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    with pytest.raises(InputError, match="--cache-interval 3 cannot reuse this model's deep features: FreeU"):
        check_model(freeu, 3)
    check_model(freeu, 1)


@pytest.mark.parametrize("value", ["0", "11", "x"])
def test_cli_refuses_a_bad_interval_with_exit_2_in_one_line(tmp_path, capsys, value):
    from medgen.cli import main

    argv = ["inpaint", str(tmp_path / "in.dcm"), "--mask", str(tmp_path / "m.nrrd"), "--prompt", "cyst",
            "--out", str(tmp_path / "out"), "--cache-interval", value]
    if value == "x":  # not a number: argparse's usage and its one-line error
        with pytest.raises(SystemExit) as exited:
            main(argv)
        code, err = exited.value.code, capsys.readouterr().err.strip().splitlines()[-1]
    else:  # a number out of range: the engine's one line, before any file is read
        code, err = main(argv), capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
    assert code == 2 and "--cache-interval" in err
    assert not (tmp_path / "out").exists()


def test_the_interval_is_a_batch_column_a_server_parameter_and_in_the_provenance(tmp_path, tiny_model_dir):
    from medgen.api import Inpainter
    from medgen.batch.manifest import Column, columns
    from medgen.phantom.cases import make_case
    from medgen.phantom.lesions import LesionType
    from medgen.phantom.series import write_case
    from medgen.server.errors import ApiError
    from medgen.server.schemas import JobParameters
    from medgen.server.uploads import parse_parameters

    assert columns()["cache-interval"] == Column("cache_interval", "int")
    assert JobParameters(prompt="cyst").cache_interval == 1
    assert parse_parameters(json.dumps({"prompt": "cyst", "cache_interval": 4})).cache_interval == 4
    for bad in (0, 11, "three", 2.5):
        with pytest.raises(ApiError) as error:
            parse_parameters(json.dumps({"prompt": "cyst", "cache_interval": bad}))
        assert error.value.status == 422 and "cache_interval" in error.value.message

    case = make_case((5, 0), LesionType.CYST, case_id="c")
    files = write_case(case, tmp_path / "case")
    request = InpaintRequest(input=files.healthy_dir, mask=files.seg_nrrd, prompt="cyst", out=tmp_path / "out",
                             slices=[4], num_inference_steps=2, seed=1, window="soft_tissue", cache_interval=2)
    result = Inpainter(tiny_model_dir, device="cpu")(request)
    provenance = json.loads(result.provenance_path.read_text())
    assert provenance["parameters"]["cache_interval"] == 2


def test_server_job_with_a_bad_interval_gets_a_422_json_error(tmp_path, tiny_model_dir):
    from fastapi.testclient import TestClient

    from medgen.server.app import create_app
    from medgen.server.config import ModelEntry, ServerConfig

    config = ServerConfig(data_dir=tmp_path / "data", models=(ModelEntry("tiny", tiny_model_dir),), preload=False)
    http = TestClient(create_app(config, "secret"))  # no `with`: the worker never starts
    response = http.post("/v1/jobs", headers={"Authorization": "Bearer secret"},
                         data={"parameters": json.dumps({"prompt": "cyst", "cache_interval": 11})},
                         files=[("source", ("s.nrrd", b"x")), ("mask", ("m.nrrd", b"x"))])
    assert response.status_code == 422, response.text
    assert "cache_interval" in response.json()["error"]["message"]


def test_bench_cache_toy_run_writes_its_json(tmp_path, tiny_model_dir, capsys):
    from medgen.bench.cache import main

    out = tmp_path / "cache.json"
    code = main(["--model", str(tiny_model_dir), "--sd-arch", "tiny", "--cases", "1", "--variants", "2",
                 "--repeats", "1", "--steps", "3", "--types", "cyst", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "ratio" in printed and "PSNR" in printed and "lost at interval 3" in printed
    result = json.loads(out.read_text())
    assert result["meta"]["cache_interval"] == 3
    assert result["model"]["unet_steps_per_image"]["3"] == {"full": 1, "shallow": 2}
    assert result["model"]["s_per_image"]["1"] > 0 and result["model"]["speedup"] > 0
    assert 0 < result["model"]["shallow_flop_share"] < 0.5
    assert result["sd"]["arch"] == "tiny" and result["sd"]["speedup_projected"] > 0
    for n in ("1", "3"):
        assert set(result["quality"][n]) >= {"fidelity", "dice", "hu_error", "adjacent_ratio", "area_correlation"}
    assert set(result["quality"]["lost"]) == {"fidelity_points", "dice", "hu_error", "adjacent_ratio"}
    assert main(["--cache-interval", "1", "--sd-arch", "none", "--cases", "0"]) == 2


def _generation(model, interval: int, seed: int):
    from medgen.generate.batched import Generation

    images, masks = crops(model)
    work = Generation(crops=images, masks=masks, control_images=None, prompts=["hypodense lesion"], seeds=[seed],
                      negative_prompt=None, num_inference_steps=STEPS, guidance_scale=7.5, strength=1.0)
    work.cache_interval = interval
    return work


def _batched_takes_the_interval() -> bool:
    from medgen.generate.batched import Generation

    return "cache_interval" in Generation.__dataclass_fields__


@pytest.mark.skipif(not _batched_takes_the_interval(),
                    reason="generate/batched.py does not group by cache_interval yet")
def test_requests_of_other_intervals_never_share_a_batched_call(model):
    from medgen.generate.batched import generate_together

    works = [_generation(model, 1, 7), _generation(model, 3, 8), _generation(model, 3, 9)]
    with CallCounter(model.pipe.unet) as counts:
        together = generate_together(model, works)
    # interval 1: one call of its 2 crops per step; interval 3: its two requests' 4 crops in one call, 2 full steps
    assert counts == {"mid": STEPS + 2, "conv_in": 2 * STEPS, "conv_out": 2 * STEPS}
    for work, out in zip(works, together):
        alone = inpaint(model, work.crops, work.masks, prompt="hypodense lesion", seeds=work.seeds,
                        num_inference_steps=STEPS, guidance_scale=7.5, cache_interval=work.cache_interval)
        np.testing.assert_allclose(out, alone, atol=1e-4)  # layers batched: float rounding
    from medgen.generate.batched import batch_invariant

    for work, out in zip(works, generate_together(model, works, invariant=True)):
        with batch_invariant(model, guided=True):
            alone = inpaint(model, work.crops, work.masks, prompt="hypodense lesion", seeds=work.seeds,
                            num_inference_steps=STEPS, guidance_scale=7.5, cache_interval=work.cache_interval)
        assert np.array_equal(out, alone)  # batch-invariant mode: the same bytes
