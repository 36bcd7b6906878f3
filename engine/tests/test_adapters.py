"""Adapters on the tiny random-weight model: every file format written here by the test, then loaded."""

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from medgen.errors import InputError
from medgen.generate.adapters import AdapterSpec, load_adapters, write_manifest
from medgen.generate.inpaint import inpaint
from medgen.generate.models import load_model

HIDDEN = 32  # the tiny model's text encoder width and cross-attention dim
ATTN = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"  # a cross-attention block of the tiny UNet


@pytest.fixture
def tiny(tiny_model_dir):
    """A freshly loaded tiny random-weight model per test: adapters change the pipeline in place."""
    return load_model(tiny_model_dir, device="cpu")


def _encode(model, prompt):
    return model.pipe.encode_prompt(prompt, model.device, 1, False)[0]


def _peft_lora(path, rank=2, width=HIDDEN, seed=0):
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for proj in ("to_q", "to_k", "to_v"):
        in_features = (
            64 if proj == "to_q" else width
        )  # to_q sees the block's 64 channels, to_k/v the text
        tensors[f"unet.{ATTN}.{proj}.lora_A.weight"] = torch.randn(
            rank, in_features, generator=g
        )
        tensors[f"unet.{ATTN}.{proj}.lora_B.weight"] = torch.randn(
            64, rank, generator=g
        )
    save_file(tensors, str(path))
    return path


def _kohya_lora(path, rank=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for proj in ("to_k", "to_v"):
        prefix = "lora_unet_" + f"{ATTN}.{proj}".replace(".", "_")
        tensors[f"{prefix}.lora_down.weight"] = torch.randn(rank, HIDDEN, generator=g)
        tensors[f"{prefix}.lora_up.weight"] = torch.randn(64, rank, generator=g)
        tensors[f"{prefix}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path))
    return path


def _lora_strength(model):
    """How far the adapted cross-attention key projection is from the base one, on a fixed input."""
    layer = model.pipe.unet.get_submodule(f"{ATTN}.to_k")
    x = torch.ones(1, HIDDEN)
    with torch.no_grad():
        return (layer(x) - layer.base_layer(x)).abs().sum().item()


def test_adapter_spec_splits_weight_only_when_it_is_a_number():
    assert AdapterSpec.parse("a/b.safetensors:0.6") == AdapterSpec(
        Path("a/b.safetensors"), 0.6
    )
    assert AdapterSpec.parse("C:/x/lora.safetensors").weight == 1.0
    assert (
        str(AdapterSpec.parse("C:/x/lora.safetensors").path) == "C:/x/lora.safetensors"
    )
    assert AdapterSpec.parse("dir:name/lora.safetensors:-0.5").weight == -0.5
    with pytest.raises(InputError, match="finite"):
        AdapterSpec.parse("x.safetensors:nan")


def test_tiny_random_weight_diffusers_textual_inversion_changes_the_prompt(
    tiny, tmp_path
):
    embedding = torch.randn(HIDDEN)
    save_file({"<lesion-x>": embedding}, str(tmp_path / "learned_embeds.safetensors"))
    records = load_adapters(tiny, [str(tmp_path)])
    assert records[0]["kind"] == "textual_inversion" and records[0]["tokens"] == [
        "<lesion-x>"
    ]
    assert len(records[0]["sha256"]) == 64
    token_id = tiny.pipe.tokenizer.convert_tokens_to_ids("<lesion-x>")
    stored = tiny.pipe.text_encoder.get_input_embeddings().weight[token_id]
    torch.testing.assert_close(stored, embedding)
    assert not torch.equal(_encode(tiny, "<lesion-x> liver"), _encode(tiny, "liver"))


def test_tiny_random_weight_a1111_multi_vector_pt_with_token_override(tiny, tmp_path):
    vectors = torch.randn(4, HIDDEN)
    path = tmp_path / "cyst.pt"
    torch.save(
        {
            "string_to_param": {"*": vectors},
            "string_to_token": {"*": 265},
            "name": "cyst-emb",
            "step": 10,
        },
        path,
    )
    records = load_adapters(tiny, [path], token="<cystic>")
    assert records[0]["tokens"] == [
        "<cystic>",
        "<cystic>_1",
        "<cystic>_2",
        "<cystic>_3",
    ]
    # the prompt expands to all four vectors, on the pipeline and on the fast path's encoding
    assert tiny.pipe.maybe_convert_prompt(
        "<cystic> lung", tiny.pipe.tokenizer
    ).split() == ["<cystic>", "<cystic>_1", "<cystic>_2", "<cystic>_3", "lung"]
    ids = tiny.pipe.tokenizer.convert_tokens_to_ids(records[0]["tokens"])
    torch.testing.assert_close(
        tiny.pipe.text_encoder.get_input_embeddings().weight[ids], vectors
    )


def test_tiny_random_weight_a1111_safetensors_takes_its_token_from_the_file_name(
    tiny, tmp_path
):
    save_file(
        {"emb_params": torch.randn(2, HIDDEN)}, str(tmp_path / "nodule-ti.safetensors")
    )
    records = load_adapters(tiny, [tmp_path / "nodule-ti.safetensors"])
    assert records[0]["tokens"] == ["nodule-ti", "nodule-ti_1"]


def test_textual_inversion_of_another_width_is_a_clear_error(tiny, tmp_path):
    save_file({"<big>": torch.randn(768)}, str(tmp_path / "big.safetensors"))
    with pytest.raises(
        InputError, match=r"does not fit this model's text encoder \(width 32\)"
    ):
        load_adapters(tiny, [tmp_path / "big.safetensors"])


def test_tiny_random_weight_peft_and_kohya_loras_load_together_with_their_weights(
    tiny, tmp_path
):
    peft_file = _peft_lora(tmp_path / "peft.safetensors")
    kohya_file = _kohya_lora(tmp_path / "kohya.safetensors")
    records = load_adapters(tiny, [f"{peft_file}:0.5", f"{kohya_file}:0.0"])
    assert [r["kind"] for r in records] == ["lora", "lora"]
    assert [r["weight"] for r in records] == [0.5, 0.0]
    at_half = _lora_strength(tiny)
    assert at_half > 0
    tiny.pipe.set_adapters(["adapter_0", "adapter_1"], [1.0, 0.0])
    torch.testing.assert_close(
        torch.tensor(_lora_strength(tiny)),
        torch.tensor(2 * at_half),
        rtol=1e-4,
        atol=1e-5,
    )
    tiny.pipe.set_adapters(
        ["adapter_0", "adapter_1"], [0.0, 1.0]
    )  # the kohya file alone moves to_k too
    assert _lora_strength(tiny) > 0
    # and inpainting runs through the (rebuilt) fast path with the adapters in place
    out = inpaint(
        tiny,
        np.zeros((1, 64, 64), np.float32),
        np.ones((1, 64, 64), np.float32),
        prompt="lesion",
        seeds=[0],
        num_inference_steps=2,
    )
    assert out.shape == (1, 1, 64, 64) and np.isfinite(out).all()


def test_lora_for_another_base_is_a_clear_error(tiny, tmp_path):
    path = _peft_lora(tmp_path / "wide.safetensors", width=768)
    with pytest.raises(InputError, match="could not load the LoRA"):
        load_adapters(tiny, [path])


class _Evil:
    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_files_that_need_full_unpickling_are_refused(tiny, tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"string_to_param": {"*": _Evil()}}, f)
    with pytest.raises(InputError, match="needs full unpickling"):
        load_adapters(tiny, [path])
    torch.save(
        {"string_to_param": {"*": torch.randn(HIDDEN)}, "hook": _Evil()},
        tmp_path / "evil2.pt",
    )
    with pytest.raises(InputError, match="needs full unpickling"):
        load_adapters(tiny, [tmp_path / "evil2.pt"])


def test_names_and_kinds_are_checked_before_loading(tiny, tmp_path):
    with pytest.raises(InputError, match="no such adapter"):
        load_adapters(tiny, [tmp_path / "missing.safetensors"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="not an adapter file"):
        load_adapters(tiny, [tmp_path / "notes.txt"])
    save_file(
        {"a": torch.zeros(2), "b": torch.zeros(2)}, str(tmp_path / "odd.safetensors")
    )
    with pytest.raises(InputError, match="not a recognised adapter"):
        load_adapters(tiny, [tmp_path / "odd.safetensors"])
    save_file({"lung": torch.zeros(HIDDEN)}, str(tmp_path / "word.safetensors"))
    with pytest.raises(InputError, match="already a word"):
        load_adapters(tiny, [tmp_path / "word.safetensors"])
    save_file({"<ok>": torch.zeros(HIDDEN)}, str(tmp_path / "ok.safetensors"))
    with pytest.raises(InputError, match="takes no weight"):
        load_adapters(tiny, [f"{tmp_path / 'ok.safetensors'}:0.5"])


def test_manifest_of_another_base_model_warns(
    tiny, tiny_base_model_dir, tmp_path, caplog
):
    path = tmp_path / "ti.safetensors"
    save_file({"<m>": torch.randn(HIDDEN)}, str(path))
    manifest = write_manifest(
        path, kind="textual_inversion", base_model=tiny_base_model_dir, modality="CT"
    )
    assert (
        json.loads(manifest.read_text())["base_model"]["name"]
        == tiny_base_model_dir.name
    )
    with caplog.at_level(logging.WARNING, logger="medgen.generate.adapters"):
        records = load_adapters(tiny, [path])
    assert records[0]["modality"] == "CT"
    assert "was trained on base model" in caplog.text

    caplog.clear()
    other = load_model(tiny.path, device="cpu")
    write_manifest(path, kind="textual_inversion", base_model=tiny.path, modality="CT")
    with caplog.at_level(logging.WARNING, logger="medgen.generate.adapters"):
        load_adapters(other, [path])
    assert "was trained on base model" not in caplog.text


# --------------------------------------------------------------------------------------------------
# Prompt blending
# --------------------------------------------------------------------------------------------------


def test_parse_blend_normalises_weights_and_keeps_plain_brackets():
    from medgen.generate.prompt_blend import parse_blend

    assert parse_blend("a [healthy:1|diseased:3] liver") == [
        ("a healthy liver", 0.25),
        ("a diseased liver", 0.75),
    ]
    assert parse_blend("[x|y] [p:1|q:0]") == [
        ("x p", 0.5),
        ("x q", 0.0),
        ("y p", 0.5),
        ("y q", 0.0),
    ]
    assert parse_blend("liver [arterial phase]") == [("liver [arterial phase]", 1.0)]
    with pytest.raises(InputError, match="weights must be"):
        parse_blend("[a:-1|b:2]")
    with pytest.raises(InputError, match="empty alternative"):
        parse_blend("[a:1|:2]")


def test_tiny_random_weight_blend_of_identical_or_pure_tokens_equals_the_plain_prompt(
    tiny, tmp_path
):
    from medgen.generate.prompt_blend import encode_blended_prompt

    save_file({"<healthy>": torch.randn(HIDDEN)}, str(tmp_path / "h.safetensors"))
    save_file({"<diseased>": torch.randn(HIDDEN)}, str(tmp_path / "d.safetensors"))
    load_adapters(tiny, [tmp_path / "h.safetensors", tmp_path / "d.safetensors"])
    plain_healthy = _encode(tiny, "a <healthy> liver")
    plain_diseased = _encode(tiny, "a <diseased> liver")
    same = encode_blended_prompt(
        tiny.pipe, "a [<healthy>:0.3|<healthy>:0.7] liver", tiny.device
    )
    torch.testing.assert_close(same, plain_healthy)
    pure = encode_blended_prompt(
        tiny.pipe, "a [<healthy>:0|<diseased>:1] liver", tiny.device
    )
    torch.testing.assert_close(pure, plain_diseased)
    mixed = encode_blended_prompt(
        tiny.pipe, "a [<healthy>:0.3|<diseased>:0.7] liver", tiny.device
    )
    torch.testing.assert_close(mixed, 0.3 * plain_healthy + 0.7 * plain_diseased)


def test_tiny_random_weight_blended_prompt_reaches_both_inpaint_paths(
    tiny, tiny_base_model_dir
):
    images, masks = np.zeros((1, 64, 64), np.float32), np.ones((1, 64, 64), np.float32)

    def run(model, prompt):
        return inpaint(
            model,
            images, masks, prompt=prompt, seeds=[0], num_inference_steps=2
        )

    for model in (
        tiny,
        load_model(tiny_base_model_dir, device="cpu"),
    ):  # fast path, then diffusers' loop
        np.testing.assert_allclose(
            run(model, "[lesion:1|cyst:0] liver"), run(model, "lesion liver"), atol=1e-5
        )
        assert not np.allclose(
            run(model, "[lesion:0|cyst:1] liver"), run(model, "lesion liver"), atol=1e-5
        )


# --------------------------------------------------------------------------------------------------
# Through the CLI, into provenance and the Derivation Description
# --------------------------------------------------------------------------------------------------


def test_tiny_random_weight_cli_adapters_reach_provenance_and_derivation_description(
    tiny_model_dir, tmp_path
):
    import pydicom
    from PIL import Image
    from testfiles import dicom_testfile

    from medgen.cli import main

    mask = tmp_path / "mask.png"
    disk = np.zeros((128, 128), np.uint8)
    disk[50:78, 50:78] = 255
    Image.fromarray(disk).save(mask)
    save_file({"emb_params": torch.randn(2, HIDDEN)}, str(tmp_path / "ti.safetensors"))
    lora = _peft_lora(tmp_path / "lora.safetensors")
    out = tmp_path / "out"
    code = main(
        [
            "inpaint",
            str(dicom_testfile("CT_small.dcm")),
            "--mask",
            str(mask),
            "--model",
            str(tiny_model_dir),
            "--prompt",
            "[<lesion>:0.4|liver:0.6] mass",
            "--adapter",
            str(tmp_path / "ti.safetensors"),
            "--token",
            "<lesion>",
            "--adapter",
            f"{lora}:0.7",
            "--steps",
            "2",
            "--seed",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    provenance = json.loads((out / "provenance.json").read_text())
    assert [(a["kind"], a["weight"]) for a in provenance["adapters"]] == [
        ("textual_inversion", 1.0),
        ("lora", 0.7),
    ]
    assert provenance["adapters"][0]["tokens"] == ["<lesion>", "<lesion>_1"]
    ds = pydicom.dcmread(min((out / "variant-01").rglob("*.dcm")))
    assert (
        "ti.safetensors:1" in ds.DerivationDescription
        and "lora.safetensors:0.7" in ds.DerivationDescription
    )


def test_token_without_adapter_is_refused_before_loading(tmp_path):
    from medgen.api import InpaintRequest, check_request

    request = InpaintRequest(
        input=tmp_path, mask=tmp_path, prompt="x", out=tmp_path / "o", token="<t>"
    )
    with pytest.raises(InputError, match="no adapter was given"):
        check_request(request)
    request = InpaintRequest(
        input=tmp_path,
        mask=tmp_path,
        prompt="x",
        out=tmp_path / "o",
        adapters=[str(tmp_path / "none.safetensors:0.5")],
    )
    with pytest.raises(InputError, match="no such file"):
        check_request(request)
