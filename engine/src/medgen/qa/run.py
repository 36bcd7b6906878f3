"""A finished `medgen inpaint` run read back from its folder: source, mask, variants and provenance.

Everything the report shows is recomputed from the files the run wrote, so a report judges what is
on disk (and what a PACS would receive), not what the generator meant to write.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medgen.errors import InputError
from medgen.imaging.crop import blend_region
from medgen.imaging.intensity import Window, modality_gray
from medgen.imaging.masks import read_mask
from medgen.imaging.read import read_volume
from medgen.imaging.volume import Volume

PROVENANCE_FILENAME = "provenance.json"
VARIANT_FOLDER = re.compile(r"^variant-(\d+)$")


@dataclass
class VariantData:
    """One written variant on the source's slice grid (slices it did not write hold the source)."""

    name: str
    folder: Path
    volume: Volume
    slice_of_source: dict[int, int]  # source slice -> slice of the written volume
    prompt: str
    seed: int | None

    def modality_slice(self, k: int, source: Volume) -> np.ndarray:
        """Source slice k of this variant in modality units (HU for CT)."""
        if k not in self.slice_of_source:
            return modality_gray(source, k)
        return modality_gray(self.volume, self.slice_of_source[k])


@dataclass
class RunData:
    run_dir: Path
    provenance: dict
    source_path: Path
    source: Volume
    mask_path: Path
    mask: np.ndarray  # (slices, rows, cols) bool: the segment that was inpainted
    allowed: np.ndarray  # (slices, rows, cols) bool: the dilated mask on the inpainted slices (may change)
    slices: list[int]  # inpainted slices, ascending
    window: Window  # the window the run used, in modality units
    variants: list[VariantData]
    engine_provenance: dict | None = None  # the engine's record (a server job wraps one per variant)
    rings: dict[int, np.ndarray] = field(default_factory=dict, repr=False)  # metrics.surrounding_ring, per slice

    @property
    def engine_record(self) -> dict:
        return self.engine_provenance or self.provenance

    @property
    def parameters(self) -> dict:
        return self.engine_record.get("parameters", {})


def read_provenance_file(run_dir: Path) -> dict:
    path = Path(run_dir) / PROVENANCE_FILENAME
    if not Path(run_dir).is_dir():
        raise InputError(run_dir, "not a folder; give the --out folder of a `medgen inpaint` run")
    if not path.is_file():
        raise InputError(run_dir, f"no {PROVENANCE_FILENAME}: not the output folder of a `medgen inpaint` run")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot read the run's provenance: {exc}") from None
    if "slices_inpainted" not in record.get("parameters", {}):
        raise InputError(path, "the provenance lists no inpainted slices (parameters.slices_inpainted)")
    return record


def load_run(run_dir: str | Path, *, source: str | Path | None = None, mask: str | Path | None = None) -> RunData:
    """Read a run folder; ``source`` and ``mask`` override the paths its provenance names (moved files)."""
    run_dir = Path(run_dir)
    provenance = read_provenance_file(run_dir)
    run = _run_without_variants(run_dir, provenance, provenance, source, mask)
    run.variants = _read_variants(run_dir, provenance, run.source, run.slices)
    return run


def load_job_results(result_dir: str | Path, *, source: str | Path, mask: str | Path, scratch: str | Path) -> RunData:
    """A finished server job: its published variants (array.nrrd in stored values, dicom.zip) and the
    job's uploaded source and mask. Each variant's DICOM is unpacked under ``scratch`` for the checks."""
    import zipfile

    import SimpleITK as sitk

    result_dir = Path(result_dir)
    record = read_json(result_dir / PROVENANCE_FILENAME)
    runs = record.get("variants") or []
    if not runs or "slices_inpainted" not in runs[0].get("parameters", {}):
        raise InputError(result_dir / PROVENANCE_FILENAME, "holds no engine provenance of a variant")
    run = _run_without_variants(result_dir, record, runs[0], source, mask)
    for index, variant_record in enumerate(runs, start=1):
        folder = result_dir / f"variant-{index:02d}"
        pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "array.nrrd")))
        if pixels.shape != run.source.pixels.shape:
            raise InputError(folder, f"array.nrrd is {pixels.shape}, the source {run.source.pixels.shape}")
        unpacked = Path(scratch) / folder.name
        with zipfile.ZipFile(folder / "dicom.zip") as archive:
            archive.extractall(unpacked)
        parameters = variant_record["parameters"]
        run.variants.append(VariantData(
            name=folder.name,
            folder=unpacked,
            volume=replace(run.source, pixels=pixels.astype(run.source.pixels.dtype), datasets=[]),
            slice_of_source={k: k for k in range(run.source.num_slices)},
            prompt=(parameters.get("variant_prompts") or [parameters.get("prompt", "")])[0],
            seed=(parameters.get("seeds") or [None])[0],
        ))
    return run


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot read: {exc}") from None


def _run_without_variants(folder: Path, shown: dict, provenance: dict, source, mask) -> RunData:
    """Source, mask, inpainted slices and window from an engine provenance record."""
    parameters = provenance["parameters"]
    source_path = Path(source) if source is not None else Path(parameters.get("input", ""))
    mask_path = Path(mask) if mask is not None else Path(parameters.get("mask", ""))
    if not source_path.exists():
        raise InputError(source_path, "the run's source scan is not there; give it with --source")
    if not mask_path.exists():
        raise InputError(mask_path, "the run's mask is not there; give it with --mask")
    volume = read_volume(source_path)
    mask3d = np.asarray(
        read_mask(mask_path, volume, segment=parameters.get("segment"), label=parameters.get("label"),
                  resample=bool(parameters.get("resample_mask"))), dtype=bool
    )
    slices = sorted(int(k) for k in parameters["slices_inpainted"])
    if any(not 0 <= k < volume.num_slices for k in slices):
        raise InputError(source_path, f"the run inpainted slices {slices}, the source has {volume.num_slices}")
    radius = float(parameters.get("mask_dilate_mm", 0.0))
    allowed = np.zeros(mask3d.shape, dtype=bool)
    for k in slices:
        allowed[k] = blend_region(mask3d[k], radius, (volume.spacing[1], volume.spacing[2]))
    window = Window(float(parameters["window_center"]), float(parameters["window_width"]))
    return RunData(folder, shown, source_path, volume, mask_path, mask3d, allowed, slices, window, [],
                   engine_provenance=provenance)


def _read_variants(run_dir: Path, provenance: dict, source: Volume, slices: list[int]) -> list[VariantData]:
    parameters = provenance["parameters"]
    prompts = parameters.get("variant_prompts") or []
    seeds = parameters.get("seeds") or [v.get("seed") for v in provenance.get("variants", [])]
    folders = sorted(
        (p for p in run_dir.iterdir() if p.is_dir() and VARIANT_FOLDER.match(p.name)),
        key=lambda p: int(VARIANT_FOLDER.match(p.name).group(1)),
    )
    if not folders:
        raise InputError(run_dir, "no variant-NN folders: the run wrote no series")
    variants = []
    for folder in folders:
        index = int(VARIANT_FOLDER.match(folder.name).group(1)) - 1
        volume = read_volume(_volume_path(folder))
        if volume.num_slices == source.num_slices:
            slice_of_source = {k: k for k in range(source.num_slices)}
        elif volume.num_slices == len(slices):  # --only-modified: just the inpainted slices, in order
            slice_of_source = {k: j for j, k in enumerate(slices)}
        else:
            raise InputError(folder, f"holds {volume.num_slices} slice(s); the source has {source.num_slices} "
                             f"and the run inpainted {len(slices)}")
        if volume.shape2d != source.shape2d:
            raise InputError(folder, f"slices are {volume.shape2d}, the source's {source.shape2d}")
        variants.append(VariantData(
            name=folder.name,
            folder=folder,
            volume=volume,
            slice_of_source=slice_of_source,
            prompt=prompts[index] if index < len(prompts) else parameters.get("prompt", ""),
            seed=seeds[index] if index < len(seeds) else None,
        ))
    return variants


def _volume_path(folder: Path) -> Path:
    """A DICOM variant is read as its folder; a NIfTI/NRRD/PNG variant is the one image file in it."""
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    images = [p for p in files if p.name.endswith((".nii", ".nii.gz", ".nrrd", ".png"))]
    if len(images) == 1 and not any(p.suffix == ".dcm" for p in files):
        return images[0]
    return folder
