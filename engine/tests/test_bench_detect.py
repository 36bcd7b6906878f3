"""`medgen bench detect` end to end at toy size (the shipped demo model, a few steps, a short training):
phantom pairs written, synthetic sets inpainted with and without each realism step, the classifier
trained per seed on its own split by case, the JSON written; the diagnosis's hybrid crops; the run
report's detectability figure. No AUC is asserted for the engine at this size; a classifier is shown
to find an obvious difference and to find none where there is none."""

import json

import numpy as np
import pytest

pytest.importorskip("monai")

from medgen.bench import detect  # noqa: E402
from medgen.cli import main  # noqa: E402

TOY = dict(cases=4, types=("cyst", "fat"), seeds=2, steps=2, train_steps=40, batch_size=8)


def _crops(count, lesion_type, offset, rng, prefix):
    crops = []
    for i in range(count):
        image = rng.normal(0.0, 0.1, (32, 32)).astype(np.float32)
        mask = np.zeros((32, 32), bool)
        mask[12:20, 12:20] = True
        image[mask] += offset
        crops.append(detect.Crop(image, f"{prefix}{i}", lesion_type, mask))
    return crops


def test_the_classifier_finds_an_obvious_difference_and_none_where_there_is_none(one_torch_thread):
    rng = np.random.default_rng(0)
    settings = detect.DetectSettings(seeds=3, train_steps=120, batch_size=16, test_fraction=0.3)
    real = _crops(24, "cyst", 0.0, rng, "case")
    obvious = [detect.Crop(c.image + np.where(c.mask, 0.8, 0.0).astype(np.float32), c.case, c.lesion_type, c.mask)
               for c in _crops(24, "cyst", 0.0, rng, "case")]
    same = _crops(24, "cyst", 0.0, rng, "case")
    assert detect.score_set(real, obvious, settings)["cyst"]["auc"] > 0.9
    assert detect.score_set(real, same, settings)["cyst"]["auc"] < 0.8


def test_split_holds_out_a_share_of_every_type_and_keeps_pairs_together():
    case_types = {f"cyst-{i}": "cyst" for i in range(10)} | {f"fat-{i}": "fat" for i in range(4)}
    held = detect.split_cases(case_types, 0.3, seed=0)
    assert sum(c.startswith("cyst") for c in held) == 3 and sum(c.startswith("fat") for c in held) == 1
    assert held == detect.split_cases(case_types, 0.3, seed=0)


def test_hybrid_crops_take_one_factor_from_the_real_crop():
    rng = np.random.default_rng(1)
    real = _crops(1, "cyst", -0.3, rng, "a")[0]
    synthetic = _crops(1, "cyst", -0.1, rng, "a")[0]
    synthetic.drawn = np.zeros_like(synthetic.mask)
    synthetic.drawn[13:19, 13:19] = True
    shifted = detect.hybrid_crop(synthetic, real, "intensity")
    assert shifted[synthetic.mask].mean() == pytest.approx(real.image[synthetic.mask].mean(), abs=1e-5)
    assert np.array_equal(shifted[~synthetic.mask], synthetic.image[~synthetic.mask])
    shaped = detect.hybrid_crop(synthetic, real, "shape")
    ring = synthetic.mask & ~synthetic.drawn
    assert np.array_equal(shaped[ring], real.image[ring])
    assert np.array_equal(shaped[synthetic.drawn], synthetic.image[synthetic.drawn])
    bordered = detect.hybrid_crop(synthetic, real, "boundary")
    assert np.array_equal(bordered[15, 12], real.image[15, 12])  # on the mask's edge
    assert bordered[16, 16] == synthetic.image[16, 16]  # deep inside
    textured = detect.hybrid_crop(synthetic, real, "texture")
    assert not np.array_equal(textured, synthetic.image)


def test_bench_detect_command_writes_per_type_auc_with_intervals(tmp_path, one_torch_thread):
    out = tmp_path / "detect.json"
    code = main(["bench", "detect", "--cases", "4", "--types", "cyst", "fat", "--seeds", "2", "--steps", "2",
                 "--train-steps", "30", "--diagnose", "--work-dir", str(tmp_path / "work"), "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    for name in ("cyst", "fat", "all"):
        figure = report["types"][name]
        assert 0.0 <= figure["low"] <= figure["auc"] <= figure["high"] <= 1.0
    assert set(report["ablations"]) == set(detect.ABLATIONS)
    assert set(report["diagnosis"]["factors"]) == set(detect.FACTORS)
    assert report["diagnosis"]["gaps"]["fat"]["real_mean_value"] < -20  # fat reads as fat in HU
    # each ablation really ran with its step off: the requests say so, and the outputs differ
    requests = [json.loads(line) for line in (tmp_path / "work" / "requests-no-noise-matching.jsonl").read_text().splitlines()]
    assert requests and all(r["match-noise"] is False for r in requests)
    from medgen.imaging.read import read_volume

    engine = read_volume(tmp_path / "work" / "batch-engine" / "rows" / "cyst-001" / "variant-01").pixels
    plain = read_volume(tmp_path / "work" / "batch-no-noise-matching" / "rows" / "cyst-001" / "variant-01").pixels
    assert not np.array_equal(engine, plain)
    # the real crops are the scans with their lesions, the requests inpaint the healthy twins
    reals = [json.loads(line) for line in (tmp_path / "work" / "real.jsonl").read_text().splitlines()]
    assert [r["id"] for r in reals] == [r["id"] for r in requests]
    assert all(r["input"].endswith("/ct") for r in reals) and all(r["input"].endswith("/healthy") for r in requests)


def test_bench_detect_refuses_bad_settings_before_any_work(tmp_path, capsys):
    from medgen.errors import InputError

    with pytest.raises(InputError, match="--cases must be at least 4"):
        detect.run_detect_bench(detect.DetectSettings(cases=2), work_dir=tmp_path)
    with pytest.raises(InputError, match="go together"):
        detect.run_detect_bench(detect.DetectSettings(real_manifest=str(tmp_path / "x.csv")), work_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_run_report_gives_detectability_against_real_lesions(tmp_path, phantom_model_dir, one_torch_thread):
    from medgen.api import inpaint
    from medgen.phantom.cases import make_case
    from medgen.phantom.lesions import largest_slice
    from medgen.phantom.series import ct_datasets, write_datasets, write_seg_nrrd

    rows = []
    for i in range(4):
        case = make_case((79, i), "cyst", num_slices=4)
        folder = tmp_path / f"real-{i}"
        write_datasets(ct_datasets(case, case.hu, series_number=1, description="PHANTOM CT"), folder / "ct")
        write_seg_nrrd(case, folder / "lesion.seg.nrrd")
        rows.append({"id": f"real-{i}", "input": str(folder / "ct"), "mask": str(folder / "lesion.seg.nrrd"),
                     "prompt": "hypodense cyst", "slice": [largest_slice(case.lesion_mask)]})
    manifest = tmp_path / "real.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    twin = make_case((79, 9), "cyst", num_slices=4)
    write_datasets(ct_datasets(twin, twin.healthy_hu, series_number=2, description="PHANTOM twin"), tmp_path / "twin")
    write_seg_nrrd(twin, tmp_path / "twin.seg.nrrd")
    inpaint(tmp_path / "twin", tmp_path / "twin.seg.nrrd", prompt="hypodense cyst", out=tmp_path / "run",
            model=phantom_model_dir, device="cpu", slices=twin.lesion_slices, num_variants=2, seed=1,
            num_inference_steps=2, window="soft_tissue")
    assert main(["report", str(tmp_path / "run"), "--real-manifest", str(manifest), "--detect-seeds", "2"]) == 0
    page = (tmp_path / "run" / "report.html").read_text()
    assert "detectability" in page and "classifier AUC" in page and "real.jsonl" in page


def test_your_own_manifests_run_the_same_bench(tmp_path, one_torch_thread):
    """Real lesions and synthetic requests as `medgen batch` manifests: rows with the same id are one case."""
    settings = detect.DetectSettings(cases=4, types=("fat",), seeds=2, steps=2, train_steps=20)
    real, requests, _ = detect.write_phantom_manifests(tmp_path / "mine", settings)
    manifest_settings = detect.DetectSettings(seeds=2, steps=2, train_steps=20, ablations=False,
                                              real_manifest=str(real), synthetic_manifest=str(requests))
    report = detect.run_detect_bench(manifest_settings, work_dir=tmp_path / "work")
    assert set(report["types"]) == {"fat", "all"}  # the prompt names the type (a phantom prompt: its type)
    assert report["ablations"] == {}
    # an ablation copies the request manifest with its column set, every other column kept
    switched = detect._with_switches(requests, {"match_noise": False, "mask_dilate_mm": 6.0}, tmp_path / "s.jsonl")
    rows = [json.loads(line) for line in switched.read_text().splitlines()]
    original = [json.loads(line) for line in requests.read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in original]
    for row, before in zip(rows, original):
        assert row["match-noise"] is False and row["mask-dilate"] == 6.0
        assert row["slice"] == before["slice"] and row["seed"] == before["seed"] and row["prompt"] == before["prompt"]
