"""Inputs that used to crash or fail late: refused up front with a listed reason, or repaired and noted.

Real files from pydicom's test data, altered where a case needs it (a header claiming a huge image,
a FIFO); no model is loaded except where the test says so.
"""

import os
import re
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest

from medgen.api import InpaintRequest, check_request, unchanged_warning
from medgen.dicom.preflight import preflight
from medgen.errors import InputError
from medgen.imaging.burned_in import has_burned_in_text
from medgen.imaging.read import read_volume
from medgen.imaging.unsupported import UNSUPPORTED
from testfiles import dicom_testfile


def _centre(volume):
    rows, columns = volume.shape2d
    k = volume.num_slices // 2
    mask = np.zeros((rows, columns), bool)
    mask[rows // 2 - 2: rows // 2 + 2, columns // 2 - 2: columns // 2 + 2] = True
    return {k: mask}


def _request(tmp_path, **changes):
    fields = {"input": tmp_path / "in.dcm", "mask": tmp_path / "m.png", "prompt": "lesion", "out": tmp_path / "out"}
    fields.update(changes)
    return InpaintRequest(**fields)


# --- the list ----------------------------------------------------------------------------------


def test_every_reason_the_engine_gives_is_on_the_written_list():
    """A reason used in the code but missing from medgen.imaging.unsupported would be an unlisted refusal."""
    source = Path(__file__).parents[1] / "src" / "medgen"
    used = set()
    for path in source.rglob("*.py"):
        used |= set(re.findall(r'reason="([a-z0-9-]+)"', path.read_text()))
    assert used, "no reasons found: the search pattern is broken"
    assert used <= set(UNSUPPORTED), f"reasons not on the list: {sorted(used - set(UNSUPPORTED))}"


# --- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, option",
    [
        ({"mask_dilate_mm": float("inf")}, "--mask-dilate"),
        ({"mask_dilate_mm": 1e6}, "--mask-dilate"),
        ({"mask_blur_px": float("nan")}, "--mask-blur"),
        ({"guidance_scale": float("inf")}, "--guidance"),
        ({"window_width": float("nan")}, "--window-width"),
        ({"num_inference_steps": 10**9}, "--steps"),
        ({"seed": 2**63 - 1, "num_variants": 2}, "--seed"),
    ],
)
def test_non_finite_or_huge_options_are_refused_before_any_file_is_read(tmp_path, changes, option):
    with pytest.raises(InputError, match=re.escape(option)):
        check_request(_request(tmp_path, **changes))


def test_ordinary_options_pass(tmp_path):
    check_request(_request(tmp_path, mask_dilate_mm=5.0, guidance_scale=7.5, seed=2**63 - 2))


# --- special files and size limits -------------------------------------------------------------


def test_a_fifo_as_input_or_mask_is_refused_without_opening_it(tmp_path):
    from medgen.imaging.masks import read_mask

    fifo = tmp_path / "scan.dcm"
    os.mkfifo(fifo)
    result = {}

    def attempt():
        for name, call in (("input", lambda: read_volume(fifo)),
                           ("mask", lambda: read_mask(fifo, read_volume(dicom_testfile("CT_small.dcm"))))):
            try:
                call()
            except InputError as error:
                result[name] = error

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "reading a FIFO blocked"
    assert result["input"].reason == "special-file" and result["mask"].reason == "special-file"


def test_a_dicom_header_claiming_a_huge_image_is_refused_before_decoding(tmp_path):
    ds = pydicom.dcmread(dicom_testfile("MR_small_RLE.dcm"))
    ds.Rows, ds.Columns = 65535, 65535
    path = tmp_path / "huge.dcm"
    ds.save_as(path)
    with pytest.raises(InputError, match="MEDGEN_MAX_IMAGE_SIDE") as caught:
        read_volume(path)
    assert caught.value.reason == "too-large"


def test_the_voxel_limit_is_configurable(monkeypatch):
    path = dicom_testfile("CT_small.dcm")
    assert read_volume(path).pixels.size == 128 * 128
    monkeypatch.setenv("MEDGEN_MAX_VOXELS", "1000")
    with pytest.raises(InputError, match="over the limit of 1000") as caught:
        read_volume(path)
    assert caught.value.reason == "too-large"


def test_a_png_claiming_60000_squared_pixels_is_refused_as_input_and_as_mask(tmp_path):
    from PIL import Image

    from medgen.imaging.masks import read_mask

    path = tmp_path / "bomb.png"
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    struct.pack_into(">II", data, 16, 60000, 60000)  # IHDR width and height
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))  # and its checksum
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="limit") as caught:
        read_volume(path)
    assert caught.value.reason == "too-large"
    with pytest.raises(InputError, match="limit"):
        read_mask(path, read_volume(dicom_testfile("CT_small.dcm")))


def test_a_nifti_header_claiming_a_huge_volume_is_refused_before_reading(tmp_path):
    import SimpleITK as sitk

    path = tmp_path / "liar.nii"
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkInt16), str(path))
    data = bytearray(path.read_bytes())
    struct.pack_into("<4h", data, 40, 3, 30000, 30000, 30000)  # dim[0..3]
    path.write_bytes(bytes(data))
    with pytest.raises(InputError) as caught:
        read_volume(path)
    assert caught.value.reason in ("too-large", "damaged")


# --- reading real files that used to fail -------------------------------------------------------


def test_a_file_without_part10_meta_is_read_as_a_bare_data_set(tmp_path):
    ds = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
    expected = ds.pixel_array
    path = tmp_path / "bare.dcm"
    ds.preamble = None
    del ds.file_meta
    ds.save_as(path, enforce_file_format=False, implicit_vr=False, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"
    volume = read_volume(path)
    assert np.array_equal(volume.pixels[0], expected)


def test_a_text_file_is_still_not_dicom(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("hello\n" * 50)
    with pytest.raises(InputError, match="not a DICOM file") as caught:
        read_volume(path)
    assert caught.value.reason == "not-dicom"


def test_a_malformed_number_of_frames_is_a_damaged_header():
    with pytest.raises(InputError, match="Number of Frames '1A'") as caught:
        read_volume(dicom_testfile("badVR.dcm"))
    assert caught.value.reason == "damaged"


def test_a_failing_decoder_prints_no_traceback_and_the_error_is_one_line(capfd):
    with pytest.raises(InputError) as caught:
        read_volume(dicom_testfile("JPEG-lossy.dcm"))
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert "\n" not in str(caught.value) and caught.value.reason in ("codec", "damaged")


def test_rt_dose_frames_are_placed_by_their_grid_frame_offsets():
    volume = read_volume(dicom_testfile("rtdose.dcm"))
    offsets = [float(v) for v in volume.datasets[0].GridFrameOffsetVector]
    assert volume.num_slices == len(offsets)
    assert volume.spacing[0] == pytest.approx(offsets[1] - offsets[0])


# --- the pre-flight: every output built before generation ---------------------------------------


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "rtdose_1frame.dcm", "rtdose.dcm", "693_UNCR.dcm",
                                  "explicit_VR-UN.dcm", "MR_small_implicit.dcm"])
def test_files_that_failed_late_now_pass_the_preflight_with_a_seg(name):
    volume = read_volume(dicom_testfile(name))
    preflight(volume, _centre(volume), write_seg=True, write_dicom=False, only_modified=False)


def test_old_times_and_iso_2022_text_are_repaired_and_noted():
    volume = read_volume(dicom_testfile("ExplVR_BigEnd.dcm"))
    report = preflight(volume, _centre(volume), write_seg=True, write_dicom=False, only_modified=False)
    assert any("'14:04:38'" in note and "TM" in note for note in report.repairs), report.repairs
    volume = read_volume(Path(pydicom.data.__file__).parent / "charset_files" / "chrI2.dcm")
    report = preflight(volume, _centre(volume), write_seg=True, write_dicom=False, only_modified=False)
    assert any("ISO 2022" in note for note in report.repairs), report.repairs


def test_a_source_without_frame_of_reference_gets_a_new_one_and_a_note():
    volume = read_volume(dicom_testfile("693_UNCR.dcm"))
    assert "FrameOfReferenceUID" not in volume.datasets[0]
    report = preflight(volume, _centre(volume), write_seg=True, write_dicom=False, only_modified=False)
    assert any("Frame of Reference" in note for note in report.repairs)


def test_private_elements_of_an_implicit_vr_source_are_written_as_un(tmp_path):
    from medgen.dicom.writer import SyntheticSeriesWriter

    ds = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
    implicit = tmp_path / "implicit.dcm"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.save_as(implicit, enforce_file_format=True)
    volume = read_volume(implicit)
    writer = SyntheticSeriesWriter(volume, series_description="s", derivation_description="d", provenance={},
                                   software_version="1", model_name="m")
    (_, derived), = writer.derive_instances(volume.pixels, modified_slices=[0])
    from medgen.dicom.codes import PRIVATE_GROUP

    private = [e for e in derived if e.tag.is_private and e.tag.element > 0xFF and e.tag.group != PRIVATE_GROUP]
    assert private and all(e.VR == "UN" for e in private)
    assert any("UN" in note for note in writer.repairs)


def test_a_seg_refusal_names_the_source_file_and_says_what_to_do():
    path = dicom_testfile("SC_rgb_rle_2frame.dcm")
    volume = read_volume(path)
    with pytest.raises(InputError, match="--only-modified") as caught:
        preflight(volume, _centre(volume), write_seg=True, write_dicom=False, only_modified=False)
    assert caught.value.source == str(path) and caught.value.reason == "seg-source"
    # writing only the inpainted frame, the SEG can be built
    preflight(volume, _centre(volume), write_seg=True, write_dicom=False, only_modified=True)


# --- no silent no-op ---------------------------------------------------------------------------


def test_a_run_that_changed_nothing_is_named():
    volume = read_volume(dicom_testfile("CT_small.dcm"))
    assert "no voxel changed" in unchanged_warning(volume, [volume.pixels.copy()])
    changed = volume.pixels.copy()
    changed[0, 5, 5] += 1
    assert unchanged_warning(volume, [volume.pixels.copy(), changed]) is None


def test_allow_unchanged_has_a_cli_option_with_a_help_line():
    from medgen.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["inpaint", "in.dcm", "--mask", "m.png", "--prompt", "p", "--out", "o",
                              "--allow-unchanged"])
    assert args.allow_unchanged is True
    inpaint = next(a for a in parser._subparsers._group_actions[0].choices["inpaint"]._actions
                   if "--allow-unchanged" in a.option_strings)
    assert "default" in inpaint.help


# --- burned-in text ----------------------------------------------------------------------------


def _ultrasound_like(with_text: bool) -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.new("L", (400, 300), 0)
    draw = ImageDraw.Draw(image)
    draw.pieslice((50, 20, 350, 320), 240, 300, fill=90)
    if with_text:
        draw.text((10, 5), "DOE^JOHN 1990-01-01 7.5MHz", fill=255)
        draw.text((10, 280), "GAIN 42 DR 60", fill=255)
    pixels = np.array(image).astype(np.float64)
    pixels += (pixels == 90) * np.random.default_rng(0).normal(0, 10, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def test_the_detector_finds_burned_in_text_and_not_speckle():
    assert has_burned_in_text(_ultrasound_like(with_text=True))
    assert not has_burned_in_text(_ultrasound_like(with_text=False))
    assert not has_burned_in_text(read_volume(dicom_testfile("CT_small.dcm")).pixels[0])


def test_an_ultrasound_with_text_gets_burned_in_annotation_yes():
    from medgen.dicom.writer import SyntheticSeriesWriter

    volume = read_volume(dicom_testfile("US1_UNCR.dcm"))
    assert "BurnedInAnnotation" not in volume.datasets[0]
    writer = SyntheticSeriesWriter(volume, series_description="s", derivation_description="d", provenance={},
                                   software_version="1", model_name="m")
    (_, derived), = writer.derive_instances(volume.pixels, modified_slices=[0])
    assert derived.BurnedInAnnotation == "YES"
    assert any("Burned In Annotation" in note for note in writer.repairs)


def test_a_seg_over_images_with_an_empty_slice_thickness_reads_back_in_highdicom(tmp_path):
    """Pixel Measures need Slice Thickness (Type 1C); the source's is empty (Type 2), the SEG gets the spacing."""
    import highdicom as hd

    from medgen.dicom.preflight import _round_trip
    from medgen.dicom.seg import build_inpaint_seg
    from medgen.dicom.writer import SyntheticSeriesWriter

    volume = read_volume(dicom_testfile("explicit_VR-UN.dcm"))
    assert "SliceThickness" in volume.datasets[0] and not volume.datasets[0].SliceThickness
    masks = _centre(volume)
    writer = SyntheticSeriesWriter(volume, series_description="s", derivation_description="d", provenance={},
                                   software_version="1", model_name="m")
    images = [_round_trip(ds) for _, ds in writer.derive_instances(volume.pixels, modified_slices=list(masks))]
    seg = build_inpaint_seg(images, masks, "lesion", source_volume=volume, software_version="1", model_name="m")
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    measures = hd.seg.segread(path).SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) > 0


def test_stderr_collected_around_a_native_call_is_kept_in_the_log_not_lost(caplog):
    import logging
    import os

    from medgen.imaging.library_messages import captured_native_stderr

    with caplog.at_level(logging.INFO, logger="medgen.native"):
        with captured_native_stderr() as messages:
            os.write(2, b"** ERROR: a decoder's own line\nanother   thread's line\n")
    assert messages == ["** ERROR: a decoder's own line", "another thread's line"]
    assert [r.getMessage() for r in caplog.records if r.name == "medgen.native"] == [
        f"stderr while a library ran: {m}" for m in messages]
