"""The synthetic series writer, checked rule by rule against real CT, MR, CR, US and enhanced files.

Each source gets one block of pixels changed in one slice, is written, read back with pydicom and
compared attribute by attribute with the rules in DESIGN.md ("Synthetic DICOM").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from medgen.dicom import codes, writer
from medgen.dicom.dciodvfy import is_available, new_errors, run_dciodvfy
from medgen.dicom.provenance import (
    build_provenance,
    for_variant,
    format_derivation_description,
    library_versions,
    model_weight_manifest,
    sha256_file,
    sha256_model,
    write_provenance_json,
)
from medgen.dicom.writer import PROVENANCE_FILENAME, SyntheticSeriesWriter, burn_in, write_secondary_capture
from medgen.errors import InputError, OutputError
from medgen.imaging.volume import PixelFormat, SourceFormat, Volume

SOURCES = [
    "CT_small.dcm",
    "693_J2KR.dcm",
    "MR_small.dcm",
    "MR2_J2KR.dcm",
    "RG1_UNCI.dcm",  # CR, MONOCHROME1
    "US1_UNCI.dcm",  # US, RGB
    "JPGLosslessP14SV1_1s_1f_8b.dcm",  # US, grayscale, JPEG lossless
    "emri_small.dcm",  # Enhanced MR, 10 frames, no functional groups
    "eCT_Supplemental.dcm",  # Enhanced CT, 2 frames, functional groups
]
ENHANCED = {"emri_small.dcm", "eCT_Supplemental.dcm"}
PROMPT = "hypodense liver lesion, 2 cm"
DERIVATION = format_derivation_description(prompt=PROMPT, model_name="tiny-inpaint", adapters=["lora-liver"], seed=7)
PROVENANCE = {"tool": {"name": "test"}, "parameters": {"prompt": PROMPT, "guidance_scale": 7.5},
              "variant": {"index": 0, "seed": 7}}
MODEL_NAME = "tiny-inpaint"
SOFTWARE_VERSION = "medgen 0.1.0"

needs_dciodvfy = pytest.mark.skipif(not is_available(), reason="dciodvfy (dicom3tools) is not installed")


def _testdata(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.fail(f"pydicom test file {name} is not installed (pip install pydicom-data)")
    return Path(path)


# ---------------------------------------------------------------------- building volumes


def _volume_from_files(paths: list[Path]) -> Volume:
    """A Volume decoded with pydicom alone: slices in the given order, or the frames of one file."""
    datasets = [pydicom.dcmread(p) for p in paths]
    first = datasets[0]
    arrays = [ds.pixel_array for ds in datasets]
    samples = int(first.SamplesPerPixel)
    multiframe = len(paths) == 1 and int(first.get("NumberOfFrames", 1) or 1) > 1
    pixels = arrays[0] if multiframe else np.stack(arrays)
    photometric = str(first.PhotometricInterpretation)
    if samples == 3 and photometric.startswith("YBR"):
        photometric = "RGB"  # pydicom converts YBR to RGB by default
    fmt = PixelFormat(int(first.BitsAllocated), int(first.BitsStored), bool(first.PixelRepresentation),
                      photometric, samples)
    n = pixels.shape[0]
    return Volume(
        pixels=pixels, spacing=(1.0, 1.0, 1.0), ijk_to_lps=np.eye(4), modality=str(first.get("Modality", "OT")),
        pixel_format=fmt, rescale_slope=np.ones(n), rescale_intercept=np.zeros(n),
        source_format=SourceFormat.DICOM, source_paths=list(paths),
        datasets=datasets if not multiframe else [first],
        frame_numbers=list(range(1, n + 1)) if multiframe else None,
    )


def _load_volume(path: Path) -> Volume:
    """The project's reader when it exists (it is the real producer of Volumes), else pydicom alone."""
    if importlib.util.find_spec("medgen.imaging.read") is not None:
        read = importlib.import_module("medgen.imaging.read")
        if hasattr(read, "read_volume"):
            return read.read_volume(path)
    paths = sorted(path.iterdir()) if path.is_dir() else [path]
    return _volume_from_files(paths)


def _modify_block(volume: Volume, k: int, seed: int = 0) -> np.ndarray:
    """The volume's pixels with an 8x8 block of slice k replaced by random in-range values."""
    fmt = volume.pixel_format
    pixels = volume.pixels.copy()
    rows, cols = volume.shape2d
    r0, c0 = rows // 3, cols // 3
    block = pixels[k, r0:r0 + 8, c0:c0 + 8]
    rng = np.random.default_rng(seed)
    new = rng.integers(fmt.stored_min, fmt.stored_max + 1, size=block.shape).astype(pixels.dtype)
    new[new == block] = np.where(block[new == block] == fmt.stored_max, fmt.stored_min, fmt.stored_max)
    pixels[k, r0:r0 + 8, c0:c0 + 8] = new
    assert not np.array_equal(pixels[k], volume.pixels[k])
    return pixels


def _make_writer(volume: Volume, **overrides) -> SyntheticSeriesWriter:
    kwargs = {"series_description": "liver lesion v0", "derivation_description": DERIVATION,
              "provenance": PROVENANCE, "software_version": SOFTWARE_VERSION, "model_name": MODEL_NAME}
    kwargs.update(overrides)
    return SyntheticSeriesWriter(volume, **kwargs)


def _frames_of(ds: pydicom.Dataset) -> np.ndarray:
    """All frames of a read-back instance as (F, R, C[, 3])."""
    array = ds.pixel_array
    single_ndim = 2 if int(ds.SamplesPerPixel) == 1 else 3
    return array[None] if array.ndim == single_ndim else array


@dataclass
class Written:
    name: str
    volume: Volume
    pixels: np.ndarray  # what was given to write()
    k: int  # the modified slice
    paths: list[Path]
    outputs: list[pydicom.Dataset]
    sources: list[pydicom.Dataset]  # the source dataset of each output


def _write_case(name: str, out_dir: Path, *, only_modified: bool) -> Written:
    volume = _load_volume(_testdata(name))
    # for a multi-frame source, the slice holding the last frame: its functional groups and frame
    # number differ from the first frame's, so a writer that mixes them up is caught
    k = volume.frame_numbers.index(max(volume.frame_numbers)) if volume.is_multiframe else volume.num_slices // 2
    pixels = _modify_block(volume, k)
    paths = _make_writer(volume).write(pixels, out_dir, modified_slices=[k], only_modified=only_modified)
    outputs = [pydicom.dcmread(p) for p in paths]
    if volume.is_multiframe:
        sources = [volume.datasets[0]]
    else:
        slices = [k] if only_modified else list(range(volume.num_slices))
        sources = [volume.datasets[i] for i in slices]
    return Written(name, volume, pixels, k, paths, outputs, sources)


@pytest.fixture(scope="module", params=SOURCES)
def case(request, tmp_path_factory) -> Written:
    return _write_case(request.param, tmp_path_factory.mktemp("out") / "series", only_modified=False)


@pytest.fixture(scope="module", params=SOURCES)
def modified_only(request, tmp_path_factory) -> Written:
    return _write_case(request.param, tmp_path_factory.mktemp("out") / "series", only_modified=True)


def _pairs(case: Written):
    return list(zip(case.outputs, case.sources))


def _source_references(out: pydicom.Dataset) -> list[pydicom.Dataset]:
    """Source Image Sequence items, top level or inside the per-frame Derivation Image items."""
    if "PerFrameFunctionalGroupsSequence" in out:
        return [group.DerivationImageSequence[0].SourceImageSequence[0]
                for group in out.PerFrameFunctionalGroupsSequence]
    return list(out.SourceImageSequence)


def _derivation_items(out: pydicom.Dataset) -> list[pydicom.Dataset]:
    """Where Derivation Description / Code live: each Derivation Image item, or the dataset itself."""
    if "PerFrameFunctionalGroupsSequence" in out:
        return [group.DerivationImageSequence[0] for group in out.PerFrameFunctionalGroupsSequence]
    return [out]


def _our_equipment(out: pydicom.Dataset) -> pydicom.Dataset:
    return out.ContributingEquipmentSequence[-1]


def _frame_list(value) -> list[int]:
    """Referenced Frame Number as a list, whether it holds one value or several."""
    return [int(v) for v in value] if isinstance(value, pydicom.multival.MultiValue) else [int(value)]


def _frame_numbers_written(case: Written, only_modified: bool) -> list[int]:
    slices = [case.k] if only_modified else range(case.volume.num_slices)
    return sorted(case.volume.frame_numbers[i] for i in slices)


# ---------------------------------------------------------------------- files and pixels


def test_writes_one_file_per_slice_or_one_multiframe_instance(case):
    expected = 1 if case.volume.is_multiframe else case.volume.num_slices
    assert len(case.paths) == expected


def test_pixels_read_back_bit_identical_in_every_slice(case):
    if case.volume.is_multiframe:
        order = sorted(range(case.volume.num_slices), key=lambda i: case.volume.frame_numbers[i])
        expected = case.pixels[order]
        got = _frames_of(case.outputs[0])
    else:
        expected = case.pixels
        got = np.concatenate([_frames_of(out) for out in case.outputs])
    assert np.array_equal(got, expected)


def test_pixel_dtype_matches_source(case):
    assert all(_frames_of(out).dtype == case.volume.pixels.dtype for out in case.outputs)


@pytest.mark.parametrize("keyword", ["BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                                     "SamplesPerPixel", "Rows", "Columns"])
def test_pixel_encoding_matches_source(case, keyword):
    assert all(out[keyword].value == src[keyword].value for out, src in _pairs(case))


def test_photometric_is_that_of_the_decoded_pixels(case):
    assert all(out.PhotometricInterpretation == case.volume.pixel_format.photometric for out in case.outputs)


def test_colour_is_interleaved_and_grayscale_has_no_planar_configuration(case):
    expected = 0 if case.volume.is_color else None
    assert all(out.get("PlanarConfiguration") == expected for out in case.outputs)


def test_transfer_syntax_is_explicit_vr_little_endian(case):
    assert all(out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian for out in case.outputs)


def test_sop_class_is_the_sources(case):
    assert all(out.SOPClassUID == src.SOPClassUID for out, src in _pairs(case))


def test_number_of_frames_matches_frames_written(case):
    if not case.volume.is_multiframe:
        pytest.skip("single-frame source")
    assert int(case.outputs[0].NumberOfFrames) == case.volume.num_slices


# ---------------------------------------------------------------------- identity


def test_series_instance_uid_is_new(case):
    assert all(out.SeriesInstanceUID != src.SeriesInstanceUID for out, src in _pairs(case))


def test_series_instance_uid_is_shared_by_the_series(case):
    assert len({out.SeriesInstanceUID for out in case.outputs}) == 1


def test_sop_instance_uids_are_new(case):
    assert all(out.SOPInstanceUID != src.SOPInstanceUID for out, src in _pairs(case))


def test_sop_instance_uids_are_unique(case):
    assert len({out.SOPInstanceUID for out in case.outputs}) == len(case.outputs)


def test_new_uids_are_valid(case):
    assert all(UID(out.SOPInstanceUID).is_valid and UID(out.SeriesInstanceUID).is_valid for out in case.outputs)


def test_file_meta_instance_uid_matches(case):
    assert all(out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID for out in case.outputs)


def test_file_meta_class_uid_matches(case):
    assert all(out.file_meta.MediaStorageSOPClassUID == out.SOPClassUID for out in case.outputs)


def test_study_instance_uid_kept(case):
    assert all(out.StudyInstanceUID == src.StudyInstanceUID for out, src in _pairs(case))


@pytest.mark.parametrize("keyword", ["PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                                     "PatientIdentityRemoved"])
def test_patient_module_kept(case, keyword):
    assert all(out.get(keyword) == src.get(keyword) for out, src in _pairs(case) if keyword in src)


def test_frame_of_reference_kept(case):
    """Kept where the source has one; a source with positions but none gets one new UID for the series."""
    for out, src in _pairs(case):
        if "FrameOfReferenceUID" in src or "ImagePositionPatient" not in src:
            assert out.get("FrameOfReferenceUID") == src.get("FrameOfReferenceUID")
        else:
            assert out.FrameOfReferenceUID == case.outputs[0].FrameOfReferenceUID


def test_a_new_frame_of_reference_is_derived_from_the_source_series(tmp_path):
    """693_UNCI has positions but no Frame of Reference UID: two writes of it (two runs, or a local run
    and a batch worker) give it the same new UID, so their files can be the same bytes."""
    volume = _load_volume(_testdata("693_UNCI.dcm"))
    assert "FrameOfReferenceUID" not in volume.datasets[0] and "ImagePositionPatient" in volume.datasets[0]
    pixels = _modify_block(volume, 0)
    written = [_make_writer(volume).write(pixels, tmp_path / f"run-{i}", modified_slices=[0]) for i in range(2)]
    uids = [pydicom.dcmread(paths[0]).FrameOfReferenceUID for paths in written]
    assert uids[0] == uids[1] and uids[0].startswith("2.25.")


def test_instance_number_kept(case):
    assert all(out.get("InstanceNumber") == src.get("InstanceNumber") for out, src in _pairs(case))


# ---------------------------------------------------------------------- the synthetic marks


def test_synthetic_data_is_yes(case):
    assert all(out.SyntheticData == "YES" for out in case.outputs)


def test_image_type_value_1_is_derived(case):
    assert all(out.ImageType[0] == "DERIVED" for out in case.outputs)


def test_image_type_value_2(case):
    # enhanced IODs allow only PRIMARY there (PS3.3 C.8.16.1); every other IOD gets SECONDARY
    expected = "PRIMARY" if case.name in ENHANCED else "SECONDARY"
    assert all(out.ImageType[1] == expected for out in case.outputs)


def test_image_type_keeps_source_values_after_the_second(case):
    assert all(list(out.ImageType)[2:] == list(src.ImageType)[2:] for out, src in _pairs(case))


def test_frame_type_is_derived_in_functional_groups(case):
    if "PerFrameFunctionalGroupsSequence" not in case.sources[0]:
        pytest.skip("no functional groups")
    frame_types = [item.CTImageFrameTypeSequence[0].FrameType[0]
                   for item in [*case.outputs[0].get("SharedFunctionalGroupsSequence", []),
                                *case.outputs[0].PerFrameFunctionalGroupsSequence]
                   if "CTImageFrameTypeSequence" in item]
    assert frame_types and set(frame_types) == {"DERIVED"}


def test_series_description_begins_with_synthetic(case):
    assert all(out.SeriesDescription.startswith("SYNTHETIC") for out in case.outputs)


def test_series_description_keeps_the_given_text(case):
    assert all(out.SeriesDescription == "SYNTHETIC liver lesion v0" for out in case.outputs)


def test_contributing_equipment_purpose_is_synthesizing_equipment(case):
    purposes = [_our_equipment(out).PurposeOfReferenceCodeSequence[0] for out in case.outputs]
    assert all((p.CodeValue, p.CodingSchemeDesignator, p.CodeMeaning)
               == ("109100", "DCM", "Synthesizing Equipment") for p in purposes)


def test_contributing_equipment_manufacturer(case):
    assert all(_our_equipment(out).Manufacturer == "MedGenSlicer" for out in case.outputs)


def test_contributing_equipment_software_version(case):
    assert all(_our_equipment(out).SoftwareVersions == SOFTWARE_VERSION for out in case.outputs)


def test_contributing_equipment_model_name(case):
    assert all(_our_equipment(out).ManufacturerModelName == MODEL_NAME for out in case.outputs)


def test_contributing_equipment_datetime_is_now(case):
    when = [dt.datetime.strptime(_our_equipment(out).ContributionDateTime, "%Y%m%d%H%M%S.%f%z")
            for out in case.outputs]
    now = dt.datetime.now(dt.timezone.utc)
    assert all(abs((now - w).total_seconds()) < 3600 for w in when)


def test_contributing_equipment_description(case):
    assert all("synthetic" in _our_equipment(out).ContributionDescription for out in case.outputs)


def test_source_image_reference_names_the_source_instance(case):
    assert all(ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
               for out, src in _pairs(case) for ref in _source_references(out))


def test_source_image_reference_names_the_source_class(case):
    assert all(ref.ReferencedSOPClassUID == src.SOPClassUID
               for out, src in _pairs(case) for ref in _source_references(out))


def test_source_image_reference_purpose(case):
    purposes = [ref.PurposeOfReferenceCodeSequence[0] for out in case.outputs for ref in _source_references(out)]
    assert purposes and all((p.CodeValue, p.CodingSchemeDesignator, p.CodeMeaning)
                            == ("121322", "DCM", "Source image for image processing operation") for p in purposes)


def test_source_image_reference_frame_numbers(case):
    refs = [ref for out in case.outputs for ref in _source_references(out)]
    if not case.volume.is_multiframe:
        assert all("ReferencedFrameNumber" not in ref for ref in refs)
        return
    got = [frame for ref in refs for frame in _frame_list(ref.ReferencedFrameNumber)]
    assert got == _frame_numbers_written(case, only_modified=False)


def test_source_image_evidence_lists_the_source(case):
    if "PerFrameFunctionalGroupsSequence" not in case.sources[0]:
        pytest.skip("only enhanced instances with functional groups carry Source Image Evidence")
    evidence = case.outputs[0].SourceImageEvidenceSequence[0]
    ref = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert (evidence.StudyInstanceUID, ref.ReferencedSOPInstanceUID) == (
        case.sources[0].StudyInstanceUID, case.sources[0].SOPInstanceUID)


def test_derivation_description(case):
    assert all(item.DerivationDescription == DERIVATION
               for out in case.outputs for item in _derivation_items(out))


def test_derivation_code_is_generative_inpainting(case):
    codes_seen = {(item.DerivationCodeSequence[0].CodeValue, item.DerivationCodeSequence[0].CodingSchemeDesignator)
                  for out in case.outputs for item in _derivation_items(out)}
    assert codes_seen == {("INPAINT", "99MEDGEN")}


def test_private_coding_scheme_is_declared(case):
    assert all(any(item.CodingSchemeDesignator == "99MEDGEN" for item in out.CodingSchemeIdentificationSequence)
               for out in case.outputs)


def test_private_block_holds_the_provenance_json(case):
    for out in case.outputs:
        block = out.private_block(codes.PRIVATE_GROUP, codes.PRIVATE_CREATOR)
        assert json.loads(block[codes.PRIVATE_PROVENANCE_OFFSET].value) == PROVENANCE


def test_provenance_json_is_written_beside_the_series(case):
    path = case.paths[0].parent / PROVENANCE_FILENAME
    assert json.loads(path.read_text(encoding="utf-8")) == PROVENANCE


def test_lossy_image_compression_kept(case):
    assert all(out.get("LossyImageCompression") == src.get("LossyImageCompression") for out, src in _pairs(case))


def test_no_icon_or_group_lengths(case):
    assert all("IconImageSequence" not in out and not any(element.tag.element == 0 for element in out)
               for out in case.outputs)


def test_pixel_statistics_of_the_source_are_dropped(case):
    assert all("LargestImagePixelValue" not in out and "SmallestImagePixelValue" not in out for out in case.outputs)


@needs_dciodvfy
def test_dciodvfy_finds_no_new_error(case):
    for path, src in zip(case.paths, case.sources):
        source_report = run_dciodvfy(src.filename)
        output_report = run_dciodvfy(path)
        assert new_errors(output_report, source_report) == [], output_report.output


@needs_dciodvfy
def test_dciodvfy_recognises_the_same_iod(case):
    assert run_dciodvfy(case.paths[0]).iod == run_dciodvfy(case.sources[0].filename).iod


# ---------------------------------------------------------------------- only the modified slices


def test_only_modified_writes_one_instance(modified_only):
    assert len(modified_only.paths) == 1


def test_only_modified_pixels_are_the_modified_slice(modified_only):
    got = _frames_of(modified_only.outputs[0])
    assert np.array_equal(got, modified_only.pixels[modified_only.k][None])


def test_only_modified_multiframe_has_one_frame(modified_only):
    if not modified_only.volume.is_multiframe:
        pytest.skip("single-frame source")
    assert int(modified_only.outputs[0].NumberOfFrames) == 1


def test_only_modified_keeps_the_frames_functional_groups(modified_only):
    src = modified_only.sources[0]
    if "PerFrameFunctionalGroupsSequence" not in src:
        pytest.skip("no per-frame functional groups")
    frame = modified_only.volume.frame_numbers[modified_only.k]
    out_groups = modified_only.outputs[0].PerFrameFunctionalGroupsSequence
    assert len(out_groups) == 1 and out_groups[0].FrameContentSequence == \
        src.PerFrameFunctionalGroupsSequence[frame - 1].FrameContentSequence


def test_only_modified_references_the_modified_frame(modified_only):
    if not modified_only.volume.is_multiframe:
        pytest.skip("single-frame source")
    refs = _source_references(modified_only.outputs[0])
    assert [int(r.ReferencedFrameNumber) for r in refs] == [modified_only.volume.frame_numbers[modified_only.k]]


@needs_dciodvfy
def test_only_modified_dciodvfy_finds_no_new_error(modified_only):
    report = run_dciodvfy(modified_only.paths[0])
    assert new_errors(report, run_dciodvfy(modified_only.sources[0].filename)) == [], report.output


# ---------------------------------------------------------------------- a classic multi-slice series


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory) -> Volume:
    """Three CT slices 5 mm apart made from CT_small, read back as one classic series."""
    folder = tmp_path_factory.mktemp("ct_series")
    for i in range(3):
        ds = pydicom.dcmread(_testdata("CT_small.dcm"))
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 5 * i]
        ds.SliceLocation = float(ds.ImagePositionPatient[2])
        ds.InstanceNumber = i + 1
        ds.save_as(folder / f"slice{i}.dcm")
    return _load_volume(folder)


def test_series_names_files_by_slice_index(ct_series, tmp_path):
    pixels = _modify_block(ct_series, 1)
    paths = _make_writer(ct_series).write(pixels, tmp_path / "out", modified_slices=[1])
    assert [p.name for p in paths] == ["IM-0001.dcm", "IM-0002.dcm", "IM-0003.dcm"]


def test_series_instances_share_series_and_have_distinct_uids(ct_series, tmp_path):
    pixels = _modify_block(ct_series, 1)
    outs = [pydicom.dcmread(p) for p in _make_writer(ct_series).write(pixels, tmp_path / "o", modified_slices=[1])]
    assert len({o.SeriesInstanceUID for o in outs}) == 1 and len({o.SOPInstanceUID for o in outs}) == 3


def test_series_only_modified_writes_only_the_modified_slice(ct_series, tmp_path):
    pixels = _modify_block(ct_series, 2)
    paths = _make_writer(ct_series).write(pixels, tmp_path / "out", modified_slices=[2], only_modified=True)
    assert [p.name for p in paths] == ["IM-0003.dcm"]


def test_series_only_modified_instance_is_the_slices_derivative(ct_series, tmp_path):
    pixels = _modify_block(ct_series, 2)
    path, = _make_writer(ct_series).write(pixels, tmp_path / "out", modified_slices=[2], only_modified=True)
    out = pydicom.dcmread(path)
    assert out.SourceImageSequence[0].ReferencedSOPInstanceUID == ct_series.datasets[2].SOPInstanceUID


def test_series_unmodified_slices_are_bit_identical_to_the_source(ct_series, tmp_path):
    pixels = _modify_block(ct_series, 1)
    paths = _make_writer(ct_series).write(pixels, tmp_path / "out", modified_slices=[1])
    assert all(np.array_equal(pydicom.dcmread(paths[i]).pixel_array, ct_series.pixels[i]) for i in (0, 2))


def test_uids_are_derived_from_content_other_pixels_another_series(ct_series, tmp_path):
    """The same pixels and settings: the same series and instances (a rerun reproduces them, at another time
    too); any other
    pixels: a new series. Never the source's."""
    series_writer = _make_writer(ct_series)
    pixels = _modify_block(ct_series, 0)
    a = pydicom.dcmread(series_writer.write(pixels, tmp_path / "a", modified_slices=[0])[0])
    again = pydicom.dcmread(series_writer.write(pixels, tmp_path / "again", modified_slices=[0])[0])
    other_pixels = pixels.copy()
    other_pixels[0, 0, 0] += 1
    b = pydicom.dcmread(series_writer.write(other_pixels, tmp_path / "b", modified_slices=[0])[0])
    assert (a.SeriesInstanceUID, a.SOPInstanceUID) == (again.SeriesInstanceUID, again.SOPInstanceUID)
    assert a.SeriesInstanceUID != b.SeriesInstanceUID and a.SOPInstanceUID != b.SOPInstanceUID
    assert a.SeriesInstanceUID != ct_series.datasets[0].SeriesInstanceUID
    assert a.SOPInstanceUID != ct_series.datasets[0].SOPInstanceUID
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID


def test_series_number_given_is_written(ct_series, tmp_path):
    paths = _make_writer(ct_series, series_number=4242).write(ct_series.pixels, tmp_path / "o", modified_slices=[])
    assert pydicom.dcmread(paths[0]).SeriesNumber == 4242


def test_series_number_defaults_to_source_plus_1000(ct_series, tmp_path):
    paths = _make_writer(ct_series).write(ct_series.pixels, tmp_path / "o", modified_slices=[])
    assert pydicom.dcmread(paths[0]).SeriesNumber == int(ct_series.datasets[0].SeriesNumber) + 1000


# ---------------------------------------------------------------------- text limits and character sets


def test_long_series_description_is_cut_to_64_with_prefix(ct_series, tmp_path):
    paths = _make_writer(ct_series, series_description="x" * 200).write(
        ct_series.pixels, tmp_path / "o", modified_slices=[])
    text = pydicom.dcmread(paths[0]).SeriesDescription
    assert len(text) == 64 and text.startswith("SYNTHETIC ")


def test_series_description_already_marked_is_not_doubled(ct_series, tmp_path):
    paths = _make_writer(ct_series, series_description="SYNTHETIC lesion").write(
        ct_series.pixels, tmp_path / "o", modified_slices=[])
    assert pydicom.dcmread(paths[0]).SeriesDescription == "SYNTHETIC lesion"


def test_long_derivation_description_is_cut_to_1024(ct_series, tmp_path):
    paths = _make_writer(ct_series, derivation_description="d" * 3000).write(
        ct_series.pixels, tmp_path / "o", modified_slices=[])
    assert len(pydicom.dcmread(paths[0]).DerivationDescription) == 1024


def test_non_ascii_prompt_is_written_as_utf8(ct_series, tmp_path):
    text = "Läsion 2 µm, 肝臓"
    paths = _make_writer(ct_series, derivation_description=text).write(
        ct_series.pixels, tmp_path / "o", modified_slices=[])
    out = pydicom.dcmread(paths[0])
    assert (out.SpecificCharacterSet, out.DerivationDescription) == ("ISO_IR 192", text)


def test_non_ascii_prompt_keeps_patient_name(ct_series, tmp_path):
    paths = _make_writer(ct_series, derivation_description="µ").write(
        ct_series.pixels, tmp_path / "o", modified_slices=[])
    assert pydicom.dcmread(paths[0]).PatientName == ct_series.datasets[0].PatientName


def test_non_ascii_provenance_survives_the_private_block(ct_series, tmp_path):
    provenance = {"prompt": "Läsion µ"}
    paths = _make_writer(ct_series, provenance=provenance).write(ct_series.pixels, tmp_path / "o", modified_slices=[])
    block = pydicom.dcmread(paths[0]).private_block(codes.PRIVATE_GROUP, codes.PRIVATE_CREATOR)
    assert json.loads(block[codes.PRIVATE_PROVENANCE_OFFSET].value) == provenance


# ---------------------------------------------------------------------- refusals and atomic output


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_non_empty_out_dir_is_refused(ct_series, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="already exists"):
        _make_writer(ct_series).write(ct_series.pixels, out, modified_slices=[])


def test_non_empty_out_dir_is_left_untouched(ct_series, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputError):
        _make_writer(ct_series).write(ct_series.pixels, out, modified_slices=[])
    assert _leftovers(out) == ["keep.txt"] and _leftovers(tmp_path) == ["out"]


def test_empty_out_dir_is_used(ct_series, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    paths = _make_writer(ct_series).write(ct_series.pixels, out, modified_slices=[])
    assert all(p.parent == out and p.is_file() for p in paths)


def test_unwritable_parent_is_an_output_error(ct_series, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError):
        _make_writer(ct_series).write(ct_series.pixels, blocker / "out", modified_slices=[])


def test_failure_midway_leaves_nothing_behind(ct_series, tmp_path, monkeypatch):
    calls = []
    real_save = writer._save

    def failing_save(ds, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_save(ds, path)

    monkeypatch.setattr(writer, "_save", failing_save)
    with pytest.raises(OutputError, match="No space left"):
        _make_writer(ct_series).write(ct_series.pixels, tmp_path / "out", modified_slices=[])
    assert _leftovers(tmp_path) == []


def test_change_outside_modified_slices_is_refused(ct_series, tmp_path):
    pixels = _modify_block(ct_series, 2)
    with pytest.raises(ValueError, match=r"slices \[2\] differ"):
        _make_writer(ct_series).write(pixels, tmp_path / "out", modified_slices=[0])
    assert _leftovers(tmp_path) == []


def test_values_outside_bits_stored_are_refused(tmp_path):
    volume = _load_volume(_testdata("MR2_J2KR.dcm"))  # 12 bits stored in 16
    pixels = volume.pixels.copy()
    pixels[0, 0, 0] = 4096
    with pytest.raises(ValueError, match="stored range"):
        _make_writer(volume).write(pixels, tmp_path / "out", modified_slices=[0])


def test_wrong_dtype_is_refused(ct_series, tmp_path):
    with pytest.raises(ValueError, match="must match the source"):
        _make_writer(ct_series).write(ct_series.pixels.astype(np.float32), tmp_path / "out", modified_slices=[])


def test_modified_slice_out_of_range_is_refused(ct_series, tmp_path):
    with pytest.raises(ValueError, match="modified_slices"):
        _make_writer(ct_series).write(ct_series.pixels, tmp_path / "out", modified_slices=[3])


def test_only_modified_without_slices_is_refused(ct_series, tmp_path):
    with pytest.raises(ValueError, match="only_modified"):
        _make_writer(ct_series).write(ct_series.pixels, tmp_path / "out", modified_slices=[], only_modified=True)


def test_unserialisable_provenance_is_refused_at_construction(ct_series):
    with pytest.raises(ValueError, match="JSON"):
        _make_writer(ct_series, provenance={"seed": object()})


def test_empty_model_name_is_refused(ct_series):
    with pytest.raises(ValueError, match="model_name"):
        _make_writer(ct_series, model_name=" ")


def test_non_dicom_volume_is_refused():
    volume = Volume(pixels=np.zeros((1, 4, 4), np.int16), spacing=(1.0, 1.0, 1.0), ijk_to_lps=np.eye(4),
                    modality="OT", pixel_format=None, rescale_slope=np.ones(1), rescale_intercept=np.zeros(1),
                    source_format=SourceFormat.NIFTI, source_paths=[Path("x.nii.gz")])
    with pytest.raises(InputError, match="write_secondary_capture"):
        _make_writer(volume)


def test_source_volume_is_not_modified_by_writing(ct_series, tmp_path):
    before = ct_series.pixels.copy()
    uid = ct_series.datasets[0].SOPInstanceUID
    _make_writer(ct_series, burn_in_label=True).write(_modify_block(ct_series, 1), tmp_path / "o", modified_slices=[1])
    assert np.array_equal(ct_series.pixels, before) and ct_series.datasets[0].SOPInstanceUID == uid


# ---------------------------------------------------------------------- burned-in label


def test_burned_in_label_sets_burned_in_annotation(ct_series, tmp_path):
    paths = _make_writer(ct_series, burn_in_label=True).write(ct_series.pixels, tmp_path / "o", modified_slices=[])
    assert pydicom.dcmread(paths[0]).BurnedInAnnotation == "YES"


def test_burned_in_label_changes_only_the_corner_of_every_instance(ct_series, tmp_path):
    paths = _make_writer(ct_series, burn_in_label=True).write(ct_series.pixels, tmp_path / "o", modified_slices=[])
    changed = [np.argwhere(pydicom.dcmread(p).pixel_array != ct_series.pixels[i]) for i, p in enumerate(paths)]
    assert all(c.size and c[:, 0].max() < 16 and c[:, 1].max() < 64 for c in changed)


def test_burned_in_label_uses_both_extremes():
    fmt = PixelFormat(16, 12, False, "MONOCHROME2")
    labelled = burn_in(np.full((64, 64), 1000, np.uint16), fmt)
    assert {int(labelled.min()), int(labelled.max())} == {0, 4095}


def test_burned_in_label_is_bright_for_monochrome1():
    fmt = PixelFormat(16, 12, False, "MONOCHROME1")
    labelled = burn_in(np.full((64, 64), 1000, np.uint16), fmt)
    assert labelled[1, 1] == 4095  # the dark box is the highest value in MONOCHROME1


# ---------------------------------------------------------------------- Secondary Capture


def _nifti_like(pixels: np.ndarray) -> Volume:
    affine = np.diag([-0.8, 0.8, 2.5, 1.0])  # i towards patient right, j posterior
    n = pixels.shape[0]
    return Volume(pixels=pixels, spacing=(2.5, 0.8, 0.8), ijk_to_lps=affine, modality="OT", pixel_format=None,
                  rescale_slope=np.ones(n), rescale_intercept=np.zeros(n), source_format=SourceFormat.NIFTI,
                  source_paths=[Path("/data/scan.nii.gz")])


_RNG = np.random.default_rng(3)
SC_CASES = {
    "int16": _RNG.integers(-1024, 3000, (4, 32, 48)).astype(np.int16),
    "uint8": _RNG.integers(0, 256, (3, 32, 48)).astype(np.uint8),
    "uint16": _RNG.integers(0, 4096, (3, 32, 48)).astype(np.uint16),
    "float32": _RNG.normal(size=(3, 32, 48)).astype(np.float32),
    "rgb": _RNG.integers(0, 256, (2, 32, 48, 3)).astype(np.uint8),
}
SC_CLASSES = {
    "int16": "1.2.840.10008.5.1.4.1.1.7.3", "uint16": "1.2.840.10008.5.1.4.1.1.7.3",
    "float32": "1.2.840.10008.5.1.4.1.1.7.3", "uint8": "1.2.840.10008.5.1.4.1.1.7.2",
    "rgb": "1.2.840.10008.5.1.4.1.1.7.4",
}


@pytest.fixture(scope="module", params=sorted(SC_CASES))
def sc(request, tmp_path_factory):
    pixels = SC_CASES[request.param]
    paths = write_secondary_capture(
        _nifti_like(pixels), pixels, tmp_path_factory.mktemp("sc") / "series",
        series_description="liver lesion", derivation_description=DERIVATION, provenance=PROVENANCE,
        software_version=SOFTWARE_VERSION, model_name=MODEL_NAME)
    return request.param, pixels, paths, pydicom.dcmread(paths[0])


def _sc_values(out: pydicom.Dataset) -> np.ndarray:
    """Stored values mapped back with the provenance's value mapping, if any."""
    stored = _frames_of(out).astype(np.float64)
    record = json.loads(out.private_block(codes.PRIVATE_GROUP, codes.PRIVATE_CREATOR)[0x01].value)
    mapping = record.get("dicom_value_mapping")
    return stored if mapping is None else stored * mapping["slope"] + mapping["intercept"]


def test_sc_sop_class(sc):
    name, _, _, out = sc
    assert out.SOPClassUID == SC_CLASSES[name]


def test_sc_values_round_trip(sc):
    name, pixels, _, out = sc
    if name == "float32":
        step = (float(pixels.max()) - float(pixels.min())) / 65535
        assert np.max(np.abs(_sc_values(out) - pixels)) <= step / 2 + 1e-9
    else:
        assert np.array_equal(_sc_values(out), pixels.astype(np.float64))


def test_sc_is_unsigned_with_identity_rescale(sc):
    _, _, _, out = sc
    assert out.PixelRepresentation == 0 and float(out.get("RescaleSlope", 1)) == 1.0 \
        and float(out.get("RescaleIntercept", 0)) == 0.0


def test_sc_conversion_type_is_synthetic(sc):
    assert sc[3].ConversionType == "SYN"


def test_sc_synthetic_data_is_yes(sc):
    assert sc[3].SyntheticData == "YES"


def test_sc_image_type(sc):
    assert list(sc[3].ImageType) == ["DERIVED", "SECONDARY"]


def test_sc_series_description(sc):
    assert sc[3].SeriesDescription == "SYNTHETIC liver lesion"


def test_sc_contributing_equipment(sc):
    item = sc[3].ContributingEquipmentSequence[0]
    assert (item.PurposeOfReferenceCodeSequence[0].CodeValue, item.Manufacturer, item.ManufacturerModelName) == (
        "109100", "MedGenSlicer", MODEL_NAME)


def test_sc_derivation_description(sc):
    assert sc[3].DerivationDescription == DERIVATION


def test_sc_frames_and_geometry(sc):
    _, pixels, _, out = sc
    assert (int(out.NumberOfFrames), [float(v) for v in out.PixelSpacing], list(out.PatientOrientation)) == (
        pixels.shape[0], [0.8, 0.8], ["R", "P"])


def test_sc_meta_matches(sc):
    out = sc[3]
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID


def test_sc_study_uid_can_be_shared(tmp_path):
    pixels = SC_CASES["uint8"]
    paths = [write_secondary_capture(_nifti_like(pixels), pixels, tmp_path / f"v{i}", series_description="x",
                                     derivation_description="d", provenance={"seed": i}, software_version="1",
                                     model_name="m", study_instance_uid="2.25.1234")[0] for i in range(2)]
    outs = [pydicom.dcmread(p) for p in paths]
    assert {o.StudyInstanceUID for o in outs} == {"2.25.1234"} and outs[0].SeriesInstanceUID != outs[1].SeriesInstanceUID


@needs_dciodvfy
def test_sc_dciodvfy_finds_no_error(sc):
    report = run_dciodvfy(sc[2][0])
    assert report.errors == [], report.output


# ---------------------------------------------------------------------- provenance


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(os.urandom(3 << 20))
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def _fake_diffusers_folder(root: Path) -> Path:
    (root / "unet").mkdir(parents=True)
    (root / "vae").mkdir()
    (root / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"unet-weights")
    (root / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"vae-weights")
    (root / "model_index.json").write_text("{}")
    return root


def test_sha256_model_of_a_folder_is_the_digest_of_its_manifest(tmp_path):
    root = _fake_diffusers_folder(tmp_path / "m")
    manifest = "".join(f"{hashlib.sha256(data).hexdigest()}  {rel}\n" for rel, data in [
        ("unet/diffusion_pytorch_model.safetensors", b"unet-weights"),
        ("vae/diffusion_pytorch_model.safetensors", b"vae-weights")])
    assert sha256_model(root) == hashlib.sha256(manifest.encode()).hexdigest()


def test_sha256_model_changes_with_any_weight_file(tmp_path):
    root = _fake_diffusers_folder(tmp_path / "m")
    before = sha256_model(root)
    (root / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"other")
    assert sha256_model(root) != before


def test_sha256_model_ignores_configs(tmp_path):
    root = _fake_diffusers_folder(tmp_path / "m")
    before = sha256_model(root)
    (root / "model_index.json").write_text('{"changed": true}')
    assert sha256_model(root) == before


def test_sha256_model_of_a_single_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights")
    assert sha256_model(path) == hashlib.sha256(b"weights").hexdigest()


def test_model_folder_without_weights_is_an_input_error(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(InputError, match="no weight files"):
        model_weight_manifest(tmp_path / "m")


def test_build_provenance_records_inputs_model_and_seeds(tmp_path):
    scan = tmp_path / "scan.dcm"
    scan.write_bytes(b"scan")
    root = _fake_diffusers_folder(tmp_path / "model")
    adapter = tmp_path / "lora.safetensors"
    adapter.write_bytes(b"lora")
    record = build_provenance(input_paths=[scan], model_path=root, parameters={"prompt": PROMPT, "steps": 20},
                              seeds=[11, 12], device="cpu", dtype="float32",
                              adapters=[{"kind": "lora", "path": adapter, "scale": 0.8}])
    assert (record["inputs"][0]["sha256"], record["model"]["sha256"], record["adapters"][0]["sha256"],
            record["variants"], record["parameters"]["prompt"]) == (
        hashlib.sha256(b"scan").hexdigest(), sha256_model(root), hashlib.sha256(b"lora").hexdigest(),
        [{"index": 0, "seed": 11}, {"index": 1, "seed": 12}], PROMPT)


def test_for_variant_names_one_seed(tmp_path):
    scan = tmp_path / "scan.dcm"
    scan.write_bytes(b"scan")
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"m")
    record = build_provenance(input_paths=[scan], model_path=model, parameters={}, seeds=[5, 6], device="cpu",
                              dtype="float16")
    assert for_variant(record, 1)["variant"] == {"index": 1, "seed": 6}


def test_build_provenance_needs_seeds(tmp_path):
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"m")
    with pytest.raises(ValueError, match="seeds"):
        build_provenance(input_paths=[], model_path=model, parameters={}, seeds=[], device="cpu", dtype="float32")


def test_library_versions_come_from_metadata():
    versions = library_versions(["pydicom", "surely-not-installed-pkg"])
    assert versions == {"pydicom": pydicom.__version__, "surely-not-installed-pkg": None}


def test_dicom_package_never_imports_torch():
    code = ("import sys, medgen.dicom.writer, medgen.dicom.provenance, medgen.dicom.dciodvfy, medgen.dicom.codes;"
            "from medgen.dicom.provenance import library_versions; library_versions();"
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_write_provenance_json_round_trips(tmp_path):
    record = {"prompt": "Läsion", "seed": 3, "path": Path("/x")}
    path = write_provenance_json(tmp_path / "p" / "provenance.json", record)
    assert json.loads(path.read_text(encoding="utf-8")) == {"prompt": "Läsion", "seed": 3, "path": "/x"}


def test_write_provenance_json_leaves_no_temp_file(tmp_path):
    write_provenance_json(tmp_path / "provenance.json", {"a": 1})
    assert _leftovers(tmp_path) == ["provenance.json"]


def test_write_provenance_json_unwritable_is_an_output_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError):
        write_provenance_json(blocker / "provenance.json", {"a": 1})


def test_derivation_description_states_prompt_model_adapters_seed():
    text = format_derivation_description(prompt=PROMPT, model_name="roentgen", adapters=["lora-a", "ti-b"], seed=99)
    assert all(part in text for part in (PROMPT, "roentgen", "lora-a, ti-b", "seed: 99"))


def test_derivation_description_fits_st():
    assert len(format_derivation_description(prompt="p" * 5000, model_name="m", seed=1)) == 1024


def test_sc_uids_depend_on_content_not_on_when_it_was_written(tmp_path):
    pixels = SC_CASES["uint8"]
    outs = [pydicom.dcmread(write_secondary_capture(
        _nifti_like(pixels), pixels, tmp_path / f"v{i}", series_description="x", derivation_description="d",
        provenance={"seed": 1, "created_utc": f"2026-01-0{i + 1}T00:00:00+00:00"}, software_version="1",
        model_name="m")[0]) for i in range(2)]
    assert outs[0].SOPInstanceUID == outs[1].SOPInstanceUID
    assert outs[0].SeriesInstanceUID == outs[1].SeriesInstanceUID
    assert outs[0].StudyInstanceUID == outs[1].StudyInstanceUID
