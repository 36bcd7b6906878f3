"""Publish what the engine wrote as the files the API serves: per variant an NRRD, a DICOM zip, a preview.

A variant's folder is built under a temporary name and renamed into place, so a client (or a restarted
server) sees a variant either complete or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from medgen.server.jobs import JobFiles

ARRAY_FILENAME = "array.nrrd"
DICOM_ZIP_FILENAME = "dicom.zip"
PREVIEW_FILENAME = "preview.png"
PROVENANCE_FILENAME = "provenance.json"


def publish_variant(files: JobFiles, index: int, engine_out: Path, variant_out: Path) -> Path:
    """Turn one engine run (its ``out`` folder and the variant folder inside) into result variant ``index``."""
    from medgen.imaging.read import read_volume

    target = files.variant_dir(index)
    staging = files.result_dir / f".{target.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    # 1. The synthetic DICOM series, zipped as written (stored, not deflated: it is fast and exact)
    dicom_files = sorted(p for p in variant_out.rglob("*") if p.is_file() and _is_dicom(p))
    with zipfile.ZipFile(staging / DICOM_ZIP_FILENAME, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in dicom_files:
            archive.write(path, arcname=path.relative_to(variant_out).as_posix())

    # 2. The variant as one NRRD in stored values on the source's grid, read back from what was written
    volume_files = [p for p in variant_out.iterdir() if p.is_file() and p.name.endswith((".nrrd", ".nii", ".nii.gz"))]
    volume = read_volume(volume_files[0] if volume_files else variant_out)
    write_nrrd(staging / ARRAY_FILENAME, volume.pixels, volume.ijk_to_lps)

    # 3. Preview and provenance beside them
    shutil.copyfile(engine_out / PREVIEW_FILENAME, staging / PREVIEW_FILENAME)
    shutil.copyfile(engine_out / PROVENANCE_FILENAME, staging / PROVENANCE_FILENAME)

    os.replace(staging, target)
    return target


def publish_summary(files: JobFiles, job_id: str, parameters: dict, num_variants: int) -> None:
    """All variants' previews stacked top to bottom, and one provenance record listing every variant."""
    from PIL import Image

    previews = [Image.open(files.variant_dir(v) / PREVIEW_FILENAME) for v in range(1, num_variants + 1)]
    width = max(image.width for image in previews)
    stacked = Image.new("RGB", (width, sum(image.height for image in previews)))
    top = 0
    for image in previews:
        stacked.paste(image.convert("RGB"), (0, top))
        top += image.height
    _atomic_save(files.result_dir / PREVIEW_FILENAME, lambda path: stacked.save(path, format="PNG"))

    record = {
        "job_id": job_id,
        "parameters": parameters,
        "variants": [
            json.loads((files.variant_dir(v) / PROVENANCE_FILENAME).read_text()) for v in range(1, num_variants + 1)
        ],
    }
    _atomic_save(files.result_dir / PROVENANCE_FILENAME, lambda path: path.write_text(json.dumps(record, indent=2)))


def discard_unfinished(files: JobFiles, variants_ready: int) -> None:
    """After a crash: drop half-built folders and any variant published after the last recorded one."""
    if not files.result_dir.is_dir():
        return
    for path in files.result_dir.iterdir():
        if path.name.endswith(".partial"):
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.startswith("variant-") and int(path.name.split("-")[1]) > variants_ready:
            shutil.rmtree(path, ignore_errors=True)


def write_nrrd(path: Path, pixels: np.ndarray, ijk_to_lps: np.ndarray) -> None:
    """Raw-encoded NRRD of a (k, j, i[, c]) array with its LPS geometry; raw so it writes and reads fast."""
    import SimpleITK as sitk

    matrix = np.asarray(ijk_to_lps, dtype=np.float64)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(pixels), isVector=pixels.ndim == 4)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (matrix[:3, :3] / spacing).flatten()])
    image.SetOrigin([float(v) for v in matrix[:3, 3]])
    image.SetMetaData("MedGenSlicer", "SYNTHETIC")
    sitk.WriteImage(image, str(path), useCompression=False)


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _atomic_save(path: Path, save) -> None:
    partial = path.with_name(f".{path.name}.partial")
    save(partial)
    os.replace(partial, path)
