"""medgen.generate on tiny random-weight models built by the tests themselves (no hub, CPU, seconds)."""

from __future__ import annotations

import json
import logging
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub, even by accident

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medgen.errors import InputError
from medgen.generate import models
from medgen.generate.inpaint import inpaint, prompt_overflow
from medgen.generate.models import SCHEDULERS, load_model, resolve_device, resolve_dtype
from medgen.generate.tiny import create_tiny_model, save_single_file

RESOLUTION = 64
STEPS = 2


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP threads spinning
    against other processes made this file 10x slower (210 s instead of 22 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dirs(tiny_model_dir, tiny_base_model_dir):
    """The session's tiny random-weight models (conftest.py): seed 0, resolution 64."""
    return {"inpaint": tiny_model_dir, "base": tiny_base_model_dir}


@pytest.fixture(scope="session")
def inpaint_model(tiny_dirs):
    return load_model(tiny_dirs["inpaint"])


@pytest.fixture(scope="session")
def base_model(tiny_dirs):
    return load_model(tiny_dirs["base"])


def _slices(n=2):
    """A smooth gradient with a bright disc (a stand-in for anatomy), and a square mask in the middle."""
    y, x = np.mgrid[0:RESOLUTION, 0:RESOLUTION] / (RESOLUTION - 1)
    image = (0.8 * (x - 0.5) + 0.6 * ((x - 0.3) ** 2 + (y - 0.6) ** 2 < 0.05)).astype(np.float32)
    images = np.stack([np.clip(image + 0.1 * k, -1, 1) for k in range(n)]).astype(np.float32)
    masks = np.zeros_like(images)
    masks[:, 20:44, 20:44] = 1
    return images, masks


def _run(model, **overrides):
    images, masks = _slices(overrides.pop("n", 2))
    kwargs = dict(prompt="hypodense liver lesion", seeds=[7], num_inference_steps=STEPS)
    kwargs.update(overrides)
    return inpaint(model, images, masks, **kwargs)


# --- creating and loading ------------------------------------------------------------------------


def test_tiny_random_weight_model_is_small_and_loads_offline(tiny_dirs, inpaint_model):
    size = sum(f.stat().st_size for f in tiny_dirs["inpaint"].rglob("*") if f.is_file())
    assert size < 10 * 2**20
    assert not list(tiny_dirs["inpaint"].rglob("*.bin")), "weights must be safetensors"
    assert (tiny_dirs["inpaint"] / "tokenizer" / "vocab.json").is_file()
    assert (tiny_dirs["inpaint"] / "tokenizer" / "merges.txt").is_file()
    assert inpaint_model.resolution == RESOLUTION
    assert inpaint_model.in_channels == 9
    assert inpaint_model.device == torch.device("cpu") or torch.cuda.is_available()
    assert inpaint_model.model_id == str(tiny_dirs["inpaint"])
    assert inpaint_model.pipe.safety_checker is None


def test_tiny_random_weight_model_same_seed_same_weights(tiny_dirs, tmp_path):
    again = create_tiny_model(tmp_path / "again", kind="inpaint", seed=0, resolution=RESOLUTION)
    other = create_tiny_model(tmp_path / "other", kind="inpaint", seed=1, resolution=RESOLUTION)
    name = "unet/diffusion_pytorch_model.safetensors"
    reference = load_file(tiny_dirs["inpaint"] / name)
    assert all(torch.equal(reference[k], v) for k, v in load_file(again / name).items())
    assert not all(torch.equal(reference[k], v) for k, v in load_file(other / name).items())


# --- the inpainting core -------------------------------------------------------------------------


def test_tiny_random_weight_model_output_shape_range_and_float_precision(inpaint_model):
    out = _run(inpaint_model, n=3, num_variants=2, seeds=[1, 2])
    assert out.shape == (3, 2, RESOLUTION, RESOLUTION)
    assert out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= -1 and out.max() <= 1
    # A uint8 round trip would leave only 256 levels, each on the grid k / 255.
    levels = (out + 1) / 2 * 255
    assert len(np.unique(out)) > 256
    assert np.abs(levels - np.round(levels)).max() > 0.01


def test_tiny_random_weight_model_gets_exact_float_images_in_vae_range(tiny_dirs, monkeypatch):
    """What reaches the VAE is the slice itself in [-1, 1], unquantized, zeroed only inside the mask."""
    model = load_model(tiny_dirs["inpaint"])
    seen = []
    encode = model.pipe.vae.encode
    monkeypatch.setattr(model.pipe.vae, "encode", lambda x, *a, **k: seen.append(x.clone()) or encode(x, *a, **k))
    images, masks = _slices(2)
    inpaint(model, images, masks, prompt="lesion", seeds=[0], num_inference_steps=1)
    encoded_all = torch.cat(seen)
    assert encoded_all.shape == (2, 3, RESOLUTION, RESOLUTION)  # the masked image of each slice, once
    for image, mask, encoded in zip(images, masks, encoded_all):
        expected = np.where(mask >= 0.5, 0.0, image)
        for channel in encoded.numpy():
            np.testing.assert_allclose(channel, expected, atol=1e-6)


def test_tiny_random_weight_model_same_seed_is_bit_identical_and_seeds_differ(inpaint_model):
    first = _run(inpaint_model, num_variants=2, seeds=[11, 12])
    second = _run(inpaint_model, num_variants=2, seeds=[11, 12])
    assert np.array_equal(first, second)
    assert np.abs(first[:, 0] - first[:, 1]).max() > 1e-2, "different seeds must give different variants"
    swapped = _run(inpaint_model, num_variants=2, seeds=[12, 11])
    np.testing.assert_allclose(swapped[:, 0], first[:, 1], atol=1e-4)


def test_tiny_random_weight_model_batching_does_not_change_results(tiny_dirs):
    model = load_model(tiny_dirs["inpaint"])
    model.max_batch_size = 8
    together = _run(model, n=3, num_variants=2, seeds=[3, 4])
    model.max_batch_size = 1
    alone = _run(model, n=3, num_variants=2, seeds=[3, 4])
    # Per-item generators make the noise identical; CPU kernels may round differently per batch size.
    np.testing.assert_allclose(together, alone, atol=1e-4)
    assert np.array_equal(alone, _run(model, n=3, num_variants=2, seeds=[3, 4]))


def test_tiny_random_weight_model_prompt_guidance_and_strength_matter(inpaint_model):
    reference = _run(inpaint_model, guidance_scale=7.5)
    assert np.abs(reference - _run(inpaint_model, prompt="lung nodule", guidance_scale=7.5)).max() > 1e-3
    assert np.abs(reference - _run(inpaint_model, guidance_scale=1.0)).max() > 1e-3
    assert np.abs(reference - _run(inpaint_model, strength=0.5, num_inference_steps=4)).max() > 1e-3


def test_tiny_random_weight_model_progress_callback_counts_all_batches(tiny_dirs):
    model = load_model(tiny_dirs["inpaint"])
    model.max_batch_size = 2
    calls = []
    _run(model, n=3, num_inference_steps=3, callback=lambda done, total: calls.append((done, total)))
    # 3 slices x 1 variant in batches of 2 → 2 batches x 3 steps.
    assert calls == [(k, 6) for k in range(1, 7)]


def test_tiny_random_weight_base_model_inpaints_by_latent_blending(base_model):
    assert base_model.in_channels == 4
    out = _run(base_model, num_variants=2, seeds=[5, 6])
    assert out.shape == (2, 2, RESOLUTION, RESOLUTION) and np.isfinite(out).all()
    assert np.array_equal(out, _run(base_model, num_variants=2, seeds=[5, 6]))
    # Outside the mask the latents are replaced by the source's, so with an empty mask the prompt
    # cannot change anything; with the real mask it must.
    images, masks = _slices(1)
    empty = np.zeros_like(masks)
    a = inpaint(base_model, images, empty, prompt="liver lesion", seeds=[5], num_inference_steps=STEPS)
    b = inpaint(base_model, images, empty, prompt="lung nodule cyst", seeds=[5], num_inference_steps=STEPS)
    assert np.array_equal(a, b)
    c = inpaint(base_model, images, masks, prompt="liver lesion", seeds=[5], num_inference_steps=STEPS)
    d = inpaint(base_model, images, masks, prompt="lung nodule cyst", seeds=[5], num_inference_steps=STEPS)
    assert np.abs(c - d).max() > 1e-3


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
@pytest.mark.parametrize("kind", ["inpaint", "base"])
def test_tiny_random_weight_model_every_scheduler_runs(tiny_dirs, scheduler, kind):
    model = load_model(tiny_dirs[kind], scheduler=scheduler)
    expected = {
        "ddim": "DDIMScheduler",
        "dpm++": "DPMSolverMultistepScheduler",
        "euler": "EulerDiscreteScheduler",
        "unipc": "UniPCMultistepScheduler",
    }[scheduler]
    assert model.scheduler_name == expected
    if scheduler == "dpm++":
        assert model.pipe.scheduler.config.algorithm_type == "dpmsolver++"
    # The training noise schedule carries over from the model's own scheduler config.
    assert model.pipe.scheduler.config.beta_schedule == "scaled_linear"
    out = _run(model, n=1, num_inference_steps=3)
    assert out.shape == (1, 1, RESOLUTION, RESOLUTION) and np.isfinite(out).all()


def test_tiny_random_weight_model_set_scheduler_switches_and_restores(tiny_dirs):
    model = load_model(tiny_dirs["inpaint"], scheduler="euler")
    model.set_scheduler("unipc")
    assert model.scheduler_name == "UniPCMultistepScheduler"
    model.set_scheduler(None)
    assert model.scheduler_name == "DDIMScheduler"


def test_tiny_random_weight_model_long_prompt_warning_names_cut_words(inpaint_model, caplog):
    # 37 x 2 words + "tumor" fill the 75 prompt tokens between start and end token; the rest is cut.
    prompt = "liver lesion " * 37 + "tumor cyst nodule"
    assert prompt_overflow(inpaint_model.pipe, prompt) == "cyst nodule"
    assert prompt_overflow(inpaint_model.pipe, "liver lesion") is None
    images, masks = _slices(1)
    with caplog.at_level(logging.WARNING, logger="medgen.generate"):
        inpaint(inpaint_model, images, masks, prompt=prompt, seeds=[0], num_inference_steps=1)
    ours = [r for r in caplog.records if r.name.startswith("medgen.generate")]
    assert len(ours) == 1
    assert "77 tokens" in ours[0].getMessage()
    assert "this part was cut: 'cyst nodule'" in ours[0].getMessage()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"strength": 1.5}, "strength must be in (0, 1], got 1.5"),
        ({"strength": 0.0}, "strength must be in (0, 1], got 0.0"),
        ({"guidance_scale": -1.0}, "guidance_scale must be >= 0, got -1.0"),
        ({"num_inference_steps": 0}, "num_inference_steps must be an integer >= 1, got 0"),
        ({"num_variants": 0, "seeds": []}, "num_variants must be an integer >= 1, got 0"),
        ({"num_variants": 2, "seeds": [1]}, "one seed per variant (2), got 1"),
        ({"seeds": [-1]}, "seeds must be integers in [0, 2**63 - 1], got -1"),
        ({"strength": 0.2, "num_inference_steps": 2}, "leaves no denoising step"),
        ({"prompt": None}, "prompt must be a string"),
    ],
)
def test_tiny_random_weight_model_bad_parameters_raise_input_error(inpaint_model, overrides, message):
    with pytest.raises(InputError) as caught:
        _run(inpaint_model, **overrides)
    assert message in str(caught.value)


def test_tiny_random_weight_model_bad_arrays_raise_input_error(inpaint_model):
    images, masks = _slices(2)
    kw = dict(prompt="lesion", seeds=[0], num_inference_steps=1)
    with pytest.raises(InputError, match=r"images must have shape \(N, 64, 64\)"):
        inpaint(inpaint_model, images[:, :32, :32], masks[:, :32, :32], **kw)
    with pytest.raises(InputError, match="masks must have the shape of images"):
        inpaint(inpaint_model, images, masks[:1], **kw)
    with pytest.raises(InputError, match=r"model space \[-1, 1\]"):
        inpaint(inpaint_model, images * 300, masks, **kw)
    with pytest.raises(InputError, match=r"masks must be in \[0, 1\]"):
        inpaint(inpaint_model, images, masks * 2, **kw)
    # bool masks are accepted
    assert inpaint(inpaint_model, images, masks > 0, **kw).shape == (2, 1, 64, 64)


# --- loading errors, device and dtype ------------------------------------------------------------


def _copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "copy")


def test_missing_or_non_model_paths_raise_input_error_naming_the_path(tmp_path, tiny_dirs):
    missing = tmp_path / "nowhere"
    with pytest.raises(InputError, match="no such model folder") as caught:
        load_model(missing)
    assert str(missing) in str(caught.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no model_index.json") as caught:
        load_model(empty)
    assert str(empty) in str(caught.value)

    no_unet = _copy(tiny_dirs["inpaint"], tmp_path)
    shutil.rmtree(no_unet / "unet")
    with pytest.raises(InputError, match="component 'unet' is missing") as caught:
        load_model(no_unet)
    assert str(no_unet) in str(caught.value)


def test_unsupported_unet_channels_raise_input_error(tmp_path, tiny_dirs):
    folder = _copy(tiny_dirs["inpaint"], tmp_path)
    config_file = folder / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config["in_channels"] = 8
    config_file.write_text(json.dumps(config))
    with pytest.raises(InputError, match="8 input channels") as caught:
        load_model(folder)
    assert str(folder) in str(caught.value)


def test_unknown_scheduler_raises_input_error(tiny_dirs):
    with pytest.raises(InputError, match="scheduler must be one of ddim, dpm\\+\\+, euler, unipc, got 'pndm'"):
        load_model(tiny_dirs["inpaint"], scheduler="pndm")


def test_device_and_dtype_selection(monkeypatch):
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(InputError, match="no usable CUDA device"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="device must be"):
        resolve_device("tpu")
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("fp16", cpu) == torch.float16
    assert resolve_dtype(torch.float32, cpu) == torch.float32
    with pytest.raises(InputError, match="dtype must be one of auto, fp32, fp16, bf16, got 'fp8'"):
        resolve_dtype("fp8", cpu)
    # On a GPU, auto prefers bf16 and falls back to fp16 (the logic only; no GPU needed).
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype(None, torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16


def test_tiny_random_weight_model_auto_is_cpu_fp32_without_gpu(tiny_dirs):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    model = load_model(tiny_dirs["inpaint"], device="auto", dtype=None)
    assert (model.device, model.dtype) == (torch.device("cpu"), torch.float32)
    assert model.pipe.unet.dtype == torch.float32


def test_tiny_random_weight_model_forced_bf16_on_cpu(tiny_dirs):
    model = load_model(tiny_dirs["inpaint"], device="cpu", dtype="bf16")
    assert model.pipe.unet.dtype == torch.bfloat16
    out = _run(model, n=1, num_inference_steps=1)
    assert out.dtype == np.float32 and np.isfinite(out).all()


# --- single-file checkpoints ---------------------------------------------------------------------


def test_tiny_random_weight_model_single_file_loads_with_local_config(tiny_dirs, tmp_path):
    checkpoint = save_single_file(tiny_dirs["inpaint"], tmp_path / "tiny.safetensors")
    keys = load_file(checkpoint).keys()
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys  # the original (LDM) layout
    assert any(k.startswith("first_stage_model.") for k in keys)
    assert any(k.startswith("cond_stage_model.transformer.") for k in keys)
    # The config folder gives only the architecture: its weights (another seed) must not be used.
    config = create_tiny_model(tmp_path / "config", kind="inpaint", seed=1, resolution=RESOLUTION)
    model = load_model(checkpoint, config=config)
    reference = load_model(tiny_dirs["inpaint"])  # fresh: running the fast path fuses QKV in place
    for name in ("unet", "vae", "text_encoder"):
        expected = getattr(reference.pipe, name).state_dict()
        loaded = getattr(model.pipe, name).state_dict()
        assert expected.keys() == loaded.keys()
        assert all(torch.equal(expected[k], loaded[k]) for k in expected), name
    np.testing.assert_allclose(_run(model), _run(reference), atol=1e-6)


def test_single_file_errors_raise_input_error(tiny_dirs, tmp_path):
    checkpoint = save_single_file(tiny_dirs["inpaint"], tmp_path / "tiny.safetensors")
    with pytest.raises(InputError, match="needs config=") as caught:
        load_model(checkpoint)
    assert str(checkpoint) in str(caught.value)
    with pytest.raises(InputError, match="9 input channels but the config folder"):
        load_model(checkpoint, config=tiny_dirs["base"])
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"not really a pickle")
    with pytest.raises(InputError, match="only .safetensors is accepted") as caught:
        load_model(pickle, config=tiny_dirs["inpaint"])
    assert str(pickle) in str(caught.value)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="not a readable safetensors file"):
        load_model(garbage, config=tiny_dirs["inpaint"])
    with pytest.raises(InputError, match="not a diffusers config folder"):
        load_model(checkpoint, config=tmp_path)


def test_forcing_cuda_without_cuda_raises_input_error(monkeypatch, tiny_dirs):
    """Checked before any weights load; patched so that it also runs on a GPU machine."""
    monkeypatch.setattr(models.torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="no usable CUDA device"):
        load_model(tiny_dirs["inpaint"], device="cuda:0")
