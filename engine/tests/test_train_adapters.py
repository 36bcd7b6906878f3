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


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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

