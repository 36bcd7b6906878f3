"""Windowing and the exact inverse map between stored values and model space."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from medgen.errors import InputError
from medgen.imaging.intensity import (
    CT_PRESETS,
    IntensityMap,
    Window,
    choose_window,
    model_channels,
)
from medgen.imaging.read import read_volume
from medgen.imaging.volume import PixelFormat, SourceFormat, Volume


def data_file(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing (install pydicom-data)"
    return path


def make_volume(pixels, *, modality="CT", pixel_format=None, slope=1.0, intercept=0.0):
    """A one-slice Volume over arbitrary stored values, to sweep whole value ranges."""
    pixels = np.asarray(pixels)
    colour = pixel_format is not None and pixel_format.samples_per_pixel == 3
    if pixels.ndim == (3 if colour else 2):
        pixels = pixels[np.newaxis]
    return Volume(
        pixels=pixels,
        spacing=(1.0, 1.0, 1.0),
        ijk_to_lps=np.eye(4),
        modality=modality,
        pixel_format=pixel_format,
        rescale_slope=np.full(pixels.shape[0], slope),
        rescale_intercept=np.full(pixels.shape[0], intercept),
        source_format=SourceFormat.DICOM if pixel_format else SourceFormat.NIFTI,
        source_paths=[],
    )


CT_FORMAT = PixelFormat(bits_allocated=16, bits_stored=16, signed=True, photometric="MONOCHROME2")


# --- choosing a window ---------------------------------------------------------------------------


def test_ct_presets_have_the_usual_values():
    assert CT_PRESETS["soft_tissue"] == Window(40, 400)
    assert CT_PRESETS["lung"] == Window(-600, 1500)
    assert CT_PRESETS["bone"] == Window(400, 1800)
    assert CT_PRESETS["brain"] == Window(40, 80)
    assert CT_PRESETS["liver"] == Window(60, 160)
    assert CT_PRESETS["mediastinum"] == Window(50, 350)
    assert Window(-600, 1500).lower == -1350 and Window(-600, 1500).upper == 150


def test_choose_window_order_of_precedence():
    ct = read_volume(data_file("CT_small.dcm"))
    assert choose_window(ct, [0]) == CT_PRESETS["soft_tissue"]
    assert choose_window(ct, [0], preset="lung") == CT_PRESETS["lung"]
    assert choose_window(ct, [0], preset="Soft-Tissue") == CT_PRESETS["soft_tissue"]
    assert choose_window(ct, [0], preset="lung", center=10, width=20) == Window(10, 20)
    with pytest.raises(InputError, match="unknown preset 'lungs'"):
        choose_window(ct, [0], preset="lungs")
    with pytest.raises(InputError, match="width must be > 0"):
        choose_window(ct, [0], center=10, width=0)
    with pytest.raises(InputError, match="give both"):
        choose_window(ct, [0], center=10)


def test_mr_window_is_the_robust_percentile_range_of_modality_values():
    mr = read_volume(data_file("MR2_J2KR.dcm"))  # slope 3.77: percentiles must be in modality units
    window = choose_window(mr, [0])
    lower, upper = np.percentile(mr.modality_values(0), [0.5, 99.5])
    assert window.lower == pytest.approx(lower) and window.upper == pytest.approx(upper)


def test_flat_image_gets_a_usable_window():
    volume = make_volume(np.full((4, 4), 7, dtype=np.uint16), modality="MR")
    window = choose_window(volume, [0])
    assert window.width > 0 and window.center == 7
    mapping = IntensityMap(volume, window)
    np.testing.assert_array_equal(mapping.from_model(mapping.to_model(0), 0, np.zeros((4, 4), np.uint16)), 7)


# --- forward map ---------------------------------------------------------------------------------


def test_to_model_is_float32_in_range_and_follows_the_window():
    volume = make_volume(np.array([[-2000, -160, 40, 240, 3000]], dtype=np.int16), pixel_format=CT_FORMAT)
    model = IntensityMap(volume, CT_PRESETS["soft_tissue"]).to_model(0)
    assert model.dtype == np.float32 and model.shape == (1, 5)
    np.testing.assert_allclose(model[0], [-1, -1, 0, 1, 1])


def test_monochrome1_is_inverted_so_model_space_means_brighter():
    mono1 = PixelFormat(bits_allocated=16, bits_stored=15, signed=False, photometric="MONOCHROME1")
    volume = make_volume(np.array([[0, 16383, 32767]], dtype=np.uint16), modality="CR", pixel_format=mono1)
    mapping = IntensityMap(volume, Window(16383.5, 32767))
    model = mapping.to_model(0)[0]
    assert model[0] == pytest.approx(1) and model[2] == pytest.approx(-1)  # stored 0 is white
    reference = np.zeros((1, 3), np.uint16)
    np.testing.assert_array_equal(mapping.from_model(model[np.newaxis], 0, reference), volume.pixels[0])


def test_rgb_to_model_uses_bt601_luma():
    rgb_format = PixelFormat(bits_allocated=8, bits_stored=8, signed=False, photometric="RGB", samples_per_pixel=3)
    pixels = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    volume = make_volume(pixels, modality="US", pixel_format=rgb_format)
    model = IntensityMap(volume, Window(127.5, 255)).to_model(0)
    np.testing.assert_allclose((model[0] + 1) / 2 * 255, [0.299 * 255, 0.587 * 255, 0.114 * 255], rtol=1e-5)


def test_model_channels_replicates_gray():
    gray = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    channels = model_channels(gray)
    assert channels.shape == (3, 2, 3) and channels.dtype == np.float32
    for channel in channels:
        np.testing.assert_array_equal(channel, gray)


# --- exactness -----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(CT_PRESETS))
def test_every_stored_value_inside_a_ct_preset_round_trips_exactly(preset):
    """(a) exact by arithmetic: the reference is deliberately wrong, so no keep-the-source rule helps."""
    window = CT_PRESETS[preset]
    stored = np.arange(-3000, 4000, dtype=np.int16).reshape(1, -1)  # HU = stored - 1024
    volume = make_volume(stored, pixel_format=CT_FORMAT, intercept=-1024.0)
    mapping = IntensityMap(volume, window)
    # a reference at the window centre: not at a clip bound, and equal to x only where x is the centre
    wrong_reference = np.full_like(stored, int(window.center) + 1024)
    back = mapping.from_model(mapping.to_model(0), 0, wrong_reference)
    hu = stored.astype(float) - 1024
    inside = (hu >= window.lower) & (hu <= window.upper)
    assert inside.sum() >= window.width
    np.testing.assert_array_equal(back[inside], stored[inside])
    # outside the window, without a matching reference, values clip to the window bounds
    assert back[hu < window.lower].max() == pytest.approx(window.lower + 1024, abs=0.5)
    assert back[hu > window.upper].min() == pytest.approx(window.upper + 1024, abs=0.5)


def test_fractional_slope_round_trips_exactly_inside_the_window():
    mr = read_volume(data_file("MR2_J2KR.dcm"))  # slope 3.774114, intercept 6.1e-5, 12-bit unsigned
    stored = np.arange(0, 4096, dtype=np.uint16).reshape(1, -1)
    volume = make_volume(stored, modality="MR", pixel_format=mr.pixel_format,
                         slope=mr.rescale_slope[0], intercept=mr.rescale_intercept[0])
    window = Window(4000.0, 6000.0)
    mapping = IntensityMap(volume, window)
    back = mapping.from_model(mapping.to_model(0), 0, np.zeros_like(stored))
    inside = (volume.modality_values(0) >= window.lower) & (volume.modality_values(0) <= window.upper)
    np.testing.assert_array_equal(back[inside], stored[inside])


@pytest.mark.parametrize("preset", ["brain", "lung"])
def test_round_trip_without_generation_changes_no_voxel_even_outside_the_window(preset):
    """(b) saturation keeps the source: CT_small has air and bone far outside the brain window."""
    volume = read_volume(data_file("CT_small.dcm"))
    mapping = IntensityMap(volume, CT_PRESETS[preset])
    back = mapping.from_model(mapping.to_model(0), 0)
    assert back.dtype == volume.pixels.dtype
    np.testing.assert_array_equal(back, volume.pixels[0])


def test_saturation_only_keeps_the_source_in_the_same_direction():
    volume = make_volume(np.array([[-3000, 3000]], dtype=np.int16), pixel_format=CT_FORMAT)
    mapping = IntensityMap(volume, CT_PRESETS["soft_tissue"])  # [-160, 240]
    # generation pushed the dark voxel to white and the bright voxel to black
    back = mapping.from_model(np.array([[1.0, -1.0]], dtype=np.float32), 0)
    np.testing.assert_array_equal(back, [[240, -160]])
    # within 1e-6 of the bound counts as saturated (a VAE rarely returns exactly ±1)
    back = mapping.from_model(np.array([[-0.9999995, 0.9999995]], dtype=np.float32), 0)
    np.testing.assert_array_equal(back, [[-3000, 3000]])


def test_from_model_clips_to_bits_stored():
    twelve_bit = PixelFormat(bits_allocated=16, bits_stored=12, signed=False, photometric="MONOCHROME2")
    volume = make_volume(np.array([[0, 4095]], dtype=np.uint16), modality="MR", pixel_format=twelve_bit)
    mapping = IntensityMap(volume, Window(4000, 2000))  # upper bound 5000 > 4095
    back = mapping.from_model(np.array([[1.0, 0.9]], dtype=np.float32), 0, np.zeros((1, 2), np.uint16))
    assert back.tolist() == [[4095, 4095]]
    signed12 = PixelFormat(bits_allocated=16, bits_stored=12, signed=True, photometric="MONOCHROME2")
    volume = make_volume(np.array([[0, 1]], dtype=np.int16), modality="MR", pixel_format=signed12)
    back = IntensityMap(volume, Window(0, 10000)).from_model(
        np.array([[-1.0, 1.0]], dtype=np.float32), 0, np.zeros((1, 2), np.int16))
    assert back.tolist() == [[-2048, 2047]]


def test_rgb_round_trip_keeps_colour_and_writes_gray_where_changed():
    """(c) unchanged pixels keep their RGB triple; changed ones get gray in R, G and B."""
    volume = read_volume(data_file("US1_UNCI.dcm"))
    mapping = IntensityMap(volume, choose_window(volume, [0]))
    model = mapping.to_model(0)
    np.testing.assert_array_equal(mapping.from_model(model, 0), volume.pixels[0])

    # a nudge far below one gray level keeps (almost) every colour: the rounded gray decides
    nudged = mapping.from_model(model + np.float32(1e-4), 0)
    moved = np.any(nudged != volume.pixels[0], axis=-1)
    assert moved.mean() < 0.05
    assert np.all(nudged[moved][:, 0] == nudged[moved][:, 1])

    colourful = np.argwhere(np.ptp(volume.pixels[0].astype(int), axis=-1) > 20)[0]
    model[tuple(colourful)] = 0.0
    back = mapping.from_model(model, 0)
    changed = back[tuple(colourful)]
    assert changed[0] == changed[1] == changed[2]
    assert np.count_nonzero(np.any(back != volume.pixels[0], axis=-1)) == 1


def test_float_nifti_round_trip_is_identity():
    values = np.linspace(-1000, 1000, 50, dtype=np.float32).reshape(5, 10)
    volume = make_volume(values, modality="OT")
    mapping = IntensityMap(volume, choose_window(volume, [0]))
    back = mapping.from_model(mapping.to_model(0), 0)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, values)


def test_from_model_checks_shapes():
    volume = make_volume(np.zeros((4, 5), np.int16), pixel_format=CT_FORMAT)
    with pytest.raises(ValueError, match="model must have shape"):
        IntensityMap(volume, CT_PRESETS["lung"]).from_model(np.zeros((5, 4)), 0)
