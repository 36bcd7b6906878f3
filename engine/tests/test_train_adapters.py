"""Adapter training (textual inversion, LoRA) on the demo model: a few steps, files, plain-diffusers loading."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline
from safetensors.torch import load_file

from medgen.phantom.model import demo_model_path
from medgen.train.cli import train_main

TOKEN = "<spiculated>"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _plain_pipe():
    return StableDiffusionInpaintPipeline.from_pretrained(
        demo_model_path(), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


def _embedding(pipe, prompt: str) -> torch.Tensor:
    ids = pipe.tokenizer(pipe.maybe_convert_prompt(prompt, pipe.tokenizer), padding="max_length",
                         max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def test_textual_inversion_trains_saves_small_file_and_loads_in_plain_diffusers(tmp_path):
    out = tmp_path / "ti"
    rc = train_main(["textual-inversion", "--phantom-spiculated", "4", "--steps", "3", "--batch-size", "4",
                     "--out", str(out), "--seed", "1", "--checkpoint-every", "2", "--num-vectors", "2"])
    assert rc == 0
    weights = out / "learned_embeds.safetensors"
    assert weights.stat().st_size < 1_000_000
    learned = load_file(weights)
    assert list(learned) == [TOKEN] and learned[TOKEN].shape == (2, 64)
    manifest = json.loads((out / "adapter.json").read_text())
    assert manifest["kind"] == "textual_inversion" and manifest["token"] == TOKEN and manifest["modality"] == "CT"
    assert len(manifest["base_model"]["sha256"]) == 64 and manifest["settings"]["steps"] == 3
    assert (out / "checkpoints" / "step-2").is_dir()

    pipe = _plain_pipe()
    pipe.load_textual_inversion(out, weight_name="learned_embeds.safetensors", token=TOKEN)
    assert pipe.maybe_convert_prompt(f"{TOKEN} mass", pipe.tokenizer) == f"{TOKEN} {TOKEN}_1 mass"
    row = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids(TOKEN)]
    assert torch.allclose(row, learned[TOKEN][0])
    # trained away from its initializer ("mass"), so the prompt means something else now
    mass = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids("mass</w>")]
    assert not torch.allclose(row, mass)

    # --resume continues from the step-2 checkpoint to step 4
    rc = train_main(["textual-inversion", "--phantom-spiculated", "4", "--steps", "4", "--batch-size", "4",
                     "--out", str(tmp_path / "resumed"), "--seed", "1", "--num-vectors", "2",
                     "--resume", str(out / "checkpoints" / "step-2")])
    assert rc == 0
    assert json.loads((tmp_path / "resumed" / "adapter.json").read_text())["settings"]["steps"] == 4


def test_lora_trains_and_loads_in_plain_diffusers(tmp_path):
    out = tmp_path / "lora"
    rc = train_main(["lora", "--phantom-spiculated", "4", "--steps", "3", "--batch-size", "4", "--out", str(out),
                     "--validation-every", "3"])
    assert rc == 0
    manifest = json.loads((out / "adapter.json").read_text())
    assert manifest["kind"] == "lora" and manifest["rank"] == 4
    assert 0 < manifest["trainable_share"] < 0.02
    assert (out / "validation" / "step-3.png").is_file()

    pipe = _plain_pipe()
    before = _embedding(pipe, "spiculated mass")
    unet_in = torch.zeros(1, 9, 16, 16)
    with torch.no_grad():
        base = pipe.unet(unet_in, 500, encoder_hidden_states=before).sample
    pipe.load_lora_weights(out)
    assert pipe.get_active_adapters()
    with torch.no_grad():
        adapted = pipe.unet(unet_in, 500, encoder_hidden_states=before).sample
    assert not torch.allclose(base, adapted)  # the LoRA's up-projections are trained away from zero


def test_bad_training_table_is_a_clear_error(tmp_path, capsys):
    table = tmp_path / "train.csv"
    table.write_text("image,prompt\na.nii.gz,mass\n")
    assert train_main(["lora", "--data", str(table), "--out", str(tmp_path / "o"), "--steps", "1"]) == 2
    assert "mask" in capsys.readouterr().err


def test_tiny_trained_textual_inversion_is_usable_by_medgen_inpaint(tmp_path):
    """Train -> `medgen inpaint --adapter`: the manifest is read, the token expands, provenance records it."""
    from medgen.cli import main
    from medgen.phantom.commands import make_main

    assert main(["train", "textual-inversion", "--phantom-spiculated", "4", "--steps", "2",
                 "--out", str(tmp_path / "ti")]) == 0
    assert make_main(["--out", str(tmp_path / "cases"), "--cases", "1", "--seed", "5",
                      "--types", "spiculated", "--slices", "3"]) == 0
    case = tmp_path / "cases" / "case-001"
    out = tmp_path / "out"
    assert main(["inpaint", str(case / "healthy"), "--mask", str(case / "lesion.seg.nrrd"), "--all-slices",
                 "--prompt", "<spiculated> mass", "--adapter", str(tmp_path / "ti"), "--model",
                 str(demo_model_path()), "--steps", "2", "--seed", "1", "--out", str(out)]) == 0
    provenance = json.loads((out / "provenance.json").read_text())
    (adapter,) = provenance["adapters"]
    assert adapter["kind"] == "textual_inversion" and len(adapter["sha256"]) == 64



@pytest.mark.parametrize(
    "kind, extra",
    [
        ("textual-inversion", ["--phantom-spiculated", "8", "--learning-rate", "5e-2"]),
        ("lora", ["--phantom-spiculated", "8", "--learning-rate", "1e-2"]),
        ("controlnet", ["--phantom", "8", "--learning-rate", "1e-3"]),
    ],
)
def test_each_kind_lowers_the_loss_on_a_fixed_batch(kind, extra, tmp_path):
    """The same crops, noise and timesteps before and after 25 steps: training must have learned something."""
    out = tmp_path / kind
    assert train_main([kind, *extra, "--steps", "25", "--batch-size", "8", "--seed", "3", "--out", str(out)]) == 0
    fixed = json.loads((out / "adapter.json").read_text())["fixed_batch_loss"]
    assert fixed["after"] < 0.97 * fixed["before"], fixed


def test_controlnet_trains_resumes_and_loads_in_plain_diffusers(tmp_path):
    from diffusers import ControlNetModel, StableDiffusionControlNetInpaintPipeline

    out = tmp_path / "cn"
    args = ["controlnet", "--phantom", "6", "--batch-size", "4", "--learning-rate", "1e-3", "--seed", "2"]
    assert train_main([*args, "--steps", "4", "--checkpoint-every", "2", "--validation-every", "4",
                       "--out", str(out)]) == 0
    manifest = json.loads((out / "adapter.json").read_text())
    assert manifest["kind"] == "controlnet" and manifest["control_from"] == "mask-edges"
    assert (out / "validation" / "step-4.png").is_file() and (out / "checkpoints" / "step-2").is_dir()

    controlnet = ControlNetModel.from_pretrained(out)
    assert controlnet.config.in_channels == 4  # the ControlNet inpainting pipeline feeds it the noisy latents only
    pipe = _plain_pipe()
    control_pipe = StableDiffusionControlNetInpaintPipeline(**pipe.components, controlnet=controlnet,
                                                            requires_safety_checker=False)
    image = torch.zeros(1, 3, 64, 64)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 20:44, 20:44] = 1
    ring = torch.zeros(1, 3, 64, 64)
    ring[..., 20:44, 20] = ring[..., 20:44, 43] = ring[..., 20, 20:44] = ring[..., 43, 20:44] = 1
    result = control_pipe("hypodense cyst", image=image, mask_image=mask, control_image=ring, height=64, width=64,
                          num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    assert result.images.shape == (1, 64, 64, 3)
    with torch.no_grad():  # trained away from the zero-initialised output convolutions
        down, mid = controlnet(torch.zeros(1, 4, 16, 16), 500, encoder_hidden_states=torch.zeros(1, 77, 64),
                               controlnet_cond=ring, return_dict=False)
    assert float(mid.abs().max()) > 0

    # --resume continues from the step-2 checkpoint
    assert train_main([*args, "--steps", "4", "--resume", str(out / "checkpoints" / "step-2"),
                       "--out", str(tmp_path / "resumed")]) == 0
    resumed = ControlNetModel.from_pretrained(tmp_path / "resumed")
    for (name, a), b in zip(controlnet.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name  # same seed, same crops: the same weights at step 4


def test_controlnet_training_refuses_source_edges(capsys, tmp_path):
    with pytest.raises(SystemExit):
        train_main(["controlnet", "--phantom", "2", "--control-from", "source-edges", "--out", str(tmp_path / "o")])
    assert "source-edges" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["sd15-inpaint", "sd2-inpaint"])
def test_lora_is_under_a_thousandth_of_an_sd_sized_unet(arch):
    """The same `add_lora` training uses, on the published UNet layouts (built on the meta device: no memory)."""
    from diffusers import UNet2DConditionModel

    from medgen.generate.archs import ARCHS
    from medgen.train.lora import add_lora

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(ARCHS[arch].unet)
    total = sum(p.numel() for p in unet.parameters())
    assert total > 800_000_000
    trainable = sum(p.numel() for p in add_lora(unet, rank=4))
    assert 0 < trainable / total < 0.001


def test_training_from_a_csv_of_dicom_nrrd_and_png(tmp_path):
    """--data: rows of DICOM series + .seg.nrrd, NRRD + labelmap, and PNG + PNG mask, paths relative to the CSV."""
    import numpy as np
    import SimpleITK as sitk
    from PIL import Image

    from medgen.phantom.commands import make_main

    assert make_main(["--out", str(tmp_path / "cases"), "--cases", "1", "--seed", "5", "--slices", "3"]) == 0
    case = tmp_path / "cases" / "case-001"
    volume = sitk.ReadImage(sorted(str(p) for p in (case / "ct").glob("*.dcm")))
    sitk.WriteImage(volume, str(tmp_path / "ct.nrrd"))
    labels = np.zeros(sitk.GetArrayFromImage(volume).shape, np.uint8)
    _, height, width = labels.shape
    labels[1, height // 2 - 6 : height // 2 + 6, width // 2 - 5 : width // 2 + 7] = 1
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(volume)
    sitk.WriteImage(label_image, str(tmp_path / "ct-mask.nrrd"))
    rows, cols = np.mgrid[:96, :96]
    Image.fromarray(np.uint8(60 + rows)).save(tmp_path / "slice.png")
    Image.fromarray(np.uint8(((rows - 48) ** 2 + (cols - 40) ** 2 < 100) * 255)).save(tmp_path / "slice-mask.png")
    (tmp_path / "train.csv").write_text(
        "image,mask,prompt\n"
        "cases/case-001/ct,cases/case-001/lesion.seg.nrrd,<spiculated> mass\n"
        "ct.nrrd,ct-mask.nrrd,<spiculated> mass\n"
        "slice.png,slice-mask.png,<spiculated> mass\n"
    )
    masked_slices = int((sitk.GetArrayFromImage(sitk.ReadImage(str(case / "lesion.seg.nrrd"))) > 0)
                        .reshape(3, -1).any(axis=1).sum())

    out = tmp_path / "ti"
    assert train_main(["textual-inversion", "--data", str(tmp_path), "--steps", "2", "--batch-size", "4",
                       "--out", str(out)]) == 0
    manifest = json.loads((out / "adapter.json").read_text())
    assert manifest["num_crops"] == masked_slices + 1 + 1
    assert load_file(out / "learned_embeds.safetensors")[TOKEN].shape == (2, 64)


def test_8bit_adam_without_bitsandbytes_is_a_clear_error_before_any_work(tmp_path, capsys):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("bitsandbytes is installed here")
    out = tmp_path / "lora"
    assert train_main(["lora", "--phantom-spiculated", "2", "--optimizer", "adamw-8bit", "--out", str(out)]) == 2
    assert "pip install bitsandbytes" in capsys.readouterr().err and not out.exists()
