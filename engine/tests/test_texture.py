"""Noise and seam figures (imaging.texture), noise texture matching (generate.noise) and smoothing along
the slice axis (generate.slice_consistency), on synthetic slices whose answer is known."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medgen.generate.noise import generated_signal, measure_noise_texture, retexture, synthesize_noise
from medgen.generate.slice_consistency import smooth_along_slices
from medgen.imaging.crop import dilate_mask, feather_weights
from medgen.imaging.texture import (
    NOISE_RATIO_BAND,
    SEAM_RATIO_BAND,
    highpass,
    measure_texture,
    robust_std,
)

SIZE = 128


def disk(radius: float, centre=(64, 64), size=SIZE) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def correlated_noise(rng, std: float, sigma: float = 1.0, size=SIZE) -> np.ndarray:
    """Noise correlated over about a pixel, as a CT reconstruction kernel makes it."""
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma)
    return noise / noise.std() * std


def scene(rng):
    """A tissue slice in model space: a smooth gradient plus correlated noise; mask, dilated, weights."""
    rows, _ = np.mgrid[:SIZE, :SIZE]
    source = -0.2 + 0.002 * rows + correlated_noise(rng, 0.05)
    mask = disk(12)
    dilated = dilate_mask(mask, 3.0, (1.0, 1.0))
    weights = feather_weights(mask, dilated, 4.0)
    box = (slice(32, 96), slice(32, 96))
    return source, mask, dilated, weights, box


def test_a_smooth_pasted_blob_is_found_by_both_figures_and_retexturing_hides_it():
    rng = np.random.default_rng(0)
    source, mask, dilated, weights, box = scene(rng)
    flat = np.full(source.shape, -0.5)  # a flat hypodense blob filling the mask: no noise at all
    pasted = weights * flat + (1 - weights) * source
    smooth = measure_texture(pasted, mask, dilated)
    assert smooth.noise_std_ratio < 0.2  # the blob is far too smooth
    assert smooth.seam_strength_ratio > SEAM_RATIO_BAND[1]  # and its step edge shows

    texture = measure_noise_texture(source, mask, dilated)
    assert texture.patches > 0 and abs(texture.std - robust_std(highpass(source)[~dilated])) < 0.2 * texture.std
    # a lesion inside the painted mask with a soft edge, on the tissue around it, as a model makes it
    lesion = np.where(disk(8), -0.5, ndimage.gaussian_filter(source, 3.0))
    signal = ndimage.gaussian_filter(lesion, 1.5)[box]
    out = retexture(source, signal, weights, texture, np.random.default_rng(1), box)
    matched = measure_texture(out, mask, dilated)
    assert NOISE_RATIO_BAND[0] <= matched.noise_std_ratio <= NOISE_RATIO_BAND[1]
    assert SEAM_RATIO_BAND[0] <= matched.seam_strength_ratio <= SEAM_RATIO_BAND[1]
    # the lesion's signal survives: mean inside is the lesion's, not the tissue's
    assert abs(out[disk(5)].mean() - (-0.5)) < 0.05
    # outside the weights nothing moved, bit for bit
    assert np.array_equal(out[weights == 0], source[weights == 0])


def test_synthesized_noise_has_the_measured_texture_not_white_noise():
    rng = np.random.default_rng(2)
    mask = disk(10)
    dilated = dilate_mask(mask, 2.0, (1.0, 1.0))
    for sigma in (0.6, 1.6):
        source = correlated_noise(rng, 0.05, sigma)
        texture = measure_noise_texture(source, mask, dilated)
        made = synthesize_noise(texture, (SIZE, SIZE), np.random.default_rng(3))

        def lag1(image):  # neighbour correlation of the noise part: its texture in one number
            r = highpass(image)
            return float(np.corrcoef(r[:, :-1].ravel(), r[:, 1:].ravel())[0, 1])

        assert abs(lag1(made) - lag1(source)) < 0.12, sigma
        assert abs(robust_std(highpass(made)) - 1.0) < 0.05  # unit std, scaled by the caller


def test_generated_signal_removes_the_models_texture_but_keeps_the_lesion():
    rng = np.random.default_rng(4)
    lesion = np.where(disk(15, size=64, centre=(32, 32)), -0.5, 0.1)
    noisy = lesion + rng.normal(0, 0.1, lesion.shape)
    signal = generated_signal(noisy)
    assert robust_std(highpass(signal)) < 0.3 * robust_std(highpass(noisy))
    assert abs(signal[28:36, 28:36].mean() - (-0.5)) < 0.03


def test_slice_smoothing_makes_neighbours_agree_inside_the_mask_only_and_never_across_a_gap():
    rng = np.random.default_rng(5)
    weights = [disk(10, size=32, centre=(16, 16)).astype(float) for _ in range(5)]
    signals = [np.full((32, 32), v) + 0.0 for v in rng.normal(0, 1, 5)]
    indices = [10, 11, 12, 13, 20]  # slice 20 has no neighbour
    out = smooth_along_slices(indices, signals, weights, slice_spacing_mm=2.0)
    inside = weights[0] > 0
    before = np.mean([abs(signals[n][inside].mean() - signals[n + 1][inside].mean()) for n in range(3)])
    after = np.mean([abs(out[n][inside].mean() - out[n + 1][inside].mean()) for n in range(3)])
    assert after < 0.6 * before
    for n in range(5):
        assert np.array_equal(out[n][~inside], signals[n][~inside])  # outside the weights: untouched
    assert np.array_equal(out[4], signals[4])  # the isolated slice is not mixed with slice 13


def test_harmonized_border_removes_a_background_shift_keeps_the_lesion_and_meets_the_source_at_the_edge():
    from medgen.generate.seam import harmonize_border

    rng = np.random.default_rng(6)
    rows, _ = np.mgrid[:SIZE, :SIZE]
    source = 0.001 * rows + correlated_noise(rng, 0.03)
    mask = disk(12)
    dilated = dilate_mask(mask, 3.0, (1.0, 1.0))
    source_low = ndimage.gaussian_filter(source, 1.5)
    # the model's background is 0.3 too bright; its lesion, 0.4 below that background, reaches past the
    # mask into part of the ring
    lesion = disk(13, centre=(64, 61))
    signal = source_low + 0.3 - 0.4 * lesion
    out = harmonize_border(source, signal, mask, dilated)
    background = dilated & ~lesion
    assert np.abs(out[background] - source_low[background]).max() < 0.02
    assert abs((out[lesion & mask] - source_low[lesion & mask]).mean() - (-0.4)) < 0.02  # kept in the mask
    edge = dilated & ~ndimage.binary_erosion(dilated)
    assert np.abs(out[edge] - source_low[edge]).max() < 0.02  # the lesion's overhang tapers away by the edge
    assert np.array_equal(out[~dilated], signal[~dilated])


def test_generated_noise_is_shared_between_adjacent_slices_as_much_as_the_sources():
    from types import SimpleNamespace

    from medgen.generate.compose import compose_variant
    from medgen.imaging.crop import mask_crop_box
    from medgen.imaging.intensity import IntensityMap, Window
    from medgen.imaging.volume import SourceFormat, Volume

    def run(shared: bool) -> float:
        rng = np.random.default_rng(7)
        base = correlated_noise(rng, 20.0)
        slices = [base if shared else correlated_noise(rng, 20.0) for _ in range(3)]
        pixels = np.stack([40 + s for s in slices]).round().astype(np.int16)
        volume = Volume(pixels=pixels, spacing=(1.0, 1.0, 1.0), ijk_to_lps=np.eye(4), modality="CT",
                        pixel_format=None, rescale_slope=np.ones(3), rescale_intercept=np.zeros(3),
                        source_format=SourceFormat.NIFTI, source_paths=[])
        intensity = IntensityMap(volume, Window(40, 400))
        mask = disk(14)
        dilated = dilate_mask(mask, 2.0, (1.0, 1.0))
        box = mask_crop_box(dilated, 16)
        jobs = [SimpleNamespace(index=k, source_model=intensity.to_model(k), mask=mask, dilated=dilated,
                                weights=feather_weights(mask, dilated, 4.0), box=box, edge=None) for k in range(3)]
        flat = np.zeros((3, 64, 64), np.float32)
        out = compose_variant(volume, intensity, jobs, flat, seed=0, slice_consistency=False).pixels
        a, b = highpass(out[0].astype(float))[disk(10)], highpass(out[1].astype(float))[disk(10)]
        assert np.array_equal(out[:, ~dilated], pixels[:, ~dilated])
        return float(np.corrcoef(a, b)[0, 1])

    assert run(shared=True) > 0.8
    assert abs(run(shared=False)) < 0.2
