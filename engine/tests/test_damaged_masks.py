"""A mask from a PACS is whatever another tool wrote: a damaged DICOM SEG, or a source whose geometry is
degenerate, is refused with one line naming the file and the problem (exit 2), never a traceback.

Each damaged SEG is made at test time from a valid one that references CT_small, so that undamaged it
would be used as the mask.
"""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.tag import Tag

from test_imaging_masks import make_seg
from testfiles import dicom_testfile, write_labelmap_like
from medgen.cli import main
from medgen.imaging.masks import read_mask
from medgen.imaging.read import read_volume


@pytest.fixture(scope="module")
def valid_seg(tmp_path_factory) -> Path:
    """A one-segment BINARY SEG on CT_small's one slice, referencing it by SOP Instance UID."""
    source = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
    mask = np.zeros((1, source.Rows, source.Columns), bool)
    mask[0, 40:80, 30:70] = True
    return make_seg([source], mask, tmp_path_factory.mktemp("seg") / "SEG.dcm")


def test_the_undamaged_seg_is_a_usable_mask(valid_seg):
    """Otherwise the refusals below would prove nothing about damage."""
    volume = read_volume(dicom_testfile("CT_small.dcm"))
    assert read_mask(valid_seg, volume).sum() == 40 * 40


# --- damage, each applied to a copy of the valid SEG ----------------------------------------------


def _edit(change):
    def damage(raw: bytes, path: Path) -> bytes:
        path.write_bytes(raw)
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path)
        return path.read_bytes()

    return damage


def _delete(keyword):
    return lambda ds: delattr(ds, keyword)


def _set(keyword, value):
    return lambda ds: setattr(ds, keyword, value)


def _tag_offset(raw: bytes, keyword: str) -> int:
    """Where the (explicit VR little endian) element of ``keyword`` starts in the file."""
    tag = Tag(keyword)
    marker = tag.group.to_bytes(2, "little") + tag.element.to_bytes(2, "little")
    offset = raw.rfind(marker) if keyword == "PixelData" else raw.find(marker)
    assert offset > 0, keyword
    return offset


def _truncated_after(keyword: str, extra: int):
    return lambda raw, path: raw[: _tag_offset(raw, keyword) + extra]


def _flipped(keyword: str, start: int, count: int):
    """Bytes ``start`` .. ``start + count`` of the element (0-3 tag, 4-5 VR, 6-7 length, 8- value) inverted."""

    def damage(raw: bytes, path: Path) -> bytes:
        data = bytearray(raw)
        offset = _tag_offset(raw, keyword) + start
        data[offset: offset + count] = bytes(b ^ 0xA5 for b in data[offset: offset + count])
        return bytes(data)

    return damage


DAMAGE = {
    "segmentation-type-foo": _edit(_set("SegmentationType", "FOO")),
    "fractional-without-maximum": _edit(_set("SegmentationType", "FRACTIONAL")),
    "per-frame-groups-deleted": _edit(_delete("PerFrameFunctionalGroupsSequence")),
    "empty-pixel-data": _edit(_set("PixelData", b"")),
    "truncated-in-pixel-data": _truncated_after("PixelData", 12 + 700),
    "truncated-in-shared-groups": _truncated_after("SharedFunctionalGroupsSequence", 20),
    "flipped-segmentation-type-value": _flipped("SegmentationType", 8, 3),
    "flipped-pixel-representation-tag": _flipped("PixelRepresentation", 0, 2),
    "flipped-pixel-data-vr": _flipped("PixelData", 5, 1),
    "flipped-dimension-index-sequence-tag": _flipped("DimensionIndexSequence", 0, 1),
}


def _refused(capsys, tmp_path, source, mask, tiny_model_dir) -> str:
    out = tmp_path / "out"
    code = main([
        "inpaint", str(source), "--mask", str(mask), "--prompt", "x", "--model", str(tiny_model_dir),
        "--out", str(out),
    ])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, err
    assert "Traceback" not in captured.err + captured.out
    assert len(err.splitlines()) == 1, err
    assert err.startswith("medgen: error:"), err
    assert not out.exists()
    return err


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_seg_is_refused_in_one_line_naming_the_mask(kind, valid_seg, tmp_path, capsys, tiny_model_dir):
    mask = tmp_path / "SEG.dcm"
    mask.write_bytes(DAMAGE[kind](valid_seg.read_bytes(), mask))
    assert mask.read_bytes() != valid_seg.read_bytes()

    err = _refused(capsys, tmp_path, dicom_testfile("CT_small.dcm"), mask, tiny_model_dir)

    assert str(mask) in err


def test_refusals_say_what_is_wrong(valid_seg, tmp_path, capsys, tiny_model_dir):
    messages = {}
    for kind in ("segmentation-type-foo", "fractional-without-maximum", "per-frame-groups-deleted",
                 "empty-pixel-data", "truncated-in-pixel-data"):
        mask = tmp_path / f"{kind}.dcm"
        mask.write_bytes(DAMAGE[kind](valid_seg.read_bytes(), mask))
        messages[kind] = _refused(capsys, tmp_path, dicom_testfile("CT_small.dcm"), mask, tiny_model_dir)
    assert "SegmentationType 'FOO'" in messages["segmentation-type-foo"]
    assert "MaximumFractionalValue" in messages["fractional-without-maximum"]
    assert "PerFrameFunctionalGroupsSequence" in messages["per-frame-groups-deleted"]
    assert "PixelData is missing or empty" in messages["empty-pixel-data"]
    assert "PixelData holds" in messages["truncated-in-pixel-data"]


# --- a source whose orientation spans no plane -----------------------------------------------------


@pytest.mark.parametrize("orientation", [[0, 0, 0, 0, 0, 0], [1, 0, 0, 1, 0, 0]], ids=["zero", "parallel"])
def test_degenerate_source_orientation_is_refused_naming_the_source(orientation, tmp_path, capsys, tiny_model_dir):
    volume = read_volume(dicom_testfile("CT_small.dcm"))
    mask = np.zeros(volume.pixels.shape[:3], np.uint8)
    mask[0, 40:80, 30:70] = 1
    mask_path = write_labelmap_like(volume, mask, tmp_path / "mask.nrrd")
    source = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
    source.ImageOrientationPatient = orientation
    source_path = tmp_path / "CT_degenerate.dcm"
    source.save_as(source_path)

    err = _refused(capsys, tmp_path, source_path, mask_path, tiny_model_dir)

    assert str(source_path) in err
    assert "ImageOrientationPatient" in err
