"""ControlNet for inpainting, with tiny random-weight ControlNets built from the tiny random-weight models."""

import json

import numpy as np
import pytest
from PIL import Image
from testfiles import dicom_testfile

from medgen.cli import main
from medgen.generate.control import control_image
from medgen.imaging.read import read_volume


def _tiny_controlnet(base_model_dir, out_dir, **overrides):
    """A tiny random-weight ControlNet from the tiny base UNet (4 latent channels, as the pipeline feeds)."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(base_model_dir / "unet")
    torch.manual_seed(0)
    # the tiny VAE downsamples by 2, so the control image embedding does too (two stages, one stride-2)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    if overrides:
        controlnet = ControlNetModel.from_config({**dict(controlnet.config), **overrides})
    controlnet.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def tiny_controlnet_dir(tiny_base_model_dir, tmp_path_factory):
    return _tiny_controlnet(tiny_base_model_dir, tmp_path_factory.mktemp("cn") / "tiny-controlnet")


def _disk(size=64, radius=12):
    rr, cc = np.mgrid[:size, :size]
    return ((rr - size // 2) ** 2 + (cc - size // 2) ** 2 <= radius**2).astype(np.float32)


def test_control_image_kinds_tiny_random_weight_free():
    mask = _disk()
    source = np.full((64, 64), -1.0, np.float32)
    source[:, 32:] = 1.0  # a vertical step edge at column 32
    ring = control_image(source, mask, "mask-edges")
    assert ring.shape == mask.shape and ring.dtype == np.float32
    assert set(np.unique(ring)) == {0.0, 1.0}
    assert ring[32, 32] == 0 and ring[0, 0] == 0  # not inside, not far outside
    assert ring[32, 32 + 12] == 1  # on the outline
    assert np.array_equal(control_image(source, mask, "mask"), mask)
    edges = control_image(source, mask, "source-edges")
    assert edges.max() == pytest.approx(1.0) and edges.min() >= 0
    assert edges[10, 31] > 0 and edges[10, 5] == 0 and edges[10, 60] == 0


def _run(tmp_path, model, out, *extra):
    mask = tmp_path / "mask.png"
    if not mask.exists():
        Image.fromarray((_disk(128, 15) * 255).astype(np.uint8)).save(mask)
    args = ["inpaint", dicom_testfile("CT_small.dcm"), "--mask", mask, "--prompt", "cyst", "--model", model,
            "--steps", 2, "--seed", 5, "--out", out, *extra]
    return main([str(a) for a in args])


def test_inpaint_with_tiny_random_weight_controlnet(tiny_model_dir, tiny_controlnet_dir, tmp_path):
    out = tmp_path / "out"
    assert _run(tmp_path, tiny_model_dir, out, "--controlnet", f"{tiny_controlnet_dir}:0.8") == 0
    provenance = json.loads((out / "provenance.json").read_text())
    [record] = [a for a in provenance["adapters"] if a["kind"] == "controlnet"]
    assert record["path"] == str(tiny_controlnet_dir) and record["scale"] == 0.8
    assert record["control_from"] == "mask-edges" and len(record["sha256"]) == 64

    source = read_volume(dicom_testfile("CT_small.dcm")).pixels
    result = read_volume(min((out / "variant-01").rglob("*.dcm"))).pixels
    from medgen.imaging.crop import dilate_mask

    disk = _disk(128, 15) > 0
    dilated = dilate_mask(disk, 2.0, tuple(read_volume(dicom_testfile("CT_small.dcm")).spacing[1:]))
    assert np.array_equal(result[0][~dilated], source[0][~dilated])
    assert not np.array_equal(result[0][disk], source[0][disk])


def test_mismatched_tiny_random_weight_controlnet_is_refused(
    tiny_model_dir, tiny_base_model_dir, tmp_path, capsys
):
    bad = _tiny_controlnet(tiny_base_model_dir, tmp_path / "bad-controlnet", cross_attention_dim=16)
    out = tmp_path / "out"
    code = _run(tmp_path, tiny_model_dir, out, "--controlnet", bad, "--control-from", "source-edges")
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert str(bad) in err and "cross-attention" in err
    assert not out.exists()


def test_controlnet_trained_on_another_base_warns(tiny_model_dir, tiny_base_model_dir, tmp_path, caplog):
    """Its adapter.json (as `medgen train controlnet` writes it) names a base other than the model in use."""
    import logging

    from medgen.generate.adapters import write_manifest

    controlnet = _tiny_controlnet(tiny_base_model_dir, tmp_path / "cn")
    write_manifest(controlnet, kind="controlnet", base_model=tiny_base_model_dir, modality="CT")
    with caplog.at_level(logging.WARNING, logger="medgen.generate.adapters"):
        assert _run(tmp_path, tiny_model_dir, tmp_path / "out", "--controlnet", controlnet) == 0
    assert any("was trained on base model tiny-base" in r.getMessage() for r in caplog.records)
