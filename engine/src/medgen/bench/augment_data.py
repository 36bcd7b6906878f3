"""The data of `medgen bench augment`: manifests of real and synthetic lesions, read into 2D crops.

Every set enters the bench as a batch manifest (CSV or JSONL, the columns of `medgen batch`:
``input``, ``mask``, ``prompt``, optional ``slice``, ``segment``, ``label``, ``window``, ...):

- a real (or held-out) manifest is read as it is: each row's scan and mask, on the row's slices
  (default: the slice where the mask is largest);
- a synthetic manifest is first run through `medgen batch` (the local runner, one loaded model): the
  lesion is inpainted into each row's scan under its mask, and that mask is the label of the output.

A sample's class (the classification task) is the row's prompt, so a real row and a synthetic row of
one kind must carry the same prompt; the phantom world maps its prompts to lesion types itself.

In the phantom world (no manifest given) the bench writes these manifests from known cases: real and
held-out cases with lesions, and healthy twins to inpaint into, each from its own seed stream.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medgen.errors import InputError

HELD_OUT_STREAM = 1000
"""Held-out cases are `make_case((1000, i), ...)`, the stream of `medgen bench quality`, which the demo
model's training never draws from."""
REAL_STREAM = 1001
SYNTHETIC_STREAM = 1002
PHANTOM_SLICES = 4
"""Slices per phantom case: only the lesion's largest slice is used, so a short volume is enough."""


@dataclass
class Sample:
    """One lesion-centred crop: model-space image in [-1, 1], its lesion mask and its class."""

    image: np.ndarray  # (crop, crop) float32
    mask: np.ndarray  # (crop, crop) bool: the lesion's label (for a synthetic crop, the lesion as drawn)
    label: str
    source: str  # the manifest row (and variant) it came from
    requested: np.ndarray | None = None  # a synthetic crop's request mask, kept beside the drawn label
    lesion_mean: float | None = None  # mean modality value inside the label on the full slice (HU for CT)

    @property
    def drawn_dice(self) -> float | None:
        """Dice of the drawn label against the request's mask (None for a real crop)."""
        from medgen.generate.drawn_label import dice

        return None if self.requested is None else dice(self.mask, self.requested)


def lesion_crop(image: np.ndarray, mask: np.ndarray, crop_px: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``crop_px`` square centred on the mask's centroid; edges are extended past the image border."""
    return (crop_around(image, mask, crop_px, mode="edge").astype(np.float32),
            crop_around(mask, mask, crop_px, mode="constant").astype(bool))


def crop_around(array: np.ndarray, centre_mask: np.ndarray, crop_px: int, *, mode: str) -> np.ndarray:
    """The ``crop_px`` square of ``array`` centred on ``centre_mask``'s centroid, padded by ``mode``."""
    rows, cols = np.nonzero(centre_mask)
    centre = (int(round(rows.mean())), int(round(cols.mean())))
    half = crop_px // 2
    padded = np.pad(array, half, mode=mode)
    return padded[centre[0]: centre[0] + crop_px, centre[1]: centre[1] + crop_px]


def read_row_samples(
    image_path: Path, options: dict, *, crop_px: int, label: str, source: str, drawn_from: Path | None = None
) -> list[Sample]:
    """The crops of one row: its scan (or an inpainted output on the same grid) under the row's mask,
    one per selected slice, windowed as the row says (default: the engine's window for the modality).

    ``drawn_from`` (the scan an output was inpainted into) makes the label the lesion as drawn
    (`generate.drawn_label`), the request's mask kept beside it: a training pair must not teach a
    boundary the pixels do not show. The crop stays centred on the request's mask.
    """
    from medgen.generate.drawn_label import drawn_lesion_mask
    from medgen.imaging.intensity import IntensityMap, choose_window, modality_gray
    from medgen.imaging.masks import read_mask
    from medgen.imaging.read import read_volume

    volume = read_volume(image_path)
    before = read_volume(drawn_from) if drawn_from is not None else None
    mask = read_mask(
        options["mask"], volume, segment=options.get("segment"), label=options.get("label"),
        resample=bool(options.get("resample_mask", False)),
    )
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
    slices = options.get("slices") or [int(np.argmax(areas))]
    for k in slices:
        if not 0 <= k < len(areas) or not areas[k]:
            raise InputError(options["mask"], f"the mask is empty on slice {k} of {image_path}")
    window = choose_window(
        volume, slices, preset=options.get("window"), center=options.get("window_center"),
        width=options.get("window_width"),
    )
    intensity = IntensityMap(volume, window)
    samples = []
    for k in slices:
        image, crop_mask = lesion_crop(intensity.to_model(k), mask[k], crop_px)
        values = modality_gray(volume, k)
        if before is None:
            sample = Sample(image, crop_mask, label, f"{source}:slice-{k}")
            region = mask[k]
        else:
            region = drawn_lesion_mask(modality_gray(before, k), values, mask[k])
            drawn = crop_around(region, mask[k], crop_px, mode="constant").astype(bool)
            sample = Sample(image, drawn, label, f"{source}:slice-{k}", requested=crop_mask)
        sample.lesion_mean = float(values[region].mean()) if region.any() else None
        samples.append(sample)
    return samples


def read_real_manifest(path: Path, *, crop_px: int, labels: dict[str, str] | None = None) -> list[Sample]:
    """Samples of a manifest of real scans; ``labels`` (row id -> class) overrides the prompts."""
    from medgen.batch.manifest import ManifestError, read_manifest

    manifest = read_manifest(path)
    if manifest.problems:
        raise ManifestError(manifest.path, manifest.problems, manifest.total)
    if not manifest.rows:
        raise InputError(path, "the manifest has no rows")
    samples = []
    for row in manifest.rows:
        label = (labels or {}).get(row.id, row.options["prompt"])
        samples += read_row_samples(row.options["input"], row.options, crop_px=crop_px, label=label, source=row.id)
    return samples


def run_synthetic_manifest(
    path: Path, out: Path, *, crop_px: int, model: str | None, device: str, labels: dict[str, str] | None = None,
    read_slices: dict[str, list[int]] | None = None,
) -> tuple[list[Sample], dict]:
    """Inpaint every row with `medgen batch` into ``out`` (resumable), then read each output variant on
    the row's slices (or those ``read_slices`` names for its id), labelled by the lesion as drawn (the
    row's mask kept beside it); also returns the batch run's figures."""
    from medgen.batch.index import INDEX_JSONL
    from medgen.batch.manifest import read_manifest
    from medgen.batch.run import run_batch

    with open(os.devnull, "w") as quiet:
        summary = run_batch(path, out, model=model, device=device, progress_stream=quiet)
    if not summary.ok:
        raise InputError(path, f"{summary.failed} row(s) failed to inpaint; see {Path(out) / 'failed.jsonl'}")
    rows = {row.id: row for row in read_manifest(path).rows}
    samples = []
    for text in (Path(out) / INDEX_JSONL).read_text(encoding="utf-8").splitlines():
        line = json.loads(text)
        row = rows.get(line["row_id"])
        if row is None:  # a row of an earlier manifest in the same folder
            continue
        label = (labels or {}).get(row.id, row.options["prompt"])
        options = row.options if read_slices is None else {**row.options, "slices": read_slices[row.id]}
        samples += read_row_samples(
            Path(out) / line["series_dir"], options, crop_px=crop_px, label=label,
            source=f"{row.id}:variant-{line['variant']}", drawn_from=Path(row.options["input"]),
        )
    dice = [s.drawn_dice for s in samples]
    figures = {"rows": summary.rows, "made": summary.done, "generate_s": sum(summary.generate_s),
               "start_s": summary.start_s, "workers": summary.workers,
               "drawn_vs_requested_dice": round(float(np.mean(dice)), 4) if dice else None}
    return samples, figures


# --- the phantom world --------------------------------------------------------------------------


@dataclass
class PhantomManifests:
    """Manifests the bench wrote for the phantom world, and each row's lesion type."""

    real: Path
    held_out: Path
    synthetic: dict[str, Path]  # synthetic set name -> manifest of inpainting requests
    types: dict[str, str]  # row id -> lesion type


def write_phantom_manifests(
    folder: Path,
    *,
    real_cases: int,
    held_out_cases: int,
    synthetic_cases: int,
    steps: int,
    adapters: list[str],
    token: str | None,
) -> PhantomManifests:
    """Write the phantom cases and their manifests into ``folder``.

    Real cases have the base types only (the held-out type is what a user's real data lacks); held-out
    and synthetic cases cycle through all five types. Synthetic rows inpaint the twin's true lesion
    mask into the healthy twin with the type's prompt; with ``adapters`` a second synthetic set runs
    the same rows with them (the held-out type prompted ``"<token> mass"`` when a token is given).
    """
    from medgen.phantom.lesions import BASE_TYPES, HELD_OUT_TYPES
    from medgen.phantom.quality import ALL_TYPES

    folder = Path(folder)
    types: dict[str, str] = {}
    real_rows = [_case_row(folder, "real", REAL_STREAM, i, BASE_TYPES[i % len(BASE_TYPES)], types)
                 for i in range(real_cases)]
    held_out_rows = [_case_row(folder, "held-out", HELD_OUT_STREAM, i, ALL_TYPES[i % len(ALL_TYPES)], types)
                     for i in range(held_out_cases)]
    synthetic_rows = []
    for j in range(synthetic_cases):
        row = _case_row(folder, "twin", SYNTHETIC_STREAM, j, ALL_TYPES[j % len(ALL_TYPES)], types, healthy=True)
        row.update({"seed": SYNTHETIC_STREAM * 1000 + j, "steps": steps, "window": "soft_tissue"})
        synthetic_rows.append(row)
    synthetic = {"synthetic": write_jsonl(folder / "synthetic.jsonl", synthetic_rows)}
    if adapters:
        adapted = []
        for row in synthetic_rows:
            row = {**row, "id": row["id"].replace("twin", "adapted"), "adapter": list(adapters)}
            types[row["id"]] = types[row["id"].replace("adapted", "twin")]
            if token and types[row["id"]] in {t.value for t in HELD_OUT_TYPES}:
                row["prompt"] = f"{token} mass"
                row["token"] = token
            adapted.append(row)
        synthetic["synthetic+adapter"] = write_jsonl(folder / "synthetic-adapter.jsonl", adapted)
    return PhantomManifests(
        real=write_jsonl(folder / "real.jsonl", real_rows),
        held_out=write_jsonl(folder / "held-out.jsonl", held_out_rows),
        synthetic=synthetic,
        types=types,
    )


def _case_row(folder: Path, kind: str, stream: int, i: int, lesion_type, types: dict, *, healthy: bool = False) -> dict:
    """Write one case (its scan with the lesion, or its healthy twin) and its mask; its manifest row."""
    from medgen.phantom.cases import make_case
    from medgen.phantom.lesions import LESION_SPECS
    from medgen.phantom.series import ct_datasets, write_datasets, write_seg_nrrd

    row_id = f"{kind}-{i + 1:04d}-{lesion_type.value}"
    case = make_case((stream, i), lesion_type, case_id=row_id, num_slices=PHANTOM_SLICES)
    case_dir = folder / "cases" / row_id
    scan_dir = case_dir / ("healthy" if healthy else "ct")
    if not (case_dir / "lesion.seg.nrrd").is_file():  # cases are deterministic: a kept work folder is reused
        pixels = case.healthy_hu if healthy else case.hu
        description = "PHANTOM CT healthy twin" if healthy else f"PHANTOM CT with {LESION_SPECS[lesion_type].label}"
        write_datasets(ct_datasets(case, pixels, series_number=2 if healthy else 1, description=description), scan_dir)
        write_seg_nrrd(case, case_dir / "lesion.seg.nrrd")
    types[row_id] = lesion_type.value
    largest = int(np.argmax(case.lesion_mask.reshape(PHANTOM_SLICES, -1).sum(axis=1)))
    return {
        "id": row_id,
        "input": str(scan_dir),
        "mask": str(case_dir / "lesion.seg.nrrd"),
        "slice": [largest],
        "prompt": LESION_SPECS[lesion_type].prompt,
    }


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """One JSON object per row, a manifest `medgen batch` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path
