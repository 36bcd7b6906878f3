"""`medgen bench augment` end to end at toy size: phantom sets built (synthetic lesions inpainted by the
shipped demo model through `medgen batch`), MONAI networks trained, metrics computed, table printed,
JSON written; the same on manifests; refusals. No gain is asserted: at this size there is none to see."""

import json
import math

import numpy as np
import pytest

pytest.importorskip("monai")

from medgen.bench import augment  # noqa: E402
from medgen.bench import augment_data  # noqa: E402
from medgen.cli import main  # noqa: E402

TOY = dict(real=(4,), synthetic=(3,), seeds=2, held_out=5, steps=2, train_steps=6, batch_size=4, device="cpu")


@pytest.fixture(scope="module")
def toy_sets(tmp_path_factory):
    """The phantom sets of a toy run, built once into a kept work folder (later runs reuse it)."""
    import torch

    folder = tmp_path_factory.mktemp("augment")
    settings = augment.AugmentSettings(**TOY)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the command does: on a busy 2-core machine more threads wait for each other
    try:
        return folder, augment.build_sets(settings, folder)
    finally:
        torch.set_num_threads(before)


def test_phantom_sets_hold_real_held_out_and_inpainted_lesions(toy_sets):
    folder, sets = toy_sets
    assert [s.label for s in sets.real] == ["cyst", "hyperdense", "calcification", "fat"]
    assert [s.label for s in sets.held_out] == ["cyst", "hyperdense", "calcification", "fat", "spiculated"]
    synthetic = sets.synthetic["synthetic"]
    assert [s.label for s in synthetic] == ["cyst", "hyperdense", "calcification"]
    for sample in sets.real + sets.held_out + synthetic:
        assert sample.image.shape == sample.mask.shape == (32, 32)
        assert sample.image.dtype == np.float32 and -1.0 <= sample.image.min() <= sample.image.max() <= 1.0
        centred = sample.requested if sample.requested is not None else sample.mask
        assert centred[16, 16] or centred[14:18, 14:18].any()  # centred on the lesion
    # each synthetic crop is the healthy twin with a lesion inpainted under its mask: read the twin's
    # own crop and check the inside changed while far outside stayed the same
    rows = [json.loads(line) for line in (folder / "synthetic.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["steps"] == 2 for r in rows)
    for row, sample in zip(rows, synthetic):
        twin = augment_data.read_row_samples(
            row["input"], {"mask": row["mask"], "slices": row["slice"], "window": "soft_tissue"},
            crop_px=32, label=row["prompt"], source=row["id"],
        )[0]
        np.testing.assert_array_equal(twin.mask, sample.requested)  # the request's mask, kept beside the label
        # the label is the lesion as drawn: where the output departs from the twin beyond the noise
        assert sample.mask.any() and sample.drawn_dice is not None
        inside = np.abs(sample.image - twin.image)[sample.mask].mean()
        assert inside > 0.02, f"{row['id']}: nothing was inpainted under the mask"
        assert np.array_equal(sample.image[:2], twin.image[:2])  # the crop's top rows lie far outside the mask
    assert sets.batch["synthetic"]["made"] == 3


@pytest.mark.parametrize("task", ["segment", "classify"])
def test_every_arm_trains_and_is_scored_on_the_held_out_crops(toy_sets, task, one_torch_thread):
    _, sets = toy_sets
    settings = augment.AugmentSettings(**{**TOY, "task": task})
    records = augment.run_arms(sets, settings)
    arms = sorted((r["arm"], r["real"], r["synthetic"], r["seed"]) for r in records)
    assert arms == sorted([("real", 4, 0, s) for s in (0, 1)] + [("real+synthetic", 4, 3, s) for s in (0, 1)]
                          + [("synthetic", 0, 3, s) for s in (0, 1)])
    for r in records:
        assert 0.0 <= r["score"] <= 1.0
        assert "spiculated" in r["per_class"]
    # the same seed and data train the same network: a rerun gives the same figure
    again = augment.score_arm(sets.real, sets, settings, seed=0)
    first = next(r for r in records if r["arm"] == "real" and r["seed"] == 0)
    assert again["score"] == pytest.approx(first["score"], abs=1e-6)
    rows = augment.summarize(records, sets, settings)
    assert len(rows) == 1 and rows[0]["real_only"]["n"] == 2
    assert rows[0]["gain"]["mean"] == pytest.approx(rows[0]["real_plus_synthetic"]["mean"] - rows[0]["real_only"]["mean"])
    # the gain over the types the real set holds (the four base types), paired per seed
    assert rows[0]["base_types"] == ["calcification", "cyst", "fat", "hyperdense"]

    def base_mean(arm, seed):
        record = next(r for r in records if r["arm"] == arm and r["seed"] == seed)
        return np.mean([record["per_class"][t] for t in rows[0]["base_types"]])

    expected = np.mean([base_mean("real+synthetic", s) - base_mean("real", s) for s in (0, 1)])
    assert rows[0]["base_types_gain"]["mean"] == pytest.approx(expected)


def test_interval_and_paired_p_against_hand_figures():
    figure = augment.interval([1.0, 2.0, 3.0])
    assert figure["mean"] == 2.0
    assert figure["high"] - 2.0 == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)  # t(0.975, 2) sd/sqrt(n)
    assert math.isnan(augment.interval([0.5])["low"])
    # differences 1, 1, 1.5: t = 1.1667 / (0.2887 / sqrt(3)) = 7.0 with 2 degrees of freedom
    assert augment.paired_p([1.0, 2.0, 3.5], [0.0, 1.0, 2.0]) == pytest.approx(0.019804, abs=1e-5)
    assert math.isnan(augment.paired_p([1.0], [0.0]))


def test_command_prints_the_table_and_writes_the_json(toy_sets, tmp_path, capsys):
    folder, _ = toy_sets
    out = tmp_path / "report.json"
    code = main(["bench", "augment", "--real", "4", "--synthetic", "3", "--seeds", "2", "--held-out", "5",
                 "--steps", "2", "--train-steps", "6", "--batch-size", "4", "--device", "cpu",
                 "--work-dir", str(folder), "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "N real" in printed and "p (paired t)" in printed and "spiculated*" in printed
    row_line = next(line for line in printed.splitlines() if line.startswith("4 "))
    assert row_line.split()[1:3] == ["synthetic", "3"]
    report = json.loads(out.read_text())
    assert len(report["records"]) == 6 and report["rows"][0]["real"] == 4
    assert report["sets"] == {"real": 4, "held_out": 5, "classes": sorted(augment_data_types()),
                              "synthetic": {"synthetic": 3}, "batch": report["sets"]["batch"]}
    assert report["sets"]["batch"]["synthetic"]["made"] == 0  # the kept work folder's rows were reused
    assert report["table"] in printed


def augment_data_types():
    return ["calcification", "cyst", "fat", "hyperdense", "spiculated"]


def test_own_manifests_run_through_the_same_pipeline(toy_sets, tmp_path, capsys):
    folder, _ = toy_sets
    code = main(["bench", "augment", "--task", "classify", "--real-manifest", str(folder / "real.jsonl"),
                 "--synthetic-manifest", str(folder / "synthetic.jsonl"), "--test-manifest",
                 str(folder / "held-out.jsonl"), "--synthetic", "3", "--seeds", "2", "--train-steps", "6",
                 "--batch-size", "4", "--device", "cpu", "--work-dir", str(folder), "--json", str(tmp_path / "r.json")])
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    # without --real, every real training crop; classes are the prompts
    assert report["rows"][0]["real"] == 4
    assert "hypodense cyst" in report["sets"]["classes"]
    assert all(0.0 <= r["score"] <= 1.0 for r in report["records"])
    assert "spiculated*" not in capsys.readouterr().out


def test_without_a_test_manifest_whole_rows_are_held_out(toy_sets, tmp_path):
    folder, _ = toy_sets
    code = main(["bench", "augment", "--real-manifest", str(folder / "held-out.jsonl"), "--synthetic-manifest",
                 str(folder / "synthetic.jsonl"), "--test-fraction", "0.4", "--synthetic", "2", "--seeds", "1",
                 "--train-steps", "2", "--batch-size", "2", "--device", "cpu", "--work-dir", str(folder),
                 "--json", str(tmp_path / "r.json")])
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["sets"]["real"], report["sets"]["held_out"]) == (3, 2)
    assert math.isnan(report["rows"][0]["p_value"])  # one seed: no test


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--crop", "20"], "--crop must be a multiple of 8"),
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--real-manifest", "real.jsonl"], "--real-manifest and --synthetic-manifest go together"),
        (["--real-manifest", "nope.csv", "--synthetic-manifest", "nope.csv"], "nope.csv: no such manifest file"),
    ],
)
def test_bad_options_exit_2_with_one_line(arguments, message, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["bench", "augment", *arguments, "--json", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert not out.exists()
