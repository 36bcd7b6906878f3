"""Every real DICOM file that installed packages ship either works or is refused up front.

Found at test time (never copied into the repository): pydicom's test and charset files, pydicom-data,
nibabel, pynetdicom and heudiconv (pip), and Debian's python3-pydicom, octave-dicom, dicomnifti and
dicom3tools where installed (see real_corpus.corpus_roots). A file is run through the engine with a small square mask in its centre; the
outcome must be a success, or a refusal whose reason is on the written list
(``medgen.imaging.unsupported``). A crash, a failure after generation started, an unlisted refusal or
an output that breaks a rule fails the test. The default run reads and pre-flights every file and
generates a representative sample with 2 steps; the full generation run is marked slow.
"""

from pathlib import Path

import pytest

from real_corpus import (
    REFUSED,
    SUCCESS,
    case_id,
    case_package,
    corpus_cases,
    corpus_files,
    is_dicom,
    preflight_case,
    run_case,
)
from testfiles import dicom_testfile

FILES = corpus_files()
pytestmark = pytest.mark.skipif(not FILES, reason="pydicom's test files are not installed")


def package_file(package: str, name: str) -> Path:
    """One corpus file of one package, or a skip where that package is not installed."""
    for file_package, path in corpus_cases():
        if file_package == package and path.name == name:
            return path
    pytest.skip(f"{package} (with {name}) is not installed")

# One of each kind that once crashed or failed late: CT with private tags, MR in implicit VR, NM with
# NumberOfFrames=1, RT Dose (SEG step), an old-style time, colour US with burned-in text
SAMPLE = ("CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm", "rtdose_1frame.dcm", "ExplVR_BigEnd.dcm",
          "US1_UNCR.dcm")


# Files whose decoding alone takes half a minute on two cores (120 JPEG frames): pre-flighted in the slow run
HEAVY = ("color3d_jpeg_baseline.dcm",)


def _preflight_params() -> list:
    return [pytest.param(p, id=case_id(p), marks=[pytest.mark.slow] if p.name in HEAVY else []) for p in FILES]


@pytest.fixture(scope="module")
def demo_inpainter():
    from medgen.api import Inpainter
    from medgen.phantom.model import demo_model_path

    return Inpainter(demo_model_path(), device="cpu")


def _sample_files() -> list[Path]:
    by_name = {path.name: path for path in FILES}
    return [by_name[name] for name in SAMPLE if name in by_name]


@pytest.mark.parametrize("path", _preflight_params())
def test_every_file_passes_the_preflight_or_is_refused_with_a_listed_reason(path, capfd):
    """With --seg, and without it where the SEG is refused (the SEG pre-flight builds the DICOM first).
    Nothing reaches stderr on the way (a library's own lines would come before the engine's one line)."""
    outcome = preflight_case(path, write_seg=True)
    assert outcome.kind in (SUCCESS, REFUSED), f"with --seg: {outcome.kind}: {outcome.message}"
    if outcome.kind == REFUSED:
        outcome = preflight_case(path, write_seg=False)
        assert outcome.kind in (SUCCESS, REFUSED), f"without --seg: {outcome.kind}: {outcome.message}"
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("path", _sample_files(), ids=[p.name for p in _sample_files()])
def test_sample_generates_or_is_refused_with_a_listed_reason(path, demo_inpainter, tmp_path):
    """With --seg, which writes the synthetic series too (the run without it is in the slow test)."""
    outcome = run_case(demo_inpainter, path, tmp_path, write_seg=True, steps=2)
    assert outcome.kind in (SUCCESS, REFUSED), f"{outcome.kind}: {outcome.message}"


@pytest.mark.slow
@pytest.mark.parametrize("write_seg", [False, True], ids=["dicom", "seg"])
@pytest.mark.parametrize("path", FILES, ids=[case_id(p) for p in FILES])
def test_whole_corpus_generates_or_is_refused_with_a_listed_reason(path, write_seg, demo_inpainter, tmp_path):
    outcome = run_case(demo_inpainter, path, tmp_path, write_seg=write_seg, steps=2)
    assert outcome.kind in (SUCCESS, REFUSED), f"{outcome.kind}: {outcome.message}"


def test_sample_names_exist_in_the_corpus():
    """The sample is only representative if its files are really there."""
    names = {path.name for path in FILES}
    missing = [name for name in SAMPLE if name not in names]
    assert not missing, f"sample files missing from the installed corpus: {missing}"


def test_only_dicom_files_are_cases_and_each_once():
    """nibabel ships PAR/REC, MINC and CSA dumps beside its DICOM; heudiconv a NIfTI; none is a case.
    Gzipped DICOM is unpacked and counted; the same bytes in two packages count once."""
    import hashlib

    cases = corpus_cases()
    assert all(is_dicom(path) for _, path in cases)
    names = {path.name.lower() for _, path in cases}
    assert not any(name.endswith((".par", ".rec", ".mnc", ".bin", ".nii", ".gz", ".txt")) for name in names)
    digests = [hashlib.sha1(path.read_bytes()).hexdigest() for _, path in cases]
    assert len(digests) == len(set(digests))
    assert all(case_package(path) == package for package, path in cases)


def test_a_non_dicom_file_is_not_dicom(tmp_path):
    """The forced read of a text or binary file finds no DICOM attributes."""
    (tmp_path / "notes").write_text("PixelData and Modality are words here, not elements\n" * 20)
    (tmp_path / "noise").write_bytes(bytes(range(256)) * 8)
    assert not is_dicom(tmp_path / "notes") and not is_dicom(tmp_path / "noise")


def test_philips_enhanced_mr_with_per_frame_geometry_gets_a_seg():
    """nibabel's 176-frame Philips enhanced MR keeps Pixel Measures and Plane Orientation per frame only;
    highdicom reads them from the shared groups. The SEG is built (it was refused as seg-source)."""
    outcome = preflight_case(package_file("nibabel", "philips_mprage.dcm"), write_seg=True)
    assert outcome.kind == SUCCESS, outcome.message


def test_a_patient_sex_outside_its_values_is_written_empty_with_a_note():
    """nibabel's slicethickness_empty_string.dcm says Patient's Sex 'N/A', which stopped the SEG step;
    it is written empty (unknown), and the repair is noted for the provenance."""
    from medgen.dicom.preflight import preflight
    from medgen.imaging.read import read_volume

    from real_corpus import centre_mask

    volume = read_volume(package_file("nibabel", "slicethickness_empty_string.dcm"))
    mask, k = centre_mask(volume)
    report = preflight(volume, {k: mask[k].astype(bool)}, write_seg=True, write_dicom=False, only_modified=False)
    assert any("PatientSex 'N/A'" in note and "empty" in note for note in report.repairs)


def test_the_private_vr_check_reads_each_element_in_its_written_vr(tmp_path):
    """A private element kept as UN is right (its VR is unknown); pydicom turns a known private tag's UN
    into its dictionary VR on reading, which once made a correct output look wrong. Written as SH with 21
    characters, it is wrong."""
    import pydicom
    from pydicom.dataelem import DataElement

    from real_corpus import _read_as_written, private_element_problem

    value = b"Tra>Cor(2.8)>Sag(0.6) "
    for vr, expected_problem in (("UN", False), ("SH", True)):
        ds = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
        ds.private_block(0x0051, "SIEMENS MR HEADER", create=True)
        ds[0x0051100E] = DataElement(0x0051100E, vr, value if vr == "UN" else value.decode())
        path = tmp_path / f"{vr}.dcm"
        ds.save_as(path)
        assert bool(private_element_problem(_read_as_written(path))) == expected_problem, vr


def test_heudiconv_implicit_vr_siemens_output_passes(demo_inpainter, tmp_path):
    """heudiconv's implicit-VR Siemens files: every private element of the output is readable in the VR it
    was written with (UN where the source never wrote one)."""
    path = package_file("heudiconv", "b0dwi_for_fmap+00001.dcm")
    outcome = run_case(demo_inpainter, path, tmp_path, write_seg=False, steps=2)
    assert outcome.kind == SUCCESS, outcome.message


def test_rt_image_without_number_of_frames_gets_a_seg():
    """pynetdicom's RT Image (a multi-frame IOD, one frame, no Number of Frames, no patient geometry):
    highdicom reads it as multi-frame and needed Number of Frames and shared Pixel Measures (it was
    refused as seg-source)."""
    outcome = preflight_case(package_file("pynetdicom", "RTImageStorage.dcm"), write_seg=True)
    assert outcome.kind == SUCCESS, outcome.message
