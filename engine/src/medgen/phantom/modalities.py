"""The phantom seen by other scanners: a T1-weighted MR slice and a projection radiograph (X-ray).

The same bodies and lesions as the CT pairs (``dataset.draw_lesion_slice``), rendered with each
modality's contrast and noise, and mapped to model space by the percentile rule the engine uses for
sources without a fixed window (0.5-99.5 % of the image). The demo model's MR and X-ray adapters are
trained on these, so that a real MR or radiograph meets a model that has seen its kind of image.

- MR (T1): fat bright, liver grey, muscle and spleen darker, fluid and cortical bone dark, a smooth coil
  bias field, Rician noise. A lesion keeps its CT contrast's sign: a cyst is dark, an enhancing lesion
  bright (T1 after contrast), fat bright.
- X-ray: the body's attenuation summed front to back (a coronal AP projection built from axial object
  slices), blurred, with quantum noise that grows where fewer photons arrive. Lesion contrast is
  multiplied by ``XR_LESION_GAIN`` so it shows through 25 cm of abdomen the way a lung nodule shows
  against air on a chest film.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medgen.imaging.intensity import percentile_window
from medgen.phantom.anatomy import Tissue, object_slice
from medgen.phantom.dataset import crop_pair, draw_lesion_slice
from medgen.phantom.lesions import BASE_TYPES

MODALITIES = ("MR", "CR")
"""CR stands for the X-ray family (CR, DX, ...): the engine matches contracts by family."""

T1_SIGNAL = {
    Tissue.AIR: 0.0,
    Tissue.SUBCUTANEOUS_FAT: 1.0,
    Tissue.MUSCLE: 0.32,
    Tissue.VISCERAL_FAT: 0.92,
    Tissue.LIVER: 0.55,
    Tissue.SPLEEN: 0.42,
    Tissue.KIDNEY: 0.45,
    Tissue.VESSEL: 0.12,  # flow void
    Tissue.BONE: 0.08,  # cortex; marrow (fatty) is set apart below
    Tissue.BOWEL: 0.35,
    Tissue.GAS: 0.0,
    Tissue.CSF: 0.1,
}
"""Relative T1 signal per tissue (fat = 1)."""
T1_MARROW = 0.7
T1_PER_HU = 0.004
"""A lesion's T1 contrast against its organ per HU of its CT contrast (a 50 HU cyst: -0.2)."""

MU_WATER_PER_MM = 0.02
"""Linear attenuation of water at radiographic energies, per mm; tissue scales with (1 + HU / 1000)."""
XR_LESION_GAIN = 20.0
XR_HALF_HEIGHT_PX = 40
"""The projection covers this many object slices above and below the lesion's centre."""


def to_model_by_percentiles(image: np.ndarray) -> np.ndarray:
    """The engine's rule for a source without a fixed window: 0.5-99.5 % of the image span [-1, 1]."""
    window = percentile_window(image)
    return np.clip((image - window.lower) / window.width * 2.0 - 1.0, -1.0, 1.0)


def t1_object(hu: np.ndarray, labels: np.ndarray, healthy_hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """T1 signal of an object slice: per-tissue values with a little per-body jitter, fatty marrow, and
    the lesion (where ``hu`` differs from ``healthy_hu``) at its organ's signal plus its CT contrast."""
    signal = np.zeros(labels.shape, np.float64)
    for tissue, value in T1_SIGNAL.items():
        signal[labels == tissue] = value * (1.0 + rng.uniform(-0.06, 0.06))
    signal[(labels == Tissue.BONE) & (healthy_hu == 250.0)] = T1_MARROW
    lesion = hu != healthy_hu
    if lesion.any():
        organ_hu = np.median(healthy_hu[lesion])
        organ_signal = np.median(signal[lesion])
        signal[lesion] = np.clip(organ_signal + (hu[lesion] - organ_hu) * T1_PER_HU, 0.02, 1.3)
    return signal


def mr_image(signal: np.ndarray, blur_px: float, rng: np.random.Generator) -> np.ndarray:
    """Blur, a smooth coil bias field, Rician noise; scaled to 12-bit-like stored values."""
    blurred = ndimage.gaussian_filter(signal, blur_px)
    rows, cols = signal.shape
    y, x = np.mgrid[0:rows, 0:cols] / max(rows, cols)
    bias = 1.0 + 0.15 * np.sin(2.0 * x + rng.uniform(0, np.pi)) * np.cos(1.5 * y + rng.uniform(0, np.pi))
    sigma = rng.uniform(0.02, 0.04)
    real = blurred * bias + rng.normal(0.0, sigma, signal.shape)
    imaginary = rng.normal(0.0, sigma, signal.shape)
    return np.hypot(real, imaginary) * 1000.0


def projection(body, grid, z_centre: float, lesion, lesion_hu_gain: float) -> tuple[np.ndarray, np.ndarray]:
    """Line integrals of attenuation front to back over axial slices around ``z_centre``: a coronal image
    (rows: z from the head down, columns: the patient's right on the viewer's left) and the lesion's
    projected footprint."""
    from medgen.phantom.anatomy import paint_lesion

    offsets = np.arange(XR_HALF_HEIGHT_PX, -XR_HALF_HEIGHT_PX - 1, -1)  # head (higher z) at row 0
    paths = np.zeros((len(offsets), grid.cols), np.float64)
    footprint = np.zeros((len(offsets), grid.cols), bool)
    for row, offset in enumerate(offsets):
        z = z_centre + offset * grid.spacing_mm
        hu, _ = object_slice(body, z, grid)
        if lesion is not None:
            healthy = hu.copy()
            inside = paint_lesion(hu, lesion, z, grid)
            hu[inside] = healthy[inside] + (hu[inside] - healthy[inside]) * lesion_hu_gain
            footprint[row] = inside.any(axis=0)
        mu = MU_WATER_PER_MM * np.clip(1.0 + hu / 1000.0, 0.0, None)
        paths[row] = mu.sum(axis=0) * grid.spacing_mm
    return paths, footprint


def xr_image(paths: np.ndarray, blur_px: float, rng: np.random.Generator) -> np.ndarray:
    """Detector blur and quantum noise in the log domain (more noise where fewer photons arrive);
    attenuation bright, as a radiograph is read, scaled to 12-bit-like stored values."""
    blurred = ndimage.gaussian_filter(paths, blur_px)
    photons = np.exp(-(blurred - blurred.min()))
    noise = ndimage.gaussian_filter(rng.standard_normal(paths.shape), 0.7)
    noise *= rng.uniform(0.01, 0.02) / noise.std() / np.sqrt(np.clip(photons, 1e-3, None))
    return (blurred + noise) * 400.0


def make_modality_pair(rng: np.random.Generator, resolution: int, modality: str, types=BASE_TYPES):
    """One random lesion pair rendered as ``modality`` ("MR" or "CR"), in make_pair's form (crop, mask,
    lesion-type index, organ, radius), or None when the draw gave no usable lesion site."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    draw = draw_lesion_slice(rng, 0.0, types)  # adapters learn lesions: no healthy pairs
    if draw is None:
        return None
    if modality == "MR":
        image = mr_image(t1_object(draw.with_lesion, draw.labels, draw.hu, rng), draw.body.blur_px, rng)
        footprint = draw.footprint
    else:
        paths, footprint = projection(draw.body, draw.grid, draw.lesion.center_mm[2], draw.lesion, XR_LESION_GAIN)
        image = xr_image(paths, draw.body.blur_px, rng)
    if footprint.sum() < 6:
        return None
    crop, crop_mask = crop_pair(rng, to_model_by_percentiles(image), footprint, resolution)
    return crop, crop_mask, draw.type_index, int(draw.organ), draw.lesion.radius_mm


def modality_pairs(count: int, modality: str, *, seed: int, resolution: int = 64, types=BASE_TYPES):
    """``count`` lesion pairs (crop, mask, lesion-type index) of one modality (MR or CR) from one seeded
    stream."""
    rng = np.random.default_rng(seed)
    pairs = []
    while len(pairs) < count:
        pair = make_modality_pair(rng, resolution, modality, types)
        if pair is not None and pair[1].any():
            pairs.append(pair[:3])
    return pairs

