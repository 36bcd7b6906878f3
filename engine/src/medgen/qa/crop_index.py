"""The index of an adapter's training crops, and the nearest-crop search of the memorization check.

Training writes it into the adapter folder: ``training-crops.json`` (one record per crop: file, slice,
crop box, prompt) and ``training-crops.npz`` (``embeddings`` (N, 256) float32, ``thumbnails``
(N, 32, 32) uint8). The embedding is the crop in model space averaged down to 16 x 16, minus its
mean, scaled to unit length: the cosine of two embeddings is the correlation of two coarse crops, 1
for a copy (at any brightness offset), near 0 for unrelated tissue. numpy only, so training and the
report share it without loading anything else.
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
EMBEDDING_SIDE = 16
THUMBNAIL_SIDE = 32
COPY_THRESHOLD = 0.95
"""Cosine similarity at or above which a generated lesion crop is flagged as a possible copy of a
training crop. Unrelated phantom lesion crops reach about 0.6-0.85 (see the report's test); an exact
copy is 1.0."""


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


def crop_embedding(model_space_crop: np.ndarray) -> np.ndarray:
    """(256,) float32 unit vector of a crop in model space [-1, 1]."""
    small = _area_resize(model_space_crop, EMBEDDING_SIDE).ravel()
    small -= small.mean()
    norm = np.linalg.norm(small)
    return (small / norm if norm > 1e-9 else small).astype(np.float32)


def crop_thumbnail(model_space_crop: np.ndarray) -> np.ndarray:
    small = _area_resize(model_space_crop, THUMBNAIL_SIDE)
    return np.clip((small + 1.0) * 127.5, 0, 255).round().astype(np.uint8)


def write_crop_index(folder: str | Path, crops: np.ndarray, records: list[dict]) -> Path:
    """Write the index of ``crops`` (N, R, R) in model space with one record each; atomic per file."""
    folder = Path(folder)
    if len(crops) != len(records):
        raise ValueError(f"{len(crops)} crops but {len(records)} records")
    embeddings = np.stack([crop_embedding(c) for c in crops]) if len(crops) else np.zeros((0, EMBEDDING_SIDE**2))
    thumbnails = np.stack([crop_thumbnail(c) for c in crops]) if len(crops) else np.zeros((0, 32, 32), np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".training-crops.", suffix=".npz", dir=folder)
    with os.fdopen(fd, "wb") as f:
        np.savez_compressed(f, embeddings=embeddings.astype(np.float32), thumbnails=thumbnails)
    os.replace(tmp, folder / INDEX_NPZ)
    text = json.dumps({"schema": "medgen.training-crops/1", "embedding": f"{EMBEDDING_SIDE}x{EMBEDDING_SIDE} "
                       "mean-centred unit vector of the model-space crop", "crops": records}, indent=1)
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

    def nearest(self, model_space_crop: np.ndarray) -> tuple[int, float]:
        """(index, cosine similarity) of the training crop closest to ``model_space_crop``."""
        similarities = self.embeddings @ crop_embedding(model_space_crop)
        best = int(np.argmax(similarities))
        return best, float(similarities[best])
