"""dciodvfy wrapper: parsing its output, normalising messages, and finding errors new in an output."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from medgen.dicom.dciodvfy import DciodvfyReport, is_available, new_errors, normalise, parse_output, run_dciodvfy

needs_dciodvfy = pytest.mark.skipif(not is_available(), reason="dciodvfy (dicom3tools) is not installed")

# Lines as dciodvfy (dicom3tools 2022) prints them for a synthetic CT.
SAMPLE = """\
(0x0008,0x001c)  ?  - Warning - Unrecognized tag - assuming explicit value representation OK
CTImage
Warning - Value is zero for value 1 of attribute <Patient's Weight>
Error - Missing attribute Type 2C Conditional Element=<Laterality> Module=<GeneralSeries>
Error - Attribute with an even group number is not a recognized standard attribute - (0x0008,0x001c)  ? 
Warning - Attribute is not present in standard DICOM IOD - (0x0008,0x001c)  ? 
Warning - Dicom dataset contains attributes not present in standard DICOM IOD - this is a Standard Extended SOP Class
"""


def _data_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.fail(f"pydicom test file {name} is not installed (pip install pydicom-data)")
    return Path(path)


def _report(*errors: str) -> DciodvfyReport:
    return DciodvfyReport(Path("x.dcm"), "CTImage", list(errors))


def test_parse_finds_the_iod():
    assert parse_output("x.dcm", SAMPLE).iod == "CTImage"


def test_parse_separates_errors():
    assert parse_output("x.dcm", SAMPLE).errors == [
        "Error - Missing attribute Type 2C Conditional Element=<Laterality> Module=<GeneralSeries>"]


def test_parse_separates_warnings():
    assert len(parse_output("x.dcm", SAMPLE).warnings) == 2


def test_synthetic_data_lines_are_expected_not_errors():
    report = parse_output("x.dcm", SAMPLE)
    assert len(report.expected) == 3 and all("0x001c" in line for line in report.expected)


def test_error_after_a_tag_prefix_is_an_error():
    line = "(0x0018,0x9090)  ?  - Error - Orientation vector is not unit vector"
    assert parse_output("x.dcm", line).errors == [line]


def test_normalise_removes_uids():
    assert normalise("Error - bad <1.2.840.113619.2.55.3.1> here") == normalise("Error - bad <2.25.999> here")


def test_normalise_removes_quoted_values():
    assert normalise("Warning - attribute <RescaleSlope> = <3.774114>") == "Warning - attribute <RescaleSlope> = <>"


def test_normalise_removes_lengths():
    assert normalise("Error - Bad Length=<12> for x") == normalise("Error - Bad Length=<1024> for x")


def test_normalise_keeps_the_attribute_named():
    assert normalise("Error - Missing attribute Element=<Laterality>") != normalise(
        "Error - Missing attribute Element=<Manufacturer>")


def test_new_errors_ignores_errors_the_source_had():
    message = "Error - Missing attribute Type 2C Conditional Element=<Laterality> Module=<GeneralSeries>"
    assert new_errors(_report(message), _report(message)) == []


def test_new_errors_reports_an_added_error():
    added = "Error - Missing attribute Type 1 Required Element=<Modality> Module=<GeneralSeries>"
    assert new_errors(_report(added), _report()) == [added]


def test_new_errors_counts_repeats():
    message = "Error - Missing attribute Type 1 Required Element=<CodeMeaning> Module=<BasicCodeSequenceMacro>"
    assert new_errors(_report(message, message), _report(message)) == [message]


def test_new_errors_compares_after_normalising():
    out = _report("Error - Bad value <2.25.1> for ReferencedSOPInstanceUID")
    src = _report("Error - Bad value <1.2.3.4.5> for ReferencedSOPInstanceUID")
    assert new_errors(out, src) == []


@needs_dciodvfy
def test_is_available_here():
    assert is_available()


@needs_dciodvfy
def test_run_on_a_clean_source():
    report = run_dciodvfy(_data_file("CT_small.dcm"))
    assert (report.iod, report.errors) == ("CTImage", [])


@needs_dciodvfy
def test_run_reports_a_missing_type_1_attribute(tmp_path):
    ds = pydicom.dcmread(_data_file("CT_small.dcm"))
    del ds.Modality
    ds.save_as(tmp_path / "broken.dcm")
    report = run_dciodvfy(tmp_path / "broken.dcm")
    assert any("Modality" in e for e in new_errors(report, run_dciodvfy(_data_file("CT_small.dcm"))))


@needs_dciodvfy
def test_run_treats_synthetic_data_as_expected(tmp_path):
    ds = pydicom.dcmread(_data_file("CT_small.dcm"))
    ds.SyntheticData = "YES"
    ds.save_as(tmp_path / "synthetic.dcm")
    report = run_dciodvfy(tmp_path / "synthetic.dcm")
    assert report.expected and report.errors == []


def test_run_without_dciodvfy_raises(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="dicom3tools"):
        run_dciodvfy("x.dcm")


def test_validate_says_whether_dciodvfy_ran(tmp_path, monkeypatch, capsys):
    """A table without a dciodvfy row must not read as a pass: the last line says what happened."""
    from medgen.cli import main

    source = _data_file("CT_small.dcm")
    if is_available():
        main(["validate", str(source)])
        assert capsys.readouterr().out.strip().splitlines()[-1] == "dciodvfy: ran on each of the 1 file(s)"
    main(["validate", str(source), "--no-dciodvfy"])
    assert "dciodvfy: skipped (--no-dciodvfy)" in capsys.readouterr().out.strip().splitlines()[-1]
    monkeypatch.setenv("PATH", str(tmp_path))  # no dciodvfy to be found
    main(["validate", str(source)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("dciodvfy: not installed") and "apt-get install dicom3tools" in last
