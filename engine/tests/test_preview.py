"""The preview sheet reads like a radiologist's screen: anterior up, patient right on the viewer's left
(whatever the storage order), the mask outlined, a zoomed crop, and a colour key for the differences."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medgen.imaging.preview import (
    BOX_COLOUR,
    KEY_HEIGHT,
    LABEL_HEIGHT,
    OUTLINE_COLOUR,
    TILE,
    TITLE_HEIGHT,
    display_transform,
    write_preview,
)

LABEL_W = 72


def matrix(col_axis, row_axis, normal=None) -> np.ndarray:
    m = np.eye(4)
    m[:3, 0], m[:3, 1] = col_axis, row_axis
    m[:3, 2] = np.cross(col_axis, row_axis) if normal is None else normal
    return m


@pytest.mark.parametrize(
    "col_axis, row_axis, expected",
    [
        ((1, 0, 0), (0, 1, 0), (False, False, False, "axial")),  # DICOM axial: already radiological
        ((1, 0, 0), (0, -1, 0), (False, True, False, "axial")),  # NIfTI LAS: rows run posterior -> anterior
        ((-1, 0, 0), (0, 1, 0), (False, False, True, "axial")),  # columns run left -> right
        ((0, 1, 0), (1, 0, 0), (True, False, False, "axial")),  # rows and columns swapped
        ((1, 0, 0), (0, 0, -1), (False, False, False, "coronal")),
        ((0, 1, 0), (0, 0, -1), (False, False, False, "sagittal")),
        ((0, 1, 0), (0, 0, 1), (False, True, False, "sagittal")),  # stored feet up
    ],
)
def test_display_transform_from_the_ijk_to_lps_matrix(col_axis, row_axis, expected):
    view = display_transform(matrix(np.array(col_axis, float), np.array(row_axis, float)))
    assert (view.transpose, view.flip_rows, view.flip_cols, view.plane) == expected


def marked_slice(to_anterior_right: tuple[slice, slice]) -> np.ndarray:
    image = np.full((64, 64), -0.8, np.float32)
    image[to_anterior_right] = 0.9
    return image


@pytest.mark.parametrize(
    "col_axis, row_axis, marker",
    [
        ((1, 0, 0), (0, 1, 0), (slice(0, 16), slice(0, 16))),  # LPS: row 0 anterior, column 0 right
        ((1, 0, 0), (0, -1, 0), (slice(48, 64), slice(0, 16))),  # LAS: the last row is anterior
        ((0, 1, 0), (1, 0, 0), (slice(0, 16), slice(0, 16))),  # transposed storage
        ((-1, 0, 0), (0, -1, 0), (slice(48, 64), slice(48, 64))),  # RAS
    ],
)
def test_patient_right_anterior_lands_top_left_of_the_full_slice_tile(tmp_path, col_axis, row_axis, marker):
    source = marked_slice(marker)
    mask = np.zeros((64, 64), bool)
    mask[28:36, 28:36] = True
    variant = source.copy()
    variant[mask] = 0.2
    path = tmp_path / "preview.png"
    write_preview(path, slice_indices=[3], sources=[source], masks=[mask], variants=[[variant]],
                  ijk_to_lps=matrix(np.array(col_axis, float), np.array(row_axis, float)),
                  prompt="hypodense lesion", window=(40.0, 400.0), unit="HU")
    sheet = np.asarray(Image.open(path).convert("RGB")).astype(int)
    top = TITLE_HEIGHT + LABEL_HEIGHT
    tile = sheet[top : top + TILE, LABEL_W : LABEL_W + TILE]
    quarter = TILE // 4
    corners = {
        "top-left": tile[8:quarter, 8:quarter], "top-right": tile[8:quarter, -quarter:-8],
        "bottom-left": tile[-quarter:-8, 8:quarter], "bottom-right": tile[-quarter:-8, -quarter:-8],
    }
    brightest = max(corners, key=lambda name: corners[name].mean())
    assert brightest == "top-left"


def test_sheet_has_outline_zoom_box_colour_key_and_grows_with_variants(tmp_path):
    rng = np.random.default_rng(0)
    source = rng.uniform(-0.5, 0.5, (96, 96)).astype(np.float32)
    mask = np.zeros((96, 96), bool)
    mask[40:52, 40:52] = True
    brighter, darker = source.copy(), source.copy()
    brighter[mask] += 0.4
    darker[mask] -= 0.4
    path = tmp_path / "preview.png"
    write_preview(path, slice_indices=[0], sources=[source], masks=[mask], variants=[[brighter], [darker]],
                  ijk_to_lps=np.eye(4), prompt="lesion", window=(40.0, 400.0), unit="HU")
    sheet = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert sheet.shape[1] >= LABEL_W + TILE * 6  # full slice, source zoom, 2 variants, 2 differences
    top = TITLE_HEIGHT + LABEL_HEIGHT
    full = sheet[top : top + TILE, LABEL_W : LABEL_W + TILE]
    assert np.all(full == OUTLINE_COLOUR, axis=-1).sum() > 20  # the outline is drawn and visible
    assert np.all(full == BOX_COLOUR, axis=-1).sum() > 20  # the zoom box too
    diff_brighter = sheet[top : top + TILE, LABEL_W + 4 * TILE : LABEL_W + 5 * TILE]
    diff_darker = sheet[top : top + TILE, LABEL_W + 5 * TILE : LABEL_W + 6 * TILE]

    def count(tile, colour):  # pixels of a pure red or blue
        strong, weak = (0, 2) if colour == "red" else (2, 0)
        return int(((tile[..., strong] > 200) & (tile[..., weak] < 60) & (tile[..., 1] < 60)).sum())

    assert count(diff_brighter, "red") > 100 and count(diff_brighter, "blue") == 0  # red: brighter
    assert count(diff_darker, "blue") > 100 and count(diff_darker, "red") == 0  # blue: darker
    # the zoomed crop is magnified: the 12-pixel mask spans many more screen pixels than in the full tile
    zoom = sheet[top : top + TILE, LABEL_W + TILE : LABEL_W + 2 * TILE]
    zoom_width = np.all(zoom == OUTLINE_COLOUR, axis=-1).any(axis=0).sum()
    assert zoom_width > 2.5 * np.all(full == OUTLINE_COLOUR, axis=-1).any(axis=0).sum()
    key = sheet[-KEY_HEIGHT:]
    assert (key[..., 0] > 200).any() and (key[..., 2] > 200).any()  # the key shows both ends


def test_a_radiograph_is_shown_as_stored_without_patient_directions(tmp_path):
    view = display_transform(None)
    assert view.plane == "as stored" and not any(view.labels)
    assert not (view.transpose or view.flip_rows or view.flip_cols)
