"""DICOM SEG of the inpainted region: references the synthetic instances, carries the synthetic marks,
and holds exactly the masks given, frame by frame, so series + SEG is a training pair."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest

from testfiles import dicom_testfile as data_file
from medgen.dicom.dciodvfy import is_available as dciodvfy_available
from medgen.dicom.dciodvfy import run_dciodvfy
from medgen.dicom.seg import seg_refusal, write_inpaint_seg
from medgen.dicom.validate import CheckStatus, validate_paths
from medgen.errors import InputError
from medgen.imaging.read import read_volume
from test_dicom_validate import make_classic_series, write_synthetic_case

PROMPT = "hypodense liver lesion, 2 cm"


def _write_seg(case, out, **overrides):
    arguments = dict(source_volume=case.volume, software_version="0.1.0", model_name="tiny-test-model")
    arguments.update(overrides)
    return write_inpaint_seg(case.files, case.masks, out, PROMPT, **arguments)


def _new_errors_only_synthetic_data(path) -> list[str]:
    return run_dciodvfy(path).errors  # the Synthetic Data line is classified as expected, not as an error


@pytest.mark.parametrize("only_modified", [False, True], ids=["whole-series", "only-modified"])
def test_seg_over_a_classic_series_references_synthetic_instances_with_the_masks(tmp_path, only_modified):
    case = write_synthetic_case(tmp_path, make_classic_series(tmp_path / "source", 5), [1, 3],
                                only_modified=only_modified)
    path = _write_seg(case, case.out / "variant-01-seg" / "SEG.dcm")

    seg = hd.seg.segread(path)
    assert seg.SyntheticData == "YES"
    assert seg.SeriesDescription.startswith("SYNTHETIC")
    assert seg.get_segment_description(1).SegmentLabel == PROMPT
    synthesizing = [e for e in seg.ContributingEquipmentSequence
                    if e.PurposeOfReferenceCodeSequence[0].CodeValue == "109100"]
    assert [e.Manufacturer for e in synthesizing] == ["MedGenSlicer"]
    synthetic = {str(pydicom.dcmread(f).SOPInstanceUID): f for f in case.files}
    source_uids = {str(ds.SOPInstanceUID) for ds in case.volume.datasets}
    referenced = {str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence
                  for i in s.ReferencedInstanceSequence}
    assert referenced <= set(synthetic) and not referenced & source_uids
    assert seg.StudyInstanceUID == case.volume.datasets[0].StudyInstanceUID

    # each masked slice's frame holds exactly its mask; every other slice is empty
    for uid, file in synthetic.items():
        ds = pydicom.dcmread(file)
        k = next(k for k, src in enumerate(case.volume.datasets)
                 if src.SOPInstanceUID == ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
        expected = case.masks.get(k, np.zeros(case.volume.shape2d, bool))
        if expected.any():
            pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=[1])
            assert np.array_equal(pixels[0, :, :, 0].astype(bool), expected), k
        else:
            assert uid not in referenced or not seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[uid], segment_numbers=[1], ignore_spatial_locations=True).any()

    report = validate_paths([case.out], case.source)
    assert report.ok, report.table()
    seg_report = next(f for f in report.files if f.path == path.resolve())
    assert {c.check for c in seg_report.checks} >= {"synthetic-data", "image-type", "seg-references", "provenance"}
    assert all(c.status is CheckStatus.PASS for c in seg_report.checks), report.table()


def test_seg_over_an_enhanced_multiframe_instance_maps_frames(tmp_path):
    case = write_synthetic_case(tmp_path, data_file("eCT_Supplemental.dcm"), [1])
    path = _write_seg(case, tmp_path / "seg.dcm")
    seg = hd.seg.segread(path)
    synthetic = pydicom.dcmread(case.files[0])
    frame = case.volume.frame_numbers[1]  # the source frame of slice 1 is the same frame in the output
    pixels = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=synthetic.SOPInstanceUID, source_frame_numbers=[frame], segment_numbers=[1]
    )
    assert np.array_equal(pixels[0, :, :, 0].astype(bool), case.masks[1])
    if dciodvfy_available():
        assert _new_errors_only_synthetic_data(path) == []


@pytest.mark.parametrize("name", ["RG1_UNCI.dcm", "US1_UNCI.dcm"], ids=["CR-no-geometry", "US-rgb"])
def test_seg_over_images_without_geometry_is_valid(tmp_path, name):
    case = write_synthetic_case(tmp_path, data_file(name), [0])
    path = _write_seg(case, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(path)
    spacing = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert all(float(v) > 0 for v in spacing)
    if dciodvfy_available():
        assert _new_errors_only_synthetic_data(path) == []


def test_label_is_cut_to_64_characters_without_backslashes(tmp_path):
    case = write_synthetic_case(tmp_path, data_file("CT_small.dcm"), [0])
    long_prompt = "lesion\\with a backslash " + "x" * 100
    path = write_inpaint_seg(case.files, case.masks, tmp_path / "seg.dcm", long_prompt,
                             source_volume=case.volume, software_version="0.1.0", model_name="m")
    label = hd.seg.segread(path).get_segment_description(1).SegmentLabel
    assert len(label) == 64 and "\\" not in label and label.startswith("lesion/with")


def test_refuses_empty_masks_and_non_synthetic_files(tmp_path):
    case = write_synthetic_case(tmp_path, data_file("CT_small.dcm"), [0])
    empty = {0: np.zeros(case.volume.shape2d, bool)}
    with pytest.raises(ValueError, match="no masked pixel"):
        write_inpaint_seg(case.files, empty, tmp_path / "a.dcm", PROMPT, source_volume=case.volume,
                          software_version="0.1.0", model_name="m")
    with pytest.raises(InputError, match="not a synthetic instance"):
        write_inpaint_seg([data_file("CT_small.dcm")], case.masks, tmp_path / "b.dcm", PROMPT,
                          source_volume=case.volume, software_version="0.1.0", model_name="m")
    with pytest.raises(ValueError, match="shape"):
        write_inpaint_seg(case.files, {0: np.ones((3, 3), bool)}, tmp_path / "c.dcm", PROMPT,
                          source_volume=case.volume, software_version="0.1.0", model_name="m")
    assert not list(tmp_path.glob("*.dcm"))


def test_multiframe_without_positions_is_refused_with_a_reason(tmp_path):
    case = write_synthetic_case(tmp_path, data_file("emri_small.dcm"), [3, 4])
    assert "patient geometry" in seg_refusal(case.volume, case.volume.num_slices)
    assert seg_refusal(read_volume(data_file("CT_small.dcm")), 1) is None
    assert seg_refusal(read_volume(data_file("RG1_UNCI.dcm")), 1) is None
    with pytest.raises(InputError, match="cannot build a DICOM SEG"):
        _write_seg(case, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()
