"""Give a generated region the source's own noise texture, so a reader cannot find it by smoothness.

For each slice the source's noise is measured in homogeneous tissue around the mask: its standard
deviation (of the high-pass residual, `imaging.texture.highpass`) and its noise power spectrum (NPS),
averaged over square patches of that residual that do not touch the pasted region and hold no
edge. Then the generated crop keeps only its low-pass (the lesion's signal; the model's own texture,
usually too smooth, is dropped) and gets new noise shaped by the measured NPS:

    out = w * signal(generated) + (1 - w) * source + a * sqrt(w * (2 - w)) * n

(``a`` is sigma less what texture the signal keeps of its own, in quadrature)

with w the feathered blend weight and n unit noise of the NPS's texture. In the feathered zone the
source's own residual (weight 1 - w) and the new noise add up to exactly sigma, so no halo of lower
noise surrounds the region; where w = 0 nothing is added, which keeps outside pixels bit-identical.
Same for CT (quantum noise), MR (thermal, Rician in magnitude images) and CR/DX (quantum and
structure noise): each is measured on its own image, not assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal

from medgen.imaging.texture import NOISE_MEDIAN_PX, highpass, noise_std, robust_std, surround_ring

NPS_PATCH_PX = 16
"""Side of the square patches the NPS is averaged over (smaller on small images)."""
SIGNAL_SMOOTH_SIGMA_PX = 0.7
"""Gaussian sigma (pixels) that rounds off the median's small steps in the generated signal."""
MAX_SLICE_CORRELATION = 0.95
"""Noise shared with the previous slice is capped here, so every slice keeps some noise of its own."""
HOMOGENEOUS_FACTOR = 1.5
"""A patch counts as homogeneous tissue when its residual std is at most this times the median patch's."""


@dataclass
class NoiseTexture:
    """One slice's measured noise: robust residual std (model space) and a convolution kernel that
    turns white noise into noise with the measured NPS; ``patches`` = 0 means no homogeneous patch was
    found and the kernel is a delta (white noise)."""

    std: float
    kernel: np.ndarray
    patches: int

    def describe(self) -> dict:
        return {"noise_std_model": round(float(self.std), 6), "nps_patches": int(self.patches)}


def measure_noise_texture(source_values: np.ndarray, mask: np.ndarray, dilated: np.ndarray) -> NoiseTexture:
    """The noise std in the tissue ring around ``dilated`` and the NPS of homogeneous patches near it.

    ``source_values`` are the slice in model units before the window's clip (a linear map of modality
    values), so tissue just outside the window still shows its true noise.
    """
    # 1. Std in the surrounding ring: the same ring `measure_texture` compares against
    source_values = np.asarray(source_values, dtype=np.float64)
    residual = highpass(source_values)
    ring = surround_ring(mask, dilated)
    std = noise_std(source_values, ring if np.count_nonzero(ring) >= 16 else ~dilated, residual)
    if not np.isfinite(std):
        std = 0.0

    # 2. NPS from homogeneous patches close to the region
    size = int(min(NPS_PATCH_PX, max(4, min(source_values.shape) // 4)))
    patches = _homogeneous_patches(source_values, residual, dilated, size)
    if not patches:
        kernel = np.zeros((3, 3))
        kernel[1, 1] = 1.0
        return NoiseTexture(std, kernel, 0)
    taper = np.outer(np.hanning(size + 2)[1:-1], np.hanning(size + 2)[1:-1])
    nps = np.mean([np.abs(np.fft.fft2(_detrend(p) * taper)) ** 2 for p in patches], axis=0)
    amplitude = np.sqrt(nps)
    amplitude[0, 0] = 0.0  # zero mean
    kernel = np.fft.fftshift(np.real(np.fft.ifft2(amplitude)))
    norm = np.sqrt(np.sum(kernel**2))
    if norm <= 0:
        kernel = np.zeros((3, 3))
        kernel[1, 1] = 1.0
        return NoiseTexture(std, kernel, 0)
    return NoiseTexture(std, kernel / norm, len(patches))


def _detrend(patch: np.ndarray) -> np.ndarray:
    """The patch minus its least-squares plane: anatomy's slow gradients are not noise."""
    rows, cols = np.mgrid[: patch.shape[0], : patch.shape[1]]
    design = np.column_stack([np.ones(patch.size), rows.ravel(), cols.ravel()])
    coefficients, *_ = np.linalg.lstsq(design, patch.ravel(), rcond=None)
    return patch - (design @ coefficients).reshape(patch.shape)


def _homogeneous_patches(values, residual, dilated, size: int, max_patches: int = 64) -> list[np.ndarray]:
    """Patches of the image nearest the region that avoid it (and a 2-pixel gap) and whose residual is
    not much rougher than the median patch's (edges, bone, vessels)."""
    forbidden = ndimage.binary_dilation(dilated, iterations=2)
    rows, cols = np.nonzero(dilated)
    centre = np.array([rows.mean(), cols.mean()])
    step = max(size // 2, 2)
    candidates = []
    for r in range(0, residual.shape[0] - size + 1, step):
        for c in range(0, residual.shape[1] - size + 1, step):
            if forbidden[r : r + size, c : c + size].any():
                continue
            distance = np.hypot(r + size / 2 - centre[0], c + size / 2 - centre[1])
            candidates.append((distance, r, c))
    candidates.sort()
    chosen = [(r, c) for _, r, c in candidates[: max_patches * 2]]
    if not chosen:
        return []
    roughness = np.array([residual[r : r + size, c : c + size].std() for r, c in chosen])
    limit = HOMOGENEOUS_FACTOR * np.median(roughness)
    return [values[r : r + size, c : c + size] for (r, c), s in zip(chosen, roughness) if s <= limit][:max_patches]


def synthesize_noise(texture: NoiseTexture, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Noise of the measured texture, scaled so that its high-pass residual has robust std 1."""
    pad = max(texture.kernel.shape)
    white = rng.standard_normal((shape[0] + 2 * pad, shape[1] + 2 * pad))
    noise = signal.fftconvolve(white, texture.kernel, mode="same")[pad:-pad, pad:-pad]
    scale = robust_std(highpass(noise))
    return noise / scale if scale > 0 else noise


def slice_noise_correlation(values: np.ndarray, neighbour: np.ndarray, region: np.ndarray) -> float:
    """Correlation of the noise of two adjacent slices over ``region`` (0 when it cannot be measured):
    thin or overlapping reconstructions share noise between neighbours, and so must the generated noise."""
    a, b = highpass(values)[region], highpass(neighbour)[region]
    if a.size < 16 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.clip(np.corrcoef(a, b)[0, 1], 0.0, MAX_SLICE_CORRELATION))


def generated_signal(generated: np.ndarray, median_px: int = 3) -> np.ndarray:
    """The lesion's signal without most of the model's own texture: a ``median_px`` median (3 keeps edges
    and lesions of a few pixels; 5, the noise measure's own size, removes all the texture it counts),
    lightly smoothed. What texture remains is counted by `retexture`."""
    median = ndimage.median_filter(np.asarray(generated, dtype=np.float64), size=median_px, mode="reflect")
    return ndimage.gaussian_filter(median, SIGNAL_SMOOTH_SIGMA_PX, mode="reflect")


def retexture(
    source_model: np.ndarray,
    signal_crop: np.ndarray,
    weights: np.ndarray,
    texture: NoiseTexture,
    rng: np.random.Generator,
    box: tuple[slice, slice],
    source_unclipped: np.ndarray | None = None,
    noise: np.ndarray | None = None,
) -> np.ndarray:
    """The blended model-space slice: the generated ``signal_crop`` (inside ``box``) with the source's
    noise texture (see the module doc). Clipped to the window the model saw, [-1, 1], except where the
    source itself lies beyond it (``source_unclipped``): there noise may reach down (or up) to the
    source's own value, so tissue at the window's edge keeps its full noise. ``noise`` (the box's
    shape) is a field from `synthesize_noise` made by the caller (to share it between slices); None
    draws one from ``rng``. Outside the weights nothing changes."""
    blended = np.asarray(source_model, dtype=np.float64).copy()
    src = blended[box]
    w = np.asarray(weights, dtype=np.float64)[box]
    noise = synthesize_noise(texture, src.shape, rng) if noise is None else np.asarray(noise, dtype=np.float64)
    # this realisation, not just the field on average, has the measured std where it matters: inside
    # the region (a small region holds few independent noise grains, so one draw can be 30 % off)
    core = w >= 1.0 if np.count_nonzero(w >= 1.0) >= 16 else w > 0
    realised = robust_std(highpass(noise)[core]) if core.any() else 1.0
    if realised > 0:
        noise = noise / realised
    # the signal keeps a little texture of its own: add only what it lacks of the source's noise
    own = noise_std(np.asarray(signal_crop, dtype=np.float64), core) if np.count_nonzero(core) >= 16 else 0.0
    added = np.sqrt(max(texture.std**2 - (own if np.isfinite(own) else 0.0) ** 2, 0.0))
    amplitude = added * np.sqrt(np.clip(w * (2.0 - w), 0.0, 1.0))
    mixed = w * np.asarray(signal_crop, dtype=np.float64) + (1.0 - w) * src + amplitude * noise
    lower, upper = -1.0, 1.0
    if source_unclipped is not None:
        beyond = np.asarray(source_unclipped, dtype=np.float64)[box]
        lower, upper = np.minimum(lower, beyond), np.maximum(upper, beyond)
    blended[box] = np.where(w > 0, np.clip(mixed, lower, upper), src)
    return blended
