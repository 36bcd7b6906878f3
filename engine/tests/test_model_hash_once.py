"""The model's SHA-256 for provenance is taken once per loaded model (an Inpainter), not per request:
at Stable Diffusion size hashing the weights takes seconds. A new Inpainter hashes what is on disk."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from testfiles import dicom_testfile, write_labelmap_like
from medgen.api import Inpainter, InpaintRequest
from medgen.dicom import provenance
from medgen.imaging.read import read_volume
from medgen.phantom.model import demo_model_path

DUMMY_WEIGHTS = "extra/dummy.safetensors"
"""A weight file the pipeline never loads but the model's digest covers (every weight file does)."""


@pytest.fixture
def model_dir(tmp_path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(demo_model_path(), model)
    (model / DUMMY_WEIGHTS).parent.mkdir()
    (model / DUMMY_WEIGHTS).write_bytes(b"\x01" * 4096)
    return model


@pytest.fixture
def ct_request(tmp_path):
    source = dicom_testfile("CT_small.dcm")
    volume = read_volume(source)
    rows, cols = volume.pixels.shape[1:3]
    rr, cc = np.mgrid[:rows, :cols]
    mask = np.zeros(volume.pixels.shape[:3], np.uint8)
    mask[0] = (rr - rows // 2) ** 2 + (cc - cols // 2) ** 2 <= 36
    mask_path = write_labelmap_like(volume, mask, tmp_path / "mask.nii.gz")

    def request(name: str) -> InpaintRequest:
        return InpaintRequest(input=source, mask=mask_path, prompt="hypodense lesion", out=tmp_path / name,
                              seed=1, num_inference_steps=1, guidance_scale=1.0)

    return request


@pytest.fixture
def hashed_files(monkeypatch) -> list[str]:
    """Every file hashed from now on, in order; the digest memo of sha256_file is bypassed, so a
    request that hashes the model again reads its files again."""
    read = []
    uncached = provenance._sha256_of.__wrapped__

    def counting(path: str, size: int, mtime_ns: int) -> str:
        read.append(path)
        return uncached(path, size, mtime_ns)

    monkeypatch.setattr(provenance, "_sha256_of", counting)
    return read


def model_digest(out: Path) -> str:
    return json.loads((out / "provenance.json").read_text())["model"]["sha256"]


def test_two_requests_on_one_inpainter_hash_the_model_once(model_dir, ct_request, hashed_files):
    inpainter = Inpainter(model_dir, device="cpu")
    inpainter(ct_request("first"))
    inpainter(ct_request("second"))
    weight_reads = [path for path in hashed_files if Path(path).is_relative_to(model_dir.resolve())]
    assert weight_reads.count(str((model_dir / DUMMY_WEIGHTS).resolve())) == 1
    assert len(weight_reads) == len(set(weight_reads)) >= 4  # unet, vae, text encoder, the dummy: once each
    assert model_digest(ct_request("first").out) == model_digest(ct_request("second").out)


def test_a_changed_weight_file_under_a_new_inpainter_gets_a_new_hash(model_dir, ct_request):
    Inpainter(model_dir, device="cpu")(ct_request("before"))
    (model_dir / DUMMY_WEIGHTS).write_bytes(b"\x02" * 8192)
    Inpainter(model_dir, device="cpu")(ct_request("after"))
    before, after = model_digest(ct_request("before").out), model_digest(ct_request("after").out)
    assert before != after
    assert after == provenance.sha256_model(model_dir)
