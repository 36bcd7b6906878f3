"""Training crops for adapters: model-space images, lesion masks and prompts, as the engine crops them.

Two sources: held-out phantom lesions (spiculated masses the demo model never saw), made with the same
`make_pair` as the base model's data, and a folder or CSV of image, mask and prompt read with the same
`imaging` code (read, window, crop, resize) that inference uses.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medgen.errors import InputError
from medgen.phantom.lesions import LesionType

DEFAULT_CROP_PADDING_PX = 16
"""Padding around the mask when cropping files: the demo model's inference padding (phantom.model)."""


@dataclass
class AdapterCrops:
    """N model-space crops (N, R, R) in [-1, 1], their inpaint regions (N, R, R) bool, one prompt each,
    and for a ControlNet the control images (N, R, R) in [0, 1]."""

    images: np.ndarray
    masks: np.ndarray
    prompts: list[str]
    controls: np.ndarray | None = None
    # where each crop came from (file, slice, crop box, or phantom seed): the adapter's training-crop index
    origins: list[dict] | None = None
    # the intensity contract the crops were made through, when it is not the base model's
    contract: object | None = None

    def __len__(self) -> int:
        return len(self.images)


def phantom_lesion_crops(
    count: int,
    *,
    prompt: str | None,
    lesion_types: tuple[LesionType, ...] = (LesionType.SPICULATED,),
    seed: int = 0,
    resolution: int = 64,
) -> AdapterCrops:
    """``count`` crops of phantom lesions of the given types: healthy tissue outside the mask, the lesion
    inside. Every crop gets ``prompt``, or with None its own type's prompt (the base model's words)."""
    from medgen.phantom.dataset import make_pair
    from medgen.phantom.lesions import LESION_SPECS

    types = tuple(LesionType(t) for t in lesion_types)
    rng = np.random.default_rng(seed)
    images = np.zeros((count, resolution, resolution), np.float32)
    masks = np.zeros((count, resolution, resolution), bool)
    prompts, origins = [], []
    while len(prompts) < count:
        pair = make_pair(rng, resolution, healthy_fraction=0.0, types=types)
        if pair is None or not pair[1].any():
            continue
        images[len(prompts)], masks[len(prompts)] = pair[0], pair[1]
        prompts.append(prompt if prompt is not None else LESION_SPECS[types[pair[2]]].prompt)
        origins.append({"file": f"phantom (seed {seed}, crop {len(origins)})", "slice": None, "crop_box": None,
                        "prompt": prompts[-1]})
    return AdapterCrops(images, masks, prompts, origins=origins)


def phantom_modality_crops(count: int, modality: str, *, seed: int = 0, resolution: int = 64) -> AdapterCrops:
    """``count`` crops of the four base phantom lesion types rendered as ``modality`` (MR or CR, see
    ``phantom.modalities``), each with its type's prompt: what a modality adapter for the demo model
    learns from. The crops are mapped by the percentile rule, which becomes the adapter's contract."""
    from medgen.imaging.intensity import PERCENTILE_RANGE, IntensityContract
    from medgen.phantom.lesions import BASE_TYPES, LESION_SPECS
    from medgen.phantom.modalities import modality_pairs

    pairs = modality_pairs(count, modality, seed=seed, resolution=resolution)
    prompts = [LESION_SPECS[LesionType(BASE_TYPES[code])].prompt for _, _, code in pairs]
    origins = [{"file": f"phantom {modality} (seed {seed}, crop {n})", "slice": None, "crop_box": None,
                "prompt": prompt} for n, prompt in enumerate(prompts)]
    return AdapterCrops(
        np.stack([p[0] for p in pairs]).astype(np.float32), np.stack([p[1] for p in pairs]), prompts,
        origins=origins, contract=IntensityContract(modality=modality, percentiles=PERCENTILE_RANGE),
    )


def with_controls(crops: AdapterCrops, kind: str, *, max_dilate_px: int, seed: int = 0) -> AdapterCrops:
    """ControlNet training crops: the control image from each lesion mask (as `medgen inpaint` makes it
    from the segment), and the inpaint region that mask dilated by 0..``max_dilate_px`` pixels, so the
    ControlNet learns to keep the lesion to the outline inside a larger region.

    "source-edges" is refused: training images hold the lesion, the sources it would see do not.
    """
    from medgen.generate.control import control_image
    from medgen.imaging.crop import dilate_mask

    if kind not in ("mask-edges", "mask"):
        raise ValueError(f"ControlNet training makes control images from the mask: 'mask-edges' or 'mask', got {kind!r}")
    rng = np.random.default_rng(seed)
    controls = np.stack([control_image(image, mask, kind) for image, mask in zip(crops.images, crops.masks)])
    radii = rng.integers(0, max_dilate_px + 1, size=len(crops))
    regions = np.stack([dilate_mask(mask, float(r), (1.0, 1.0)) for mask, r in zip(crops.masks, radii)])
    return AdapterCrops(crops.images, regions, crops.prompts, controls.astype(np.float32), crops.origins)


def read_training_table(data: str | Path) -> list[tuple[Path, Path, str]]:
    """Rows (image, mask, prompt) from a CSV with those columns, or from DIR/train.csv.

    Relative paths are relative to the CSV's folder.
    """
    data = Path(data)
    table = data / "train.csv" if data.is_dir() else data
    if not table.is_file():
        raise InputError(data, "expected a CSV with columns image,mask,prompt (or a folder holding train.csv)")
    rows = []
    with table.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"image", "mask", "prompt"} - set(reader.fieldnames or [])
        if missing:
            raise InputError(table, f"CSV lacks column(s) {', '.join(sorted(missing))}; got {reader.fieldnames}")
        for row in reader:
            rows.append((table.parent / row["image"], table.parent / row["mask"], row["prompt"].strip()))
    if not rows:
        raise InputError(table, "CSV has no rows")
    return rows


def file_crops(
    data: str | Path, *, resolution: int, crop_padding_px: int = DEFAULT_CROP_PADDING_PX, contract=None
) -> AdapterCrops:
    """Every masked slice of every row, read, windowed and cropped as `medgen inpaint` does: through the
    base model's intensity ``contract`` (its medgen.json) when it has one, else the engine's default
    for the file's recognised modality."""
    from medgen.imaging.crop import mask_crop_box, resize_image, resize_mask
    from medgen.imaging.intensity import IntensityMap, resolve_window
    from medgen.imaging.masks import read_mask
    from medgen.imaging.read import read_volume

    images, masks, prompts, origins = [], [], [], []
    for image_path, mask_path, prompt in read_training_table(data):
        volume = read_volume(image_path)
        # a training row's mask may come from another series of the study: resampled, as it always was
        mask3d = np.asarray(read_mask(mask_path, volume, resample=True), dtype=bool)
        slices = [int(k) for k in np.nonzero(mask3d.reshape(len(mask3d), -1).any(axis=1))[0]]
        window = resolve_window(volume, slices, contract, source=str(image_path)).window  # as inference
        intensity = IntensityMap(volume, window)
        for k in slices:
            box = mask_crop_box(mask3d[k], crop_padding_px)
            crop = resize_image(intensity.to_model(k)[box.slices], (resolution, resolution))
            images.append(np.clip(crop, -1.0, 1.0))
            masks.append(resize_mask(mask3d[k][box.slices], (resolution, resolution)))
            prompts.append(prompt)
            origins.append({"file": str(image_path), "slice": k, "prompt": prompt,
                            "crop_box": [box.row0, box.row1, box.col0, box.col1]})
    if not images:
        raise InputError(Path(data), "no masked slice in any row")
    return AdapterCrops(np.stack(images).astype(np.float32), np.stack(masks).astype(bool), prompts, origins=origins)
