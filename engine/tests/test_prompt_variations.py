"""--prompt-variations: variants spread over adjectives, each variant reproducible from its prompt and seed."""

import json

import numpy as np
import pydicom
import pytest
from PIL import Image
from testfiles import dicom_testfile

from medgen.cli import main
from medgen.errors import InputError
from medgen.generate.prompt_variations import read_prompt_variations, variant_prompts


def test_variant_prompts_prefix_placeholder_and_cycle():
    assert variant_prompts("liver cyst", None, 2) == ["liver cyst", "liver cyst"]
    assert variant_prompts("liver cyst", ["small", "large"], 3) == ["small liver cyst", "large liver cyst", "small liver cyst"]
    assert variant_prompts("a {} liver cyst", ["septated"], 2) == ["a septated liver cyst"] * 2


def test_read_prompt_variations_file_list_and_errors(tmp_path):
    words = tmp_path / "adjectives.txt"
    words.write_text("# sizes\nsmall\n\n  large  \nlobulated\n", encoding="utf-8")
    assert read_prompt_variations(str(words)) == ["small", "large", "lobulated"]
    assert read_prompt_variations("small, rim-enhancing") == ["small", "rim-enhancing"]
    with pytest.raises(InputError, match="no such file"):
        read_prompt_variations(str(tmp_path / "missing.txt"))
    with pytest.raises(InputError, match="empty item"):
        read_prompt_variations("small,,large")
    (tmp_path / "blank.txt").write_text("# only a comment\n", encoding="utf-8")
    with pytest.raises(InputError, match="no prompt variation"):
        read_prompt_variations(str(tmp_path / "blank.txt"))


def _mask(tmp_path):
    rr, cc = np.mgrid[:128, :128]
    path = tmp_path / "mask.png"
    Image.fromarray((((rr - 64) ** 2 + (cc - 64) ** 2 <= 15**2) * 255).astype(np.uint8)).save(path)
    return path


def _inpaint(tmp_path, model, out, *extra):
    args = ["inpaint", dicom_testfile("CT_small.dcm"), "--mask", _mask(tmp_path), "--prompt", "cyst",
            "--model", model, "--steps", 2, "--out", out, *extra]
    return main([str(a) for a in args])


def _pixels(folder):
    return pydicom.dcmread(min(folder.rglob("*.dcm"))).pixel_array


def test_prompt_variations_on_tiny_random_weight_model(tiny_model_dir, tmp_path):
    out = tmp_path / "varied"
    assert _inpaint(tmp_path, tiny_model_dir, out, "--variants", 3, "--seed", 7,
                    "--prompt-variations", "small,large") == 0
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["parameters"]["variant_prompts"] == ["small cyst", "large cyst", "small cyst"]
    second = pydicom.dcmread(min((out / "variant-02").rglob("*.dcm")))
    assert second.SeriesDescription == "SYNTHETIC large cyst"
    assert "'large cyst'" in second.DerivationDescription

    # variant 2 is exactly what a plain run with its prompt and seed gives
    plain = tmp_path / "plain"
    assert _inpaint(tmp_path, tiny_model_dir, plain, "--seed", 8, "--prompt", "large cyst") == 0
    assert np.array_equal(_pixels(out / "variant-02"), _pixels(plain / "variant-01"))
    # and the prompt mattered: the same seed with the other adjective differs
    other = tmp_path / "other"
    assert _inpaint(tmp_path, tiny_model_dir, other, "--seed", 8, "--prompt", "small cyst") == 0
    assert not np.array_equal(_pixels(other / "variant-01"), _pixels(plain / "variant-01"))


def test_prompt_variations_missing_file_is_a_clear_cli_error(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert _inpaint(tmp_path, tiny_model_dir, out, "--prompt-variations", tmp_path / "nope.txt") != 0
    assert "nope.txt" in capsys.readouterr().err and not out.exists()


def test_progress_only_grows_across_prompt_groups_tiny_random_weight(tiny_model_dir, tmp_path):
    from medgen.api import Inpainter, InpaintRequest

    calls = []
    request = InpaintRequest(input=dicom_testfile("CT_small.dcm"), mask=_mask(tmp_path), prompt="cyst",
                             out=tmp_path / "out", num_variants=3, seed=1, num_inference_steps=2,
                             prompt_variations=["small", "large"])
    Inpainter(tiny_model_dir)(request, progress=lambda done, total: calls.append((done, total)))
    done = [d for d, _ in calls]
    assert done == sorted(done) and len({t for _, t in calls}) == 1
    assert calls[-1][0] == calls[-1][1] > 0
