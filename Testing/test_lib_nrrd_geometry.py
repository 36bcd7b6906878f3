"""MedGenSlicerLib's NRRD and geometry code (no engine needed; SimpleITK, where installed, as a second reader)."""

from __future__ import annotations

import ast
import gzip
from pathlib import Path

import numpy as np
import pytest

from MedGenSlicerLib.geometry import (
    GeometryError,
    crop_slab,
    instances_in_slab,
    mask_on_slices,
    paste_on_grid,
    slab_range,
    slice_in_view,
    touched_slices,
)
from MedGenSlicerLib.nrrd import RAS_FROM_LPS, NrrdError, nrrd_bytes, read_nrrd

REPO = Path(__file__).resolve().parent.parent

# An oblique, anisotropic grid with awkward numbers: any dropped digit or swapped axis shows.
IJK_TO_RAS = np.array(
    [
        [-0.7031249, 0.0123, 0.0, 118.29999923706055],
        [0.0, -0.6999999, 0.3, -84.1],
        [0.01, 0.0, 2.5000001, -301.7],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


@pytest.mark.parametrize("dtype", ["int16", "uint16", "uint8", "int8", "int32", "float32", "float64", "bool"])
@pytest.mark.parametrize("space", ["RAS", "LPS"])
def test_nrrd_round_trip_is_exact(dtype, space):
    rng = np.random.default_rng(0)
    array = (rng.random((3, 5, 7)) * 100).astype(dtype)
    image = read_nrrd(nrrd_bytes(array, IJK_TO_RAS, space=space))
    assert image.array.dtype == (np.uint8 if dtype == "bool" else np.dtype(dtype))
    np.testing.assert_array_equal(image.array, array.astype(image.array.dtype))
    assert np.array_equal(image.ijk_to_ras, IJK_TO_RAS)  # bit for bit, not approximately


def test_nrrd_vector_volume_round_trip():
    array = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    data = nrrd_bytes(array, IJK_TO_RAS)
    assert b"kinds: vector domain domain domain" in data
    image = read_nrrd(data)
    np.testing.assert_array_equal(image.array, array)


def test_nrrd_header_says_lps_for_lps():
    header = nrrd_bytes(np.zeros((1, 2, 2), np.int16), IJK_TO_RAS, space="LPS").split(b"\n\n")[0].decode()
    assert "space: left-posterior-superior" in header
    assert "space origin: (-118.29999923706055,84.1,-301.7)" in header


def test_simpleitk_reads_our_nrrd_where_we_placed_it(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    array = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    path = tmp_path / "ours.nrrd"
    path.write_bytes(nrrd_bytes(array, IJK_TO_RAS))
    image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)
    lps = RAS_FROM_LPS @ IJK_TO_RAS
    for ijk in [(0, 0, 0), (4, 3, 2), (1, 2, 1)]:
        expected = (lps @ np.array([*ijk, 1.0]))[:3]
        np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(ijk), expected, atol=1e-9)


def test_we_read_simpleitk_gzip_nrrd(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    array = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 0.6, 3.0))
    image.SetOrigin((10.0, -20.0, 30.0))
    path = tmp_path / "itk.nrrd"
    sitk.WriteImage(image, str(path), useCompression=True)
    ours = read_nrrd(path)
    np.testing.assert_array_equal(ours.array, array)
    np.testing.assert_allclose(ours.ijk_to_lps[:3, 3], [10.0, -20.0, 30.0])
    np.testing.assert_allclose(np.diag(ours.ijk_to_lps)[:3], [0.5, 0.6, 3.0])


def test_nrrd_reader_refuses_what_it_cannot_read():
    with pytest.raises(NrrdError, match="not an NRRD"):
        read_nrrd(b"P5 not nrrd")
    with pytest.raises(NrrdError, match="type"):
        read_nrrd(b"NRRD0004\ntype: banana\ndimension: 3\nsizes: 1 1 1\n\n\0")
    with pytest.raises(NrrdError, match="announces"):
        read_nrrd(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n\n\0\0")
    with pytest.raises(NrrdError, match="detached"):
        read_nrrd(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\ndata file: x.raw\n\n")
    gz = gzip.compress(np.arange(8, dtype=">i2").tobytes())
    image = read_nrrd(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\nendian: big\nencoding: gzip\n\n" + gz)
    np.testing.assert_array_equal(image.array.ravel(), np.arange(8))


def test_slice_in_view_finds_the_red_slice_and_refuses_oblique_views():
    shape = (10, 4, 4)
    matrix = np.diag([0.5, 0.5, 2.0, 1.0])
    matrix[:3, 3] = [0, 0, -5.0]
    view = np.eye(4)
    view[:3, 3] = [1.0, 1.0, -5.0 + 3 * 2.0]  # slice k = 3
    assert slice_in_view(matrix, shape, view) == 3
    flipped = view.copy()
    flipped[:3, 2] = [0, 0, -1]  # looking from the other side is the same slice
    assert slice_in_view(matrix, shape, flipped) == 3
    sagittal = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 1]], dtype=float)
    with pytest.raises(GeometryError, match="not aligned"):
        slice_in_view(matrix, shape, sagittal)
    outside = view.copy()
    outside[2, 3] = 100.0
    with pytest.raises(GeometryError, match="outside"):
        slice_in_view(matrix, shape, outside)


def test_slab_and_mask_selection():
    mask = np.zeros((8, 3, 3), np.uint8)
    mask[2, 1, 1] = mask[5, 0, 0] = 1
    assert touched_slices(mask) == [2, 5]
    assert slab_range(mask) == (2, 6)
    assert slab_range(mask, margin=4) == (0, 8)
    only = mask_on_slices(mask, [5])
    assert touched_slices(only) == [5] and only.dtype == np.uint8
    with pytest.raises(GeometryError, match="empty on slice 3"):
        mask_on_slices(mask, [3])
    slab, slab_matrix = crop_slab(np.arange(8)[:, None, None] * np.ones((8, 3, 3)), IJK_TO_RAS, 2, 6)
    assert slab.shape == (4, 3, 3) and slab[0, 0, 0] == 2
    np.testing.assert_allclose(slab_matrix @ [0, 0, 0, 1], IJK_TO_RAS @ [0, 0, 2, 1])


@pytest.mark.parametrize("flip_k", [False, True])
@pytest.mark.parametrize("swap_ij", [False, True])
def test_paste_on_grid_places_a_slab_read_back_in_another_axis_order(flip_k, swap_ij):
    target = np.zeros((6, 4, 5), np.int16)
    piece = np.arange(2 * 4 * 5, dtype=np.int16).reshape(2, 4, 5) + 1
    expected = target.copy()
    expected[3:5] = piece
    piece_matrix = np.array(IJK_TO_RAS)
    piece_matrix[:3, 3] = (IJK_TO_RAS @ [0, 0, 3, 1])[:3]
    if flip_k:  # the engine sorted the slices the other way round
        piece = piece[::-1]
        piece_matrix[:3, 3] = (IJK_TO_RAS @ [0, 0, 4, 1])[:3]
        piece_matrix[:3, 2] = -IJK_TO_RAS[:3, 2]
    if swap_ij:  # rows and columns exchanged
        piece = piece.transpose(0, 2, 1)
        piece_matrix[:3, [0, 1]] = piece_matrix[:3, [1, 0]]
    np.testing.assert_array_equal(paste_on_grid(target, IJK_TO_RAS, piece, piece_matrix), expected)


def test_paste_on_grid_refuses_other_grids():
    target = np.zeros((4, 4, 4))
    shifted = np.array(IJK_TO_RAS)
    shifted[:3, 3] += 0.5 * IJK_TO_RAS[:3, 0]
    with pytest.raises(GeometryError, match="fraction"):
        paste_on_grid(target, IJK_TO_RAS, np.zeros((1, 4, 4)), shifted)
    outside = np.array(IJK_TO_RAS)
    outside[:3, 3] += 10 * IJK_TO_RAS[:3, 2]
    with pytest.raises(GeometryError, match="outside"):
        paste_on_grid(target, IJK_TO_RAS, np.zeros((1, 4, 4)), outside)


def test_instances_in_slab_matches_positions_to_slices():
    lps = RAS_FROM_LPS @ IJK_TO_RAS
    positions = [list((lps @ [0, 0, k, 1])[:3]) for k in (4, 0, 2, 1, 3)]  # in no particular order
    assert sorted(instances_in_slab(positions, IJK_TO_RAS, 1, 3)) == [2, 3]
    with pytest.raises(GeometryError, match="instances"):
        instances_in_slab(positions[:2], IJK_TO_RAS, 1, 3)


def test_module_side_code_is_python_39_syntax():
    """Slicer 5.6/5.8 bundle Python 3.9: no match, no parenthesized context managers, no X | Y at runtime."""
    files = sorted((REPO / "MedGenSlicer").rglob("*.py"))
    assert any(f.name == "MedGenSlicer.py" for f in files)
    for path in files:
        source = path.read_text()
        ast.parse(source, filename=str(path), feature_version=(3, 9))
        if path.parent.name == "MedGenSlicerLib" and path.name != "__init__.py":
            assert "from __future__ import annotations" in source, f"{path.name}: annotations must stay strings"
