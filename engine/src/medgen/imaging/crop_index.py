"""The index of an adapter's training crops, and the nearest-crop search of the memorization check.

Training writes it into the adapter folder: ``training-crops.json`` (one record per crop: file, slice,
crop box, prompt) and ``training-crops.npz`` (``embeddings`` (N, 256) float32, ``thumbnails``
(N, 32, 32) uint8). The embedding is the lesion in model space: the crop averaged down to 32 x 32,
every cell outside the lesion mask set to the lesion's mean, minus that mean, scaled to unit length.
The cosine of two embeddings is the correlation of two lesions' content, 1 for a copy (at any
brightness offset); the surrounding tissue, which a run keeps from its source, counts for nothing.
numpy only, so training and the report share it without loading anything else.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INDEX_JSON = "training-crops.json"
INDEX_NPZ = "training-crops.npz"
EMBEDDING_SIDE = 32
THUMBNAIL_SIDE = 32
COPY_THRESHOLD = 0.95
"""Cosine similarity at or above which a generated lesion is flagged as a possible copy of a training
crop. Measured on the demo model's phantom runs: other seeds under the same mask reach up to 0.93 (the
mask's shape is shared), unrelated phantom lesions about 0.5; an exact copy is 1.0. It flags copies,
not lesions that merely look alike."""


def _area_resize(image: np.ndarray, side: int) -> np.ndarray:
    """Average into side x side cells (edges of the cell grid spread by linear indices)."""
    image = np.asarray(image, dtype=np.float64)
    rows = np.linspace(0, image.shape[0], side + 1).round().astype(int)
    cols = np.linspace(0, image.shape[1], side + 1).round().astype(int)
    out = np.empty((side, side))
    for i in range(side):
        r0, r1 = rows[i], max(rows[i + 1], rows[i] + 1)
        for j in range(side):
            c0, c1 = cols[j], max(cols[j + 1], cols[j] + 1)
            out[i, j] = image[r0:r1, c0:c1].mean()
    return out


def crop_embedding(model_space_crop: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(1024,) float32 unit vector of the lesion under ``mask`` (default: the whole crop) in a crop in
    model space [-1, 1]."""
    small = _area_resize(model_space_crop, EMBEDDING_SIDE).ravel()
    inside = np.ones(small.shape, bool) if mask is None else _area_resize(mask, EMBEDDING_SIDE).ravel() >= 0.5
    if not inside.any():
        inside[:] = True
    small = np.where(inside, small - small[inside].mean(), 0.0)
    norm = np.linalg.norm(small)
    return (small / norm if norm > 1e-9 else small).astype(np.float32)


def crop_thumbnail(model_space_crop: np.ndarray) -> np.ndarray:
    small = _area_resize(model_space_crop, THUMBNAIL_SIDE)
    return np.clip((small + 1.0) * 127.5, 0, 255).round().astype(np.uint8)


def write_crop_index(folder: str | Path, crops: np.ndarray, masks: np.ndarray, records: list[dict]) -> Path:
    """Write the index of ``crops`` (N, R, R) in model space with their lesion ``masks`` and one record
    each; atomic per file."""
    folder = Path(folder)
    if not len(crops) == len(masks) == len(records):
        raise ValueError(f"{len(crops)} crops, {len(masks)} masks, {len(records)} records")
    embeddings = (np.stack([crop_embedding(c, m) for c, m in zip(crops, masks)]) if len(crops)
                  else np.zeros((0, EMBEDDING_SIDE**2)))
    thumbnails = np.stack([crop_thumbnail(c) for c in crops]) if len(crops) else np.zeros((0, 32, 32), np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".training-crops.", suffix=".npz", dir=folder)
    with os.fdopen(fd, "wb") as f:
        np.savez_compressed(f, embeddings=embeddings.astype(np.float32), thumbnails=thumbnails)
    os.replace(tmp, folder / INDEX_NPZ)
    text = json.dumps({"schema": "medgen.training-crops/1", "embedding": f"{EMBEDDING_SIDE}x{EMBEDDING_SIDE} "
                       "unit vector of the lesion in the model-space crop, mean-centred, zero outside the mask", "crops": records}, indent=1)
    fd, tmp = tempfile.mkstemp(prefix=".training-crops.", suffix=".json", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    os.replace(tmp, folder / INDEX_JSON)
    return folder / INDEX_JSON


@dataclass
class CropIndex:
    folder: Path
    records: list[dict]
    embeddings: np.ndarray
    thumbnails: np.ndarray

    @classmethod
    def find(cls, folder: str | Path) -> "CropIndex | None":
        """The index in ``folder`` (an adapter or model folder), None when it has none."""
        folder = Path(folder)
        if not (folder / INDEX_JSON).is_file() or not (folder / INDEX_NPZ).is_file():
            return None
        records = json.loads((folder / INDEX_JSON).read_text(encoding="utf-8"))["crops"]
        with np.load(folder / INDEX_NPZ) as arrays:
            return cls(folder, records, arrays["embeddings"], arrays["thumbnails"])

    def nearest(self, model_space_crop: np.ndarray, mask: np.ndarray | None = None) -> tuple[int, float]:
        """(index, cosine similarity) of the training crop closest to the lesion under ``mask``."""
        similarities = self.embeddings @ crop_embedding(model_space_crop, mask)
        best = int(np.argmax(similarities))
        return best, float(similarities[best])
