"""The phantom rendered as T1 MR and as a projection radiograph (phantom.modalities), and the modality
adapters trained on those renderings: each tissue and lesion keeps the contrast its modality gives it,
and an adapter records the contract its crops were made through."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medgen.phantom.anatomy import Grid, Tissue, random_body
from medgen.phantom.dataset import draw_lesion_slice
from medgen.phantom.lesions import LesionType
from medgen.phantom.modalities import (
    make_modality_pair,
    modality_pairs,
    mr_image,
    projection,
    t1_object,
    to_model_by_percentiles,
)


def test_t1_gives_fat_above_liver_above_muscle_and_a_cyst_darker_than_its_organ():
    rng = np.random.default_rng(0)
    draw = None
    while draw is None or draw.lesion.lesion_type != LesionType.CYST or draw.healthy:
        draw = draw_lesion_slice(rng, healthy_fraction=0.0, types=(LesionType.CYST,))
    signal = t1_object(draw.with_lesion, draw.labels, draw.hu, rng)
    mean = {tissue: signal[(draw.labels == tissue) & ~draw.footprint].mean()
            for tissue in (Tissue.SUBCUTANEOUS_FAT, Tissue.LIVER, Tissue.MUSCLE)}
    assert mean[Tissue.SUBCUTANEOUS_FAT] > mean[Tissue.LIVER] > mean[Tissue.MUSCLE]
    organ = signal[(draw.labels == draw.organ) & ~draw.footprint].mean()
    assert signal[draw.footprint].mean() < organ - 0.1
    image = mr_image(signal, draw.body.blur_px, rng)
    assert image.min() >= 0  # a magnitude image: Rician, never negative
    background = image[draw.labels == Tissue.AIR]
    assert 0 < background.mean() < 0.1 * image[draw.labels == Tissue.SUBCUTANEOUS_FAT].mean()


def test_projection_is_brighter_through_the_spine_and_a_calcification_shows_in_its_footprint():
    rng = np.random.default_rng(1)
    body = random_body(rng)
    grid = Grid()
    paths, footprint = projection(body, grid, 0.0, None, 20.0)
    assert paths.shape == (81, grid.cols) and not footprint.any()
    middle = paths[:, grid.cols // 2 - 3: grid.cols // 2 + 3].mean()
    edge = paths[:, :4].mean()  # outside the body: air only
    assert middle > 4 * edge
    draw = None
    while draw is None or draw.healthy:
        draw = draw_lesion_slice(rng, healthy_fraction=0.0, types=(LesionType.CALCIFICATION,))
    with_lesion, footprint = projection(draw.body, draw.grid, draw.lesion.center_mm[2], draw.lesion, 20.0)
    without, _ = projection(draw.body, draw.grid, draw.lesion.center_mm[2], None, 20.0)
    assert footprint.any() and (with_lesion - without)[footprint].mean() > 0.5
    untouched = ~footprint.any(axis=0)  # columns no ray through the lesion reaches
    assert np.array_equal(with_lesion[:, untouched], without[:, untouched])


@pytest.mark.parametrize("modality", ["MR", "CR"])
def test_modality_pairs_are_model_space_crops_with_masks_and_repeat_by_seed(modality):
    pairs = modality_pairs(3, modality, seed=4, resolution=32)
    again = modality_pairs(3, modality, seed=4, resolution=32)
    for (crop, mask, code), (crop2, mask2, code2) in zip(pairs, again):
        assert crop.shape == mask.shape == (32, 32) and mask.any() and code >= 0
        assert -1.0 <= crop.min() and crop.max() <= 1.0 and crop.std() > 0.02
        assert np.array_equal(crop, crop2) and np.array_equal(mask, mask2) and code == code2
    with pytest.raises(ValueError):
        make_modality_pair(np.random.default_rng(0), 32, "US")


def test_percentile_map_puts_the_robust_range_on_minus_one_to_one():
    image = np.linspace(0.0, 1000.0, 10001)
    mapped = to_model_by_percentiles(image)
    assert mapped.min() == -1.0 and mapped.max() == 1.0 and abs(np.median(mapped)) < 1e-3


def test_train_lora_on_phantom_mr_records_the_mr_percentile_contract(tmp_path, phantom_model_dir):
    from medgen.train.cli import train_main

    out = tmp_path / "mr"
    assert train_main(["lora", "--phantom-mr", "8", "--steps", "2", "--batch-size", "4", "--base",
                       str(phantom_model_dir), "--out", str(out), "--device", "cpu"]) == 0
    manifest = json.loads((out / "adapter.json").read_text())
    assert manifest["modality"] == "MR" and manifest["intensity"] == {"percentiles": [0.5, 99.5]}
    assert (out / "pytorch_lora_weights.safetensors").is_file()


def test_the_models_hash_leaves_its_inner_adapters_out_but_an_adapter_folder_hashes_itself(tmp_path):
    from medgen.dicom.provenance import sha256_model

    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    (model / "unet" / "w.safetensors").write_bytes(b"base weights")
    before = sha256_model(model)
    adapter = model / "modalities" / "mr"
    adapter.mkdir(parents=True)
    (adapter / "adapter.json").write_text("{}")
    (adapter / "pytorch_lora_weights.safetensors").write_bytes(b"lora")
    assert sha256_model(model) == before  # an MR adapter trained on this base still matches it
    assert sha256_model(adapter) != before  # and is hashed on its own
    (model / "unet" / "w.safetensors").write_bytes(b"other weights")
    assert sha256_model(model) != before


def test_train_adapters_command_writes_both_adapters_and_states_them_in_medgen_json(tmp_path, phantom_model_dir):
    import shutil

    from medgen.cli import main
    from medgen.dicom.provenance import sha256_model
    from medgen.generate.settings import read_model_contracts

    model = tmp_path / "model"
    shutil.copytree(phantom_model_dir, model, ignore=shutil.ignore_patterns("modalities"))
    record = json.loads((model / "medgen.json").read_text())
    (model / "medgen.json").write_text(json.dumps({k: v for k, v in record.items() if k != "modalities"}))
    assert read_model_contracts(model).others == ()
    assert main(["phantom", "train-adapters", "--model", str(model), "--crops", "4", "--steps", "1"]) == 0
    contracts = read_model_contracts(model)
    assert [(c.modality, c.adapter) for c in contracts.others] == [("MR", "modalities/mr"), ("CR", "modalities/cr")]
    assert sorted(p.name for p in model.iterdir()) == sorted(p.name for p in phantom_model_dir.iterdir())
    assert sha256_model(model) == sha256_model(phantom_model_dir)  # the base weights are untouched
    assert main(["phantom", "train-adapters", "--model", str(tmp_path / "nothing")]) == 2
