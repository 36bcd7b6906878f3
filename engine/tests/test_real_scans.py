"""Real scans through the whole engine with the shipped demo model and default settings: the intensity
contract picks the window, the generated region gets the scan's own noise, its border leaves no seam,
and `medgen validate` reports both figures. Data from pydicom, pydicom-data, invesalius-examples and
mricron-data, read at test time; a test skips when its package is absent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from real_texture import CASES, run_real_case

from medgen.imaging.texture import NOISE_RATIO_BAND, SEAM_RATIO_BAND

CASE = {case.name: case for case in CASES}
QUICK = {"num_inference_steps": 4}
"""Fewer steps where the figure under test does not depend on them (the texture comes from the source);
the default-settings figures of every case are in the slow tests and in `real_texture.py`."""


@pytest.fixture(scope="module")
def demo_inpainter(phantom_model_dir):
    from medgen.api import Inpainter

    return Inpainter(phantom_model_dir, device="cpu")


def run_or_skip(inpainter, name: str, work: Path, **options):
    result = run_real_case(inpainter, CASE[name], work, **options)
    if result is None:
        pytest.skip(f"{name}: its data package is not installed")
    return result


def assert_in_bands(result):
    figures = result.texture[0]
    assert NOISE_RATIO_BAND[0] <= figures["noise_std_ratio"] <= NOISE_RATIO_BAND[1], figures
    assert SEAM_RATIO_BAND[0] <= figures["seam_strength_ratio"] <= SEAM_RATIO_BAND[1], figures
    provenance = json.loads(result.provenance_path.read_text())
    assert provenance["texture"][0]["noise_std_ratio"] == figures["noise_std_ratio"]
    return provenance


def assert_inside_the_window(result, provenance, work: Path) -> None:
    """Generated values lie inside the window the model saw, unless the source was beyond it already."""
    from medgen.imaging.crop import dilate_mask
    from medgen.imaging.intensity import modality_gray
    from medgen.imaging.masks import read_mask
    from medgen.imaging.read import read_volume

    source = read_volume(Path(provenance["inputs"][0]["path"]))
    output = read_volume(result.variant_dirs[0])
    mask = read_mask(work / "mask.nii.gz", source)
    k = result.slices[0]
    region = dilate_mask(mask[k], 2.0, source.spacing[1:])
    before, after = modality_gray(source, k)[region], modality_gray(output, k)[region]
    centre, width = provenance["parameters"]["window_center"], provenance["parameters"]["window_width"]
    lower, upper = centre - width / 2, centre + width / 2
    assert np.all((after >= np.minimum(lower, before) - 0.5) & (after <= np.maximum(upper, before) + 0.5))
    assert not np.array_equal(before, after)


def test_real_ct_default_settings_window_from_the_model_noise_and_seam_in_band(demo_inpainter, tmp_path):
    from medgen.dicom.validate import validate_paths

    result = run_or_skip(demo_inpainter, "CT_small.dcm", tmp_path)
    provenance = assert_in_bands(result)
    intensity = provenance["parameters"]["intensity"]
    assert intensity["source_modality"] == "CT" and "medgen.json" in intensity["window_rule"]
    assert (provenance["parameters"]["window_center"], provenance["parameters"]["window_width"]) == (40.0, 400.0)
    assert any("medgen.json" in note for note in result.notes)

    assert_inside_the_window(result, provenance, tmp_path)

    report = validate_paths([result.variant_dirs[0]], source=Path(provenance["inputs"][0]["path"]),
                            run_dciodvfy=False)
    texture = [c for f in report.files for c in f.checks if c.check == "texture"]
    assert texture and texture[0].status.value == "PASS" and "noise std ratio" in texture[0].message
    assert "texture " in report.table() and "seam strength ratio" in report.table()
    assert all(c.status.value == "PASS" for f in report.files for c in f.checks if c.check == "outside-mask")


def test_without_noise_matching_the_same_ct_lesion_is_found_by_its_smoothness(demo_inpainter, tmp_path):
    result = run_or_skip(demo_inpainter, "CT_small.dcm", tmp_path, match_noise=False, **QUICK)
    assert result.texture[0]["noise_std_ratio"] < NOISE_RATIO_BAND[0]


@pytest.mark.parametrize("name, adapter", [("MR_small.dcm", "modalities/mr"), ("RG1_UNCR.dcm", "modalities/cr")])
def test_real_mr_and_cr_take_the_demo_models_own_contract_and_adapter_noise_and_seam_in_band(
    demo_inpainter, tmp_path, name, adapter
):
    result = run_or_skip(demo_inpainter, name, tmp_path, **QUICK)
    provenance = assert_in_bands(result)
    intensity = provenance["parameters"]["intensity"]
    assert not intensity["modality_forced"] and "medgen.json" in intensity["window_rule"]
    assert "percentiles" in intensity["window_rule"] and intensity["model_contract"]["adapter"] == adapter
    modality_adapter = provenance["adapters"][0]
    assert modality_adapter["kind"] == "lora" and modality_adapter["from_model_contract"] == adapter
    assert provenance["texture"][0]["source_noise"][0]["nps_patches"] > 0
    assert_inside_the_window(result, provenance, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["MR_small.dcm", "RG1_UNCR.dcm"])
def test_real_mr_and_cr_default_settings_noise_and_seam_in_band(demo_inpainter, tmp_path, name):
    assert_in_bands(run_or_skip(demo_inpainter, name, tmp_path))


@pytest.mark.slow
def test_invesalius_head_ct_nifti_without_modality_is_ct_and_its_3d_lesion_in_band(demo_inpainter, tmp_path):
    result = run_or_skip(demo_inpainter, "invesalius-cranium", tmp_path)
    provenance = assert_in_bands(result)
    intensity = provenance["parameters"]["intensity"]
    assert intensity["source_modality"] == "CT" and "HU-like" in intensity["modality_rule"]
    assert provenance["parameters"]["window_width"] == 400.0 and len(result.slices) == 5


@pytest.mark.slow
def test_mricron_t1_mr_nifti_stated_as_mr_takes_the_mr_adapter_noise_and_seam_in_band(demo_inpainter, tmp_path):
    """A NIfTI states no modality; `--modality MR` picks the model's MR contract and adapter. The disk sits
    in white matter, where the untouched slice itself scores inside both bands."""
    provenance = assert_in_bands(run_or_skip(demo_inpainter, "mricron-ch2", tmp_path))
    intensity = provenance["parameters"]["intensity"]
    assert intensity["source_modality"] == "MR" and intensity["modality_rule"] == "given by the user"
    assert provenance["adapters"][0]["from_model_contract"] == "modalities/mr"


def test_ct_and_mr_requests_alternate_on_one_loaded_model_with_the_same_results_as_fresh_loads(
    phantom_model_dir, tmp_path
):
    """The MR adapter is taken off again for the next CT request instead of reloading the model, and
    neither result depends on what ran before it."""
    from medgen.api import Inpainter
    from medgen.imaging.read import read_volume

    shared = Inpainter(phantom_model_dir, device="cpu")
    model = shared.model
    runs = []
    for n, name in enumerate(["CT_small.dcm", "MR_small.dcm", "CT_small.dcm", "MR_small.dcm"]):
        runs.append((name, run_or_skip(shared, name, tmp_path / f"{n}-{name}", **QUICK)))
        assert shared.model is model, f"request {n} ({name}) loaded the model again"
    for n, (name, result) in enumerate(runs):
        fresh = run_or_skip(Inpainter(phantom_model_dir, device="cpu"), name, tmp_path / f"fresh-{n}", **QUICK)
        expected = read_volume(fresh.variant_dirs[0]).pixels
        assert np.array_equal(read_volume(result.variant_dirs[0]).pixels, expected), name
    assert "modalities/mr" in shared.adapter_key[0][0]
