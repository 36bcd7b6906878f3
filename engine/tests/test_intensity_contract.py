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


def test_the_shipped_demo_model_states_ct_mr_and_cr_and_train_base_writes_the_same_file(phantom_model_dir, tmp_path):
    from medgen.generate.settings import read_model_contracts
    from medgen.phantom.train_base import MODALITY_ADAPTERS, write_recommended_settings

    assert read_intensity_contract(phantom_model_dir) == CT_CONTRACT
    contracts = read_model_contracts(phantom_model_dir)
    assert [(c.modality, c.percentiles, c.adapter) for c in contracts.others] == [
        ("MR", (0.5, 99.5), "modalities/mr"), ("CR", (0.5, 99.5), "modalities/cr")]
    for modality, folder in MODALITY_ADAPTERS.items():  # each adapter says what it was trained on
        manifest = json.loads((phantom_model_dir / folder / "adapter.json").read_text())
        assert manifest["kind"] == "lora" and manifest["modality"] == modality
        assert manifest["intensity"] == {"percentiles": [0.5, 99.5]}
        assert manifest["fixed_batch_loss"]["after"] < manifest["fixed_batch_loss"]["before"]
    from medgen.phantom.train_base import lesion_intensity_table

    assert json.loads(write_recommended_settings(tmp_path).read_text()) == {  # no adapters in tmp_path: CT only
        **read_recommended_settings(phantom_model_dir), **CT_CONTRACT.to_json(),
        "lesion_intensity": lesion_intensity_table()}
    for folder in MODALITY_ADAPTERS.values():
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "adapter.json").write_text("{}")
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


def ct_only_model(phantom_model_dir: Path, folder: Path) -> Path:
    """The demo model's files (linked, not copied) under a medgen.json that states CT alone."""
    folder.mkdir()
    for part in ("model_index.json", "scheduler", "tokenizer", "text_encoder", "unet", "vae"):
        (folder / part).symlink_to(phantom_model_dir / part)
    write_model_settings(folder, read_recommended_settings(phantom_model_dir), CT_CONTRACT)
    return folder


def test_cli_refuses_an_mr_with_a_ct_only_model_with_exit_2_and_no_output(phantom_model_dir, tmp_path, capsys):
    from medgen.cli import main
    from medgen.imaging.read import read_volume

    from testfiles import write_labelmap_like

    model = ct_only_model(phantom_model_dir, tmp_path / "ct-model")

    source = dicom_testfile("MR_small.dcm")
    volume = read_volume(source)
    mask = np.zeros(volume.pixels.shape, np.uint8)
    mask[0, 30:36, 30:36] = 1
    write_labelmap_like(volume, mask, tmp_path / "mask.nii.gz")
    out = tmp_path / "out"
    code = main(["inpaint", str(source), "--mask", str(tmp_path / "mask.nii.gz"), "--prompt", "lesion",
                 "--model", str(model), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "--force-modality" in err and str(source) in err
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_help_documents_force_modality():
    from medgen.cli import build_parser

    parser = build_parser()
    inpaint = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("inpaint"))
    text = inpaint.format_help()
    assert "--force-modality" in text and "--no-noise-match" in text and "--slice-consistency" in text


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


def _model_with_modalities(folder: Path, modalities: dict) -> Path:
    """A medgen.json with the CT contract and further modalities (adapter folders made empty-but-present)."""
    folder.mkdir(exist_ok=True)
    for record in modalities.values():
        if "adapter" in record:
            (folder / record["adapter"]).mkdir(parents=True, exist_ok=True)
    record = {**CT_CONTRACT.to_json(), "modalities": modalities}
    (folder / "medgen.json").write_text(json.dumps(record))
    return folder


def test_a_model_with_several_modalities_gives_each_source_its_own_contract_and_adapter(tmp_path):
    from medgen.generate.settings import read_model_contracts

    model = _model_with_modalities(tmp_path / "model", {
        "MR": {"intensity": {"percentiles": [0.5, 99.5]}, "adapter": "modalities/mr"},
        "CR": {"intensity": {"percentiles": [1, 99]}},
    })
    contracts = read_model_contracts(model)
    assert contracts.main == CT_CONTRACT and [c.modality for c in contracts.others] == ["MR", "CR"]
    rng = np.random.default_rng(5)
    mr = volume_of(rng.uniform(0, 800, (1, 32, 32)).astype(np.int16), modality="MR")
    choice = resolve_window(mr, [0], contracts)
    assert not choice.forced and choice.adapter == "modalities/mr" and "percentiles 0.5-99.5" in choice.window_rule
    dx = volume_of(rng.uniform(0, 4000, (1, 32, 32)).astype(np.uint16), modality="DX")  # the X-ray family
    dx_choice = resolve_window(dx, [0], contracts)
    assert dx_choice.adapter is None and dx_choice.contract.percentiles == (1.0, 99.0)
    ct = resolve_window(volume_of(head_ct_like(rng)), [1], contracts)
    assert ct.window == CT_CONTRACT.window and ct.adapter is None
    us = volume_of(rng.uniform(0, 255, (1, 32, 32)).astype(np.uint8), modality="US")
    with pytest.raises(InputError) as info:
        resolve_window(us, [0], contracts, source="probe.dcm")
    assert "US" in str(info.value) and "CT" in str(info.value) and "MR" in str(info.value)
    assert resolve_window(us, [0], contracts, force_modality=True).adapter is None  # forced: no adapter


def test_a_source_without_modality_gets_no_hu_window_and_may_state_its_modality(tmp_path):
    from medgen.generate.settings import read_model_contracts

    model = _model_with_modalities(tmp_path / "model", {
        "MR": {"intensity": {"percentiles": [0.5, 99.5]}, "adapter": "modalities/mr"}})
    t1 = volume_of(np.random.default_rng(6).uniform(0, 800, (1, 32, 32)).astype(np.int16))  # a NIfTI, not HU-like
    unknown = resolve_window(t1, [0], read_model_contracts(model))
    assert unknown.source_modality == "OT" and unknown.window != CT_CONTRACT.window and unknown.adapter is None
    assert "percentiles" in unknown.window_rule and "--modality" in unknown.window_rule
    stated = resolve_window(t1, [0], read_model_contracts(model), stated_modality="mr")
    assert stated.source_modality == "MR" and stated.modality_rule == "given by the user"
    assert stated.adapter == "modalities/mr"


@pytest.mark.parametrize(
    "modalities, problem",
    [
        ({"MR": {"intensity": {"percentiles": [0.5, 99.5]}, "adapter": "missing"}}, "missing"),
        ({"MR": {"intensity": {"percentiles": [0.5, 99.5]}, "adapter": "../elsewhere"}}, "inside the model folder"),
        ({"DX": {"intensity": {"percentiles": [1, 99]}}, "CR": {"intensity": {"percentiles": [1, 99]}}}, "family"),
        ({"MR": {"adapter": "x"}}, "no intensity mapping"),
        ({"MR": "percentiles"}, "must be an object"),
    ],
)
def test_bad_modalities_in_medgen_json_name_the_file_and_the_problem(tmp_path, modalities, problem):
    from medgen.generate.settings import read_model_contracts

    (tmp_path / "medgen.json").write_text(json.dumps({**CT_CONTRACT.to_json(), "modalities": modalities}))
    with pytest.raises(InputError) as info:
        read_model_contracts(tmp_path)
    assert str(tmp_path / "medgen.json") in str(info.value) and problem in str(info.value)
