"""The model's intensity contract (medgen.json: modality + window or percentile rule), the HU-like rule
for sources that state no modality, and how a request's window is chosen from them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medgen.errors import InputError
from medgen.generate.settings import read_intensity_contract, read_recommended_settings, write_model_settings
from medgen.imaging.intensity import (
    CT_PRESETS,
    IntensityContract,
    Window,
    is_hu_like,
    recognise_modality,
    resolve_window,
)
from medgen.imaging.volume import SourceFormat, Volume

from testfiles import dicom_testfile

CT_CONTRACT = IntensityContract(modality="CT", window=Window(40, 400))


def volume_of(pixels: np.ndarray, modality: str = "OT", source_format=SourceFormat.NIFTI) -> Volume:
    pixels = np.asarray(pixels)
    n = pixels.shape[0]
    return Volume(
        pixels=pixels, spacing=(1.0, 1.0, 1.0), ijk_to_lps=np.eye(4), modality=modality, pixel_format=None,
        rescale_slope=np.ones(n), rescale_intercept=np.zeros(n), source_format=source_format, source_paths=[],
    )


def head_ct_like(rng) -> np.ndarray:
    """Air around a soft-tissue disk with a bone rim, in HU, with noise."""
    rows, cols = np.mgrid[:64, :64]
    r = np.hypot(rows - 32, cols - 32)
    hu = np.where(r < 22, 40.0, np.where(r < 26, 900.0, -1000.0)) + rng.normal(0, 10, (64, 64))
    return np.stack([hu] * 3).astype(np.int16)


def test_hu_like_rule_separates_ct_from_mr_z_scores_and_unit_images():
    rng = np.random.default_rng(0)
    ct = head_ct_like(rng)
    assert is_hu_like(ct)
    assert not is_hu_like(ct.astype(float) + 1024)  # stored values without the intercept: no air at -1000
    assert not is_hu_like(rng.uniform(0, 1200, 5000))  # an MR's arbitrary units
    assert not is_hu_like(rng.normal(0, 1, 5000))  # a z-scored image
    assert not is_hu_like(np.concatenate([ct.ravel(), [-5000]]))  # below any scanner's padding
    assert not is_hu_like(np.full(1000, -1000.0))  # air alone is no patient


def test_nifti_without_modality_is_recognised_as_ct_when_hu_like_and_says_why():
    rng = np.random.default_rng(1)
    modality, rule = recognise_modality(volume_of(head_ct_like(rng)))
    assert modality == "CT" and "HU-like" in rule
    modality, rule = recognise_modality(volume_of(rng.uniform(0, 800, (2, 32, 32)).astype(np.int16)))
    assert modality == "OT" and "not HU-like" in rule
    modality, rule = recognise_modality(volume_of(head_ct_like(rng), modality="MR"))
    assert modality == "MR" and "stated by the source" in rule


def test_contract_round_trips_through_medgen_json_and_recommended_settings_stay_separate(tmp_path):
    write_model_settings(tmp_path, {"guidance_scale": 2.0}, CT_CONTRACT)
    assert read_intensity_contract(tmp_path) == CT_CONTRACT
    assert read_recommended_settings(tmp_path) == {"guidance_scale": 2.0}
    percentile = IntensityContract(modality="MR", percentiles=(1.0, 99.0))
    write_model_settings(tmp_path, {}, percentile)
    assert read_intensity_contract(tmp_path) == percentile
    write_model_settings(tmp_path, {"num_inference_steps": 5})
    assert read_intensity_contract(tmp_path) is None


@pytest.mark.parametrize(
    "record, problem",
    [
        ({"modality": "CT"}, "no intensity mapping"),
        ({"intensity": {"window": {"center": 40}}}, "bad intensity contract"),
        ({"intensity": {"window": {"center": 40, "width": -5}}}, "width must be > 0"),
        ({"intensity": {"percentiles": [99, 1]}}, "percentiles"),
        ({"intensity": {"window": {"center": 40, "width": 400}, "percentiles": [1, 99]}}, "one of"),
        ({"intensity": {"gamma": 2}}, "bad intensity contract"),
    ],
)
def test_a_bad_contract_names_the_file_and_the_problem(tmp_path, record, problem):
    (tmp_path / "medgen.json").write_text(json.dumps(record))
    with pytest.raises(InputError) as info:
        read_intensity_contract(tmp_path)
    assert str(tmp_path / "medgen.json") in str(info.value) and problem in str(info.value)


def test_the_shipped_demo_model_states_ct_soft_tissue_and_train_base_writes_the_same_file(phantom_model_dir, tmp_path):
    from medgen.phantom.train_base import write_recommended_settings

    assert read_intensity_contract(phantom_model_dir) == CT_CONTRACT
    written = write_recommended_settings(tmp_path)
    assert json.loads(written.read_text()) == json.loads((phantom_model_dir / "medgen.json").read_text())


def test_window_comes_from_user_then_contract_then_modality_default():
    rng = np.random.default_rng(2)
    ct = volume_of(head_ct_like(rng))  # a NIfTI without modality, HU-like
    mr = volume_of(rng.uniform(0, 800, (1, 32, 32)).astype(np.int16), modality="MR")
    lung_contract = IntensityContract(modality="CT", window=Window(-600, 1500))

    choice = resolve_window(ct, [1], lung_contract)
    assert choice.window == Window(-600, 1500) and "medgen.json" in choice.window_rule
    assert choice.source_modality == "CT" and choice.to_json()["source_modality"] == "CT"
    assert resolve_window(ct, [1], None).window == CT_PRESETS["soft_tissue"]  # recognised CT, no contract
    assert resolve_window(ct, [1], lung_contract, preset="bone").window == CT_PRESETS["bone"]
    assert resolve_window(ct, [1], lung_contract, center=10, width=20).window == Window(10, 20)
    percentile = resolve_window(mr, [0], None)
    assert "percentiles" in percentile.window_rule and percentile.window.lower >= 0


def test_a_contradicting_modality_is_refused_unless_forced_then_the_sources_own_default_applies():
    rng = np.random.default_rng(3)
    mr = volume_of(rng.uniform(0, 800, (1, 32, 32)).astype(np.int16), modality="MR")
    with pytest.raises(InputError) as info:
        resolve_window(mr, [0], CT_CONTRACT, source="t1.nii")
    message = str(info.value)
    assert message.startswith("t1.nii:") and "--force-modality" in message and "CT" in message and "MR" in message
    forced = resolve_window(mr, [0], CT_CONTRACT, force_modality=True)
    assert forced.forced and forced.window != CT_CONTRACT.window and "force-modality" in forced.window_rule
    # CR and DX are one family: a CR model takes a DX
    cr_contract = IntensityContract(modality="CR", percentiles=(0.5, 99.5))
    dx = volume_of(rng.uniform(0, 4000, (1, 32, 32)).astype(np.uint16), modality="DX")
    assert not resolve_window(dx, [0], cr_contract).forced


def test_cli_refuses_an_mr_with_the_ct_demo_model_with_exit_2_and_no_output(phantom_model_dir, tmp_path, capsys):
    from medgen.cli import main
    from medgen.imaging.read import read_volume

    from testfiles import write_labelmap_like

    source = dicom_testfile("MR_small.dcm")
    volume = read_volume(source)
    mask = np.zeros(volume.pixels.shape, np.uint8)
    mask[0, 30:36, 30:36] = 1
    write_labelmap_like(volume, mask, tmp_path / "mask.nii.gz")
    out = tmp_path / "out"
    code = main(["inpaint", str(source), "--mask", str(tmp_path / "mask.nii.gz"), "--prompt", "lesion",
                 "--model", str(phantom_model_dir), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "--force-modality" in err and str(source) in err
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_help_documents_force_modality():
    from medgen.cli import build_parser

    parser = build_parser()
    inpaint = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("inpaint"))
    text = inpaint.format_help()
    assert "--force-modality" in text and "--no-noise-match" in text and "--no-slice-consistency" in text


def test_adapter_training_crops_and_manifest_follow_the_base_models_contract(tmp_path, phantom_model_dir):
    import SimpleITK as sitk

    from medgen.train.data import file_crops
    from medgen.train.loop import AdapterTrainSettings, write_manifest

    rng = np.random.default_rng(4)
    hu = head_ct_like(rng)
    sitk.WriteImage(sitk.GetImageFromArray(hu), str(tmp_path / "ct.nii.gz"))  # no modality: HU-like
    mask = np.zeros(hu.shape, np.uint8)
    mask[1, 26:38, 26:38] = 1
    sitk.WriteImage(sitk.GetImageFromArray(mask), str(tmp_path / "mask.nii.gz"))
    (tmp_path / "train.csv").write_text("image,mask,prompt\nct.nii.gz,mask.nii.gz,lesion\n")

    soft = file_crops(tmp_path, resolution=32)  # recognised CT, no contract: soft tissue
    lung = file_crops(tmp_path, resolution=32, contract=IntensityContract(modality="CT", window=Window(-600, 1500)))
    centre = slice(12, 20)
    assert abs(soft.images[0][centre, centre].mean() - 0.0) < 0.1  # 40 HU: the soft-tissue window's centre
    assert abs(lung.images[0][centre, centre].mean() - (40 + 600) / 750) < 0.1  # 40 HU in the lung window

    out = tmp_path / "adapter"
    out.mkdir()
    manifest = write_manifest(out, kind="lora", base=phantom_model_dir, settings=AdapterTrainSettings(),
                              history=[], num_crops=1)
    record = json.loads(Path(manifest).read_text())
    assert record["modality"] == "CT" and record["intensity"] == {"window": {"center": 40.0, "width": 400.0}}
