"""The run report's detectability figure: can a classifier tell this run's lesions from real ones?

The same classifier as `medgen bench detect`, on the run's own crops: every inpainted slice of every
variant against the real lesions of a manifest (the `medgen batch` format: input, mask, optional
slice), all windowed as the run was. Each seed holds out its own share of the real rows and of the
synthetic (variant, slice) crops; the AUC is the mean over the seeds with a 95% interval. A run of a
few slices gives a wide interval: the figure says so rather than hiding it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medgen.errors import InputError

REAL, SYNTHETIC = "real lesions", "this run's lesions"
"""The two groups each seed's split draws from on its own, so both are always scored."""


def run_detectability(run, real_manifest: str | Path, *, seeds: int = 5, crop_px: int = 32,
                      train_steps: int = 300) -> dict:
    """{"auc", "low", "high", "seeds", "real_crops", "synthetic_crops", "manifest"} for one run."""
    from medgen.bench.augment_data import lesion_crop
    from medgen.bench.detect import Crop, DetectSettings, score_set

    real = _real_crops(Path(real_manifest), run.window, crop_px)
    center, width = run.window.center, run.window.width
    synthetic = []
    for variant in run.variants:
        for k in run.slices:
            if not run.mask[k].any():
                continue
            values = variant.modality_slice(k, run.source)
            image = np.clip((values - center) / (width / 2.0), -1.0, 1.0)
            crop, crop_mask = lesion_crop(image, run.mask[k], crop_px)
            synthetic.append(Crop(crop, f"{variant.name}:slice-{k}", SYNTHETIC, crop_mask))
    if len(real) < 2 or len(synthetic) < 2:
        raise InputError(real_manifest, f"detectability needs at least two real and two synthetic crops, got "
                         f"{len(real)} real and {len(synthetic)} from the run")
    settings = DetectSettings(seeds=seeds, crop_px=crop_px, train_steps=train_steps)
    figure = score_set(real, synthetic, settings)["all"]
    return {**{k: figure[k] for k in ("auc", "low", "high")}, "seeds": seeds, "real_crops": len(real),
            "synthetic_crops": len(synthetic), "manifest": str(real_manifest)}


def _real_crops(manifest_path: Path, window, crop_px: int) -> list:
    """The manifest's real lesions, each on its largest (or listed) slice, in the run's window."""
    from medgen.batch.manifest import ManifestError, read_manifest
    from medgen.bench.augment_data import read_row_samples
    from medgen.bench.detect import Crop

    manifest = read_manifest(manifest_path)
    if manifest.problems:
        raise ManifestError(manifest.path, manifest.problems, manifest.total)
    crops = []
    for row in manifest.rows:
        options = {**row.options, "window": None, "window_center": window.center, "window_width": window.width}
        for sample in read_row_samples(row.options["input"], options, crop_px=crop_px, label=REAL, source=row.id):
            crops.append(Crop(sample.image, sample.source, REAL, sample.mask))
    return crops
