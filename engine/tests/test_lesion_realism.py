"""Two realism steps found by `medgen bench detect --diagnose`: the lesion's edge blurred like the scan's
own edges (where the blend region leaves room), and its mean calibrated to what real lesions of the
prompted type measure (the model's medgen.json table)."""

import json

import numpy as np
import pytest
from scipy import ndimage

from medgen.errors import InputError
from medgen.generate.calibration import calibrate_lesion, match_prompt, read_table, variant_target
from medgen.generate.edge_spread import EdgeSpread, fit_edge, has_room, match_edge_spread, measure_edge_spread


def _disc(shape=(96, 96), centre=(48, 48), radius=12.0):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return np.hypot(rows - centre[0], cols - centre[1]) <= radius


@pytest.mark.parametrize("sigma", [0.8, 1.5, 2.5])
def test_the_edge_spread_of_a_blurred_scan_is_measured(sigma):
    rng = np.random.default_rng(0)
    objects = np.where(_disc(radius=30), 60.0, -100.0)
    objects[_disc(centre=(30, 60), radius=6)] = 200.0  # another organ near the mask
    image = ndimage.gaussian_filter(objects, sigma) + rng.normal(0.0, 3.0, objects.shape)
    mask = _disc(centre=(55, 40), radius=5)
    spread = measure_edge_spread(image, mask, noise_std=3.0)
    assert spread is not None and spread.edges >= 3
    assert spread.sigma_px == pytest.approx(sigma, rel=0.25)


def test_a_flat_scan_has_no_edge_to_measure():
    rng = np.random.default_rng(1)
    image = rng.normal(50.0, 5.0, (64, 64))
    assert measure_edge_spread(image, _disc((64, 64), (32, 32), 5), noise_std=5.0) is None


def test_the_lesion_edge_is_blurred_to_the_scans_only_where_the_region_has_room():
    mask = _disc(radius=8)
    background = np.zeros(mask.shape)
    signal = np.where(mask, 1.0, 0.0)
    spread = EdgeSpread(1.5, 20)
    tight = ndimage.binary_dilation(mask, iterations=1)
    assert not has_room(mask, tight, spread)
    assert np.array_equal(match_edge_spread(signal, background, mask, spread, tight), signal)
    roomy = ndimage.binary_dilation(mask, iterations=6)
    assert has_room(mask, roomy, spread)
    matched = match_edge_spread(signal, background, mask, spread, roomy)
    assert np.array_equal(matched[~roomy], signal[~roomy])  # nothing changes outside the region
    sigma, step = fit_edge(matched, (48, 56), (0.0, 1.0))  # across the right-hand border
    assert sigma == pytest.approx(1.5, abs=0.35) and step < -0.8
    assert matched[48, 58] > 0.05  # the lesion spills past its mask as a real one does


def test_the_calibration_table_is_checked_and_read(tmp_path):
    table = read_table({"lesion_intensity": {"cyst": {"phrases": ["cyst", "simple cyst"], "modality": "ct",
                                                      "mean": 5, "std": 3}}}, tmp_path / "medgen.json")
    assert table["cyst"].modality == "CT" and table["cyst"].mean == 5.0
    for bad, words in (({"cyst": {"phrases": [], "modality": "CT", "mean": 5}}, "phrases"),
                       ({"cyst": {"phrases": ["cyst"], "modality": "CT"}}, "numeric mean"),
                       ({"cyst": {"phrases": ["cyst"], "modality": "CT", "mean": 5, "std": -1}}, "std >= 0"),
                       ({"cyst": {"phrases": ["cyst"], "mean": 5}}, "modality")):
        with pytest.raises(InputError, match=words) as raised:
            read_table({"lesion_intensity": bad}, tmp_path / "medgen.json")
        assert "medgen.json" in str(raised.value)


def test_the_longest_phrase_of_the_sources_modality_picks_the_type(phantom_model_dir):
    from medgen.generate.calibration import read_model_table
    from medgen.phantom.lesions import BASE_TYPES, LESION_SPECS

    table = read_model_table(phantom_model_dir)
    assert sorted(table) == sorted(t.value for t in BASE_TYPES)  # the held-out type: never seen, not calibrated
    for lesion_type in BASE_TYPES:
        assert table[lesion_type.value].mean == LESION_SPECS[lesion_type].hu
    assert match_prompt("hypodense fatty nodule in the liver, 2 cm", table, "CT").name == "fat"
    assert match_prompt("Calcified granuloma", table, "CT").name == "calcification"
    assert match_prompt("spiculated mass", table, "CT") is None
    assert match_prompt("hypodense liver lesion, 2 cm", table, "CT").name == "cyst"  # an organ word inside
    assert match_prompt("fat containing mass in the spleen", table, "CT").name == "fat"
    assert match_prompt("hypodense area near a large old lesion", table, "CT") is None  # too far apart
    assert match_prompt("hypodense cyst", table, "MR") is None
    assert variant_target(table["cyst"], 3) == variant_target(table["cyst"], 3)
    spread = [variant_target(table["hyperdense"], seed) for seed in range(200)]
    assert np.std(spread) == pytest.approx(table["hyperdense"].std, rel=0.2)


def test_calibration_scales_the_lesion_to_its_target_and_keeps_its_shape():
    mask = _disc(radius=8)
    allowed = ndimage.binary_dilation(mask, iterations=2)
    background = np.full(mask.shape, 0.1)
    profile = ndimage.gaussian_filter(mask.astype(float), 1.0)
    signal = background - 0.3 * profile
    tip = background - 0.1 * profile  # the lesion's fainter end, on the next slice
    calibrated, calibrated_tip = calibrate_lesion([signal, tip], [background, background], [mask, mask],
                                                  [allowed, allowed], target_model=-0.5)
    core = ndimage.binary_erosion(mask)
    assert np.concatenate([calibrated[core], calibrated_tip[core]]).mean() == pytest.approx(-0.5, abs=1e-9)
    ratio = (calibrated - background)[allowed] / (signal - background)[allowed]
    assert np.allclose(ratio, ratio[0])  # scaled, so the border profile keeps its shape
    tip_ratio = (calibrated_tip - background)[allowed] / (tip - background)[allowed]
    assert np.allclose(tip_ratio, ratio[0])  # one factor for the lesion: the tip stays fainter
    assert np.array_equal(calibrated[~allowed], signal[~allowed])


def test_a_calcification_reaches_its_attenuation_beyond_the_window(tmp_path, phantom_model_dir):
    from medgen.api import Inpainter, InpaintRequest, run_alone
    from medgen.imaging.intensity import modality_gray
    from medgen.imaging.read import read_volume
    from medgen.phantom.cases import make_case
    from medgen.phantom.series import ct_datasets, write_datasets, write_seg_nrrd

    case = make_case((95, 1), "calcification", num_slices=5)
    write_datasets(ct_datasets(case, case.healthy_hu, series_number=2, description="twin"), tmp_path / "ct")
    write_seg_nrrd(case, tmp_path / "mask.seg.nrrd")
    inpainter = Inpainter(phantom_model_dir, device="cpu")
    means = {}
    for calibrate in (True, False):
        out = tmp_path / f"out-{calibrate}"
        result = run_alone(inpainter, InpaintRequest(
            input=tmp_path / "ct", mask=tmp_path / "mask.seg.nrrd", prompt="calcification", out=out,
            slices=case.lesion_slices, seed=5, num_inference_steps=6, window="soft_tissue",
            calibrate_intensity=calibrate))
        k = case.lesion_slices[len(case.lesion_slices) // 2]
        means[calibrate] = modality_gray(read_volume(out / "variant-01"), k)[case.lesion_mask[k]].mean()
        assert json.loads(result.provenance_path.read_text())["parameters"]["calibrate_intensity"] is calibrate
    assert means[False] < 250  # the model alone stops at the soft-tissue window's top
    assert means[True] > 400  # a calcification measures hundreds of HU


def test_the_blend_region_leaves_the_edge_at_least_two_pixels_of_room():
    from medgen.imaging.crop import MIN_BLEND_PX, blend_region, dilate_mask

    mask = _disc((40, 40), (20, 20), 5)
    coarse = blend_region(mask, 2.0, (2.8, 2.8))  # 2 mm is under one pixel here
    assert np.array_equal(coarse, dilate_mask(mask, MIN_BLEND_PX * 2.8, (2.8, 2.8)))
    assert coarse.sum() > dilate_mask(mask, 2.0, (2.8, 2.8)).sum()
    fine = blend_region(mask, 2.0, (0.5, 0.5))  # four pixels: the millimetres rule
    assert np.array_equal(fine, dilate_mask(mask, 2.0, (0.5, 0.5)))
    assert np.array_equal(blend_region(mask, 0.0, (2.8, 2.8)), mask)  # no dilation asked: none given
