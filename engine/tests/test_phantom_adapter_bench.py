"""`medgen bench quality --adapter`: the border-irregularity column, with and without an adapter."""

from __future__ import annotations

import json

import numpy as np

from medgen.phantom.cases import make_case
from medgen.phantom.commands import bench_quality_main
from medgen.phantom.lesions import LesionType, largest_slice
from medgen.phantom.quality import _dilated, disk_mask, generated_irregularity
from medgen.phantom.series import RESCALE_INTERCEPT
from medgen.train.cli import train_main


def test_irregularity_of_ground_truth_lesions_separates_spiculated():
    """A perfect generator (the lesion scan itself) scores spiculated lesions above every base type."""
    scores = {}
    for lesion_type in LesionType:
        values = []
        for i in range(4):
            case = make_case((1000, i), lesion_type)
            k = largest_slice(case.lesion_mask)
            region = _dilated(case.lesion_mask, 2.0, case.spacing)[k]
            stored = (case.hu[k] - RESCALE_INTERCEPT, case.healthy_hu[k] - RESCALE_INTERCEPT)
            values.append(generated_irregularity(*stored, region))
        scores[lesion_type] = float(np.mean(values))
    assert scores[LesionType.SPICULATED] > 0.2, scores
    assert all(scores[t] < 0.2 for t in LesionType if t != LesionType.SPICULATED), scores
    assert scores[LesionType.SPICULATED] > max(v for t, v in scores.items() if t != LesionType.SPICULATED) + 0.05


def test_disk_mask_covers_the_lesion():
    case = make_case((1000, 0), LesionType.SPICULATED)
    disks = disk_mask(case.lesion_mask)
    assert (disks | ~case.lesion_mask).all() and disks.sum() > case.lesion_mask.sum()


def test_bench_quality_with_a_textual_inversion(tmp_path):
    adapter = tmp_path / "ti"
    assert train_main(["textual-inversion", "--phantom-spiculated", "4", "--out", str(adapter), "--steps", "2",
                       "--batch-size", "2", "--device", "cpu"]) == 0
    common = ["--cases", "1", "--variants", "2", "--steps", "2", "--types", "spiculated", "--case-types",
              "spiculated", "--no-baseline", "--mask-shape", "disk"]
    assert bench_quality_main([*common, "--json", str(tmp_path / "base.json")]) == 0
    assert bench_quality_main([*common, "--adapter", str(adapter), "--token", "<spiculated>",
                               "--json", str(tmp_path / "ti.json")]) == 0
    base = json.loads((tmp_path / "base.json").read_text())
    ti = json.loads((tmp_path / "ti.json").read_text())
    assert base["settings"]["adapters"] == [] and ti["settings"]["adapters"] == [str(adapter)]
    assert ti["rows"][0]["prompt"] == "<spiculated> mass"
    for report in (base, ti):
        (row,) = report["rows"]
        assert row["prompt_type"] == "spiculated" and np.isfinite(row["irregularity"])
        assert all(np.isfinite(o["irregularity"]) for o in report["outputs"])
