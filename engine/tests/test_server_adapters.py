"""Adapters through the real server: offered with `medgen serve --adapter`, listed in /v1/info, applied by
name in jobs (with prompt variations), refused by unknown name. The adapters are made here: a random
textual inversion vector and an untrained (zero-output) ControlNet for the shipped phantom model."""

from __future__ import annotations

import json

import httpx
import pytest
import torch
from safetensors.torch import save_file
from test_server import assert_error, inputs, post_job, wait_for  # noqa: F401 - inputs is a fixture

from medgen.generate.adapters import write_manifest
from medgen.server.main import parse_adapter_option
from medgen.server.process import ServerProcess

TOKEN = "<liver-spot>"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, phantom_model_dir):
    from diffusers import UNet2DConditionModel

    from medgen.train.controlnet import controlnet_from_unet

    folder = tmp_path_factory.mktemp("adapters")
    ti = folder / "liver-spot"
    ti.mkdir()
    torch.manual_seed(0)
    save_file({TOKEN: torch.randn(1, 64)}, str(ti / "learned_embeds.safetensors"))
    write_manifest(ti, kind="textual_inversion", base_model=phantom_model_dir, modality="CT", token=TOKEN)
    unet = UNet2DConditionModel.from_pretrained(phantom_model_dir / "unet")
    vae_blocks = json.loads((phantom_model_dir / "vae" / "config.json").read_text())["block_out_channels"]
    controlnet_from_unet(unet, vae_scale_factor=2 ** (len(vae_blocks) - 1)).save_pretrained(folder / "edges-cn")
    return {"ti": ti, "controlnet": folder / "edges-cn"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, phantom_model_dir, adapters):
    process = ServerProcess(tmp_path_factory.mktemp("server") / "data", phantom_model_dir, "--cpu-threads", "1",
                            "--adapter", f"spot={adapters['ti']}", "--adapter", str(adapters["controlnet"]))
    process.start()
    yield process
    process.stop()


def _client(server):
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=30)


def test_adapter_options_are_read_and_checked_at_start(adapters, tmp_path):
    entry = parse_adapter_option(f"spot={adapters['ti']}")
    assert (entry.name, entry.kind, entry.token, entry.modality) == ("spot", "textual_inversion", TOKEN, "CT")
    assert parse_adapter_option(str(adapters["controlnet"])).kind == "controlnet"
    with pytest.raises(ValueError, match="no such file"):
        parse_adapter_option(str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("not an adapter")
    with pytest.raises(ValueError, match="notes.txt"):
        parse_adapter_option(str(tmp_path / "notes.txt"))


def test_info_lists_the_adapters_with_kind_and_token(server):
    with _client(server) as http:
        listed = {a["name"]: a for a in http.get("/v1/info").json()["adapters"]}
    assert set(listed) == {"spot", "edges-cn"}
    assert listed["spot"]["kind"] == "textual_inversion" and listed["spot"]["token"] == TOKEN
    assert listed["spot"]["base_model"] == "demo_model" and listed["edges-cn"]["kind"] == "controlnet"


def test_job_applies_named_adapters_and_prompt_variations(server, inputs):  # noqa: F811
    with _client(server) as http:
        created = post_job(http, inputs, prompt=f"{TOKEN} cyst", num_variants=2, num_inference_steps=2,
                           adapters=[{"name": "spot"}, {"name": "edges-cn", "weight": 0.5}],
                           control_from="mask", prompt_variations=["small", "large"])
        assert created.status_code == 202, created.text
        status = wait_for(http, created.json()["id"])
        assert status["state"] == "succeeded", status
        manifest = http.get(f"/v1/jobs/{status['id']}/result").json()
        records = [json.loads(http.get(v["provenance"]).content) for v in manifest["variants"]]
    assert [r["parameters"]["prompt"] for r in records] == [f"small {TOKEN} cyst", f"large {TOKEN} cyst"]
    kinds = {a["kind"]: a for a in records[0]["adapters"]}
    assert set(kinds) == {"textual_inversion", "controlnet"}
    assert kinds["controlnet"]["scale"] == 0.5 and kinds["controlnet"]["control_from"] == "mask"


def test_unknown_adapter_and_bad_variations_are_refused(server, inputs):  # noqa: F811
    with _client(server) as http:
        assert_error(post_job(http, inputs, adapters=[{"name": "liver-lora"}]), 400, "liver-lora", "spot", "edges-cn")
        assert_error(post_job(http, inputs, prompt_variations=["small", " "]), 400, "variation")
        assert post_job(http, inputs, control_from="sobel").status_code in (400, 422)
