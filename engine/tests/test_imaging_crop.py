"""Crop, resize, dilation, feathering and paste-back: the steps that guard outside-mask identity."""

import numpy as np
import pytest

from medgen.imaging.crop import (
    CropBox,
    dilate_mask,
    feather_weights,
    mask_crop_box,
    paste_generated,
    resize_image,
    resize_mask,
)


def _disk(shape, center, radius):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


def test_dilate_mask_grows_by_radius_in_millimetres():
    mask = np.zeros((41, 41), bool)
    mask[20, 20] = True
    grown = dilate_mask(mask, radius_mm=5.0, pixel_spacing=(1.0, 0.5))
    rows, cols = np.nonzero(grown)
    # 5 mm is 5 rows but 10 columns at 0.5 mm column spacing
    assert rows.min() == 15 and rows.max() == 25
    assert cols.min() == 10 and cols.max() == 30


def test_dilate_mask_zero_radius_is_a_copy():
    mask = _disk((20, 20), (10, 10), 3)
    grown = dilate_mask(mask, 0.0, (1.0, 1.0))
    assert np.array_equal(grown, mask) and grown is not mask


def test_feather_weights_are_zero_outside_dilated_and_one_inside_mask():
    mask = _disk((64, 64), (32, 32), 8)
    dilated = dilate_mask(mask, 4.0, (1.0, 1.0))
    weights = feather_weights(mask, dilated, blur_px=6)
    assert np.all(weights[~dilated] == 0)
    assert np.all(weights[mask] == 1)
    ring = dilated & ~mask
    assert 0 < weights[ring].min() < 1  # the ramp is really a ramp


def test_mask_crop_box_is_square_padded_and_inside_the_slice():
    mask = np.zeros((100, 80), bool)
    mask[10:20, 60:75] = True
    box = mask_crop_box(mask, padding_px=8)
    assert box.shape == (31, 31)
    assert 0 <= box.row0 and box.row1 <= 100 and 0 <= box.col0 and box.col1 <= 80
    assert mask[box.slices].sum() == mask.sum()


def test_mask_crop_box_takes_whole_axis_when_slice_is_too_small():
    mask = np.zeros((20, 200), bool)
    mask[5:15, 50:60] = True
    box = mask_crop_box(mask, padding_px=30)
    assert (box.row0, box.row1) == (0, 20)
    assert box.col1 - box.col0 == 70


def test_mask_crop_box_refuses_empty_mask():
    with pytest.raises(ValueError):
        mask_crop_box(np.zeros((4, 4), bool), 2)


def test_resize_image_keeps_float_values_without_quantisation():
    image = np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    up = resize_image(image, (128, 128))
    assert up.dtype == np.float32 and up.shape == (128, 128)
    assert len(np.unique(up)) > 256  # no 8-bit round trip anywhere
    back = resize_image(up, (64, 64))
    assert np.abs(back - image).max() < 0.02


def test_resize_mask_is_boolean_and_keeps_area():
    mask = _disk((50, 50), (25, 25), 10)
    big = resize_mask(mask, (100, 100))
    assert big.dtype == bool
    assert abs(big.sum() / 4 - mask.sum()) / mask.sum() < 0.05


def test_paste_generated_changes_only_weighted_pixels():
    source = np.full((32, 32), -0.5)
    box = CropBox(8, 24, 8, 24)
    weights = np.zeros((32, 32))
    weights[12:20, 12:20] = 1.0
    weights[11, 12:20] = 0.5
    generated = np.full(box.shape, 0.5)
    blended = paste_generated(source, generated, box, weights)
    assert np.all(blended[weights == 0] == -0.5)
    assert np.all(blended[weights == 1] == 0.5)
    assert np.allclose(blended[11, 12:20], 0.0)


def test_paste_generated_refuses_wrong_crop_shape():
    with pytest.raises(ValueError):
        paste_generated(np.zeros((8, 8)), np.zeros((3, 3)), CropBox(0, 4, 0, 4), np.zeros((8, 8)))
