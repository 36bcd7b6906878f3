"""PACS export against a real Orthanc (started by the fixture on loopback, stopped by its own pid).

What is checked is what the destination holds afterwards, read back through Orthanc's REST API:
instance counts, Synthetic Data, byte-identical datasets, every instance exactly once after an
interrupted export, and a clear sentence for each refusal. De-identification is checked on the
files themselves and after a round trip through the PACS.
"""

from __future__ import annotations

import io
import re
import threading

import pydicom
import pytest

from medgen.dicom.deidentify import Deidentifier
from medgen.dicom.export import (
    AssociationRejectedError,
    DimseDestination,
    ExportOptions,
    ExportRecord,
    InstanceStatus,
    PeerSilentError,
    export_series,
)
from medgen.dicom.validate import CheckStatus, validate_paths
from medgen.errors import InputError
from orthanc_fixture import CALLING_AET, dicomweb_plugin, make_tls_files, orthanc_executable, OrthancServer
from orthanc_fixture import orthanc  # noqa: F401,E402 (the module-scoped fixture)
from test_dicom_validate import make_classic_series, write_synthetic_case

pytestmark = pytest.mark.skipif(
    orthanc_executable() is None, reason="Orthanc is not installed (set-up installs Debian packages orthanc, "
    "orthanc-dicomweb)"
)
FAST_RETRIES = ExportOptions(max_retries=8, backoff_s=0.25, backoff_max_s=2.0, acse_timeout=10, dimse_timeout=10)
N_SLICES = 5


def export_main(argv: list[str]) -> int:
    """`medgen export ARGS` exactly as a user runs it (exit codes included)."""
    from medgen.cli import main

    return main(["export", *argv])


# ---------------------------------------------------------------------- fixtures


@pytest.fixture
def pacs(orthanc):
    """The module's Orthanc, emptied (and running) for each test."""
    if orthanc.process is None:
        orthanc.start()
    orthanc.clear()
    return orthanc


@pytest.fixture(scope="module")
def ct_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    return write_synthetic_case(root, make_classic_series(root / "source", N_SLICES, patient_id="PAT-A"), [1, 2])


def _uids(files) -> set[str]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def _dataset_bytes(data: bytes) -> bytes:
    """The encoded dataset after the file meta: the part a PACS must store unchanged.

    The meta starts at byte 132 with (0002,0000) UL, whose 4-byte value is the length of the rest of it.
    """
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00"
    return data[132 + 12 + int.from_bytes(data[140:144], "little"):]


def _synthetic_data(server: OrthancServer, instance_id: str) -> str:
    # Orthanc 1.10's dictionary predates Synthetic Data, so read the raw tag
    return server.get(f"/instances/{instance_id}/content/0008-001c").decode().strip("\x00 ")


def _rows(table: str, status: str) -> int:
    """How many per-instance rows of the printed table have this status."""
    return sum(1 for line in table.splitlines() if re.split(r"\s{2,}", line)[1:2] == [status])


def _dest(server: OrthancServer) -> DimseDestination:
    return DimseDestination.parse(server.dicom_destination, calling_aet=CALLING_AET)


# ---------------------------------------------------------------------- export and read back


def test_export_reads_back_identical_and_a_second_run_sends_nothing(pacs, ct_case, tmp_path, capsys):
    record = tmp_path / "record.jsonl"
    args = [str(ct_case.variant_dir), "--to", pacs.dicom_destination, "--calling-aet", CALLING_AET,
            "--record", str(record)]
    assert export_main(args) == 0
    out = capsys.readouterr().out
    assert _rows(out, "success") == N_SLICES, out

    ids = pacs.instance_ids()
    assert len(ids) == N_SLICES
    ours = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in ct_case.files}
    for instance_id in ids:
        stored = pacs.instance_file(instance_id)
        uid = str(pydicom.dcmread(io.BytesIO(stored), stop_before_pixels=True).SOPInstanceUID)
        assert _synthetic_data(pacs, instance_id) == "YES"
        assert _dataset_bytes(stored) == _dataset_bytes(ours[uid].read_bytes()), uid

    assert export_main(args) == 0
    out = capsys.readouterr().out
    assert _rows(out, "already sent") == N_SLICES and _rows(out, "success") == 0, out
    assert len(pacs.instance_ids()) == N_SLICES


def test_wrong_called_aet_is_refused_with_a_sentence(pacs, ct_case, tmp_path, capsys):
    wrong = f"dicom://NOTTHEPACS@127.0.0.1:{pacs.dicom_port}"
    code = export_main([str(ct_case.variant_dir), "--to", wrong, "--calling-aet", CALLING_AET,
                        "--record", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err
    assert code == 1
    assert "AE title is not 'NOTTHEPACS'" in err and "check CALLED_AET" in err
    assert pacs.instance_ids() == []


def test_unregistered_calling_aet_is_refused_with_a_sentence(pacs, ct_case, tmp_path):
    stranger = DimseDestination.parse(pacs.dicom_destination, calling_aet="STRANGER")
    with pytest.raises(AssociationRejectedError, match="does not know the calling AE title 'STRANGER'") as caught:
        export_series([ct_case.variant_dir], stranger, record_path=tmp_path / "r.jsonl", options=FAST_RETRIES)
    assert {r.status for r in caught.value.report.results} == {InstanceStatus.NOT_SENT}
    assert pacs.instance_ids() == []


def test_refused_sop_class_fails_that_instance_only(pacs, ct_case, tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    for f in ct_case.files[:2]:
        (folder / f.name).write_bytes(f.read_bytes())
    odd = pydicom.dcmread(ct_case.files[2])
    odd.SOPClassUID = odd.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.8.498.4242"  # unknown to Orthanc
    odd.SOPInstanceUID = odd.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    odd.save_as(folder / "odd.dcm")
    report = export_series([folder], _dest(pacs), record_path=tmp_path / "r.jsonl", options=FAST_RETRIES)
    by_name = {r.path.name: r for r in report.results}
    assert by_name["odd.dcm"].status is InstanceStatus.FAILURE
    assert "does not accept" in by_name["odd.dcm"].message
    assert [by_name[f.name].status for f in ct_case.files[:2]] == [InstanceStatus.SUCCESS] * 2
    assert not report.ok and len(pacs.instance_ids()) == 2


# ---------------------------------------------------------------------- interruptions


def _stop_after(server: OrthancServer, count: int, restart_after_s: float | None):
    """An on_result callback that kills Orthanc after ``count`` stored instances (and restarts it later)."""
    state = {"seen": 0, "thread": None}

    def on_result(result):
        state["seen"] += 1
        if state["seen"] == count:
            server.kill()
            if restart_after_s is not None:
                state["thread"] = threading.Timer(restart_after_s, server.start)
                state["thread"].start()

    return on_result, state


def test_orthanc_stopped_mid_export_then_restarted_finishes_with_each_instance_once(pacs, ct_case, tmp_path):
    on_result, state = _stop_after(pacs, 2, restart_after_s=1.0)
    report = export_series([ct_case.variant_dir], _dest(pacs), record_path=tmp_path / "r.jsonl",
                           options=FAST_RETRIES, on_result=on_result)
    state["thread"].join()
    assert report.ok, report.table()
    assert [r.status for r in report.results] == [InstanceStatus.SUCCESS] * N_SLICES
    stored = pacs.sop_instance_uids()
    assert sorted(stored) == sorted(_uids(ct_case.files))  # all there, none twice


def test_failed_export_is_resumed_by_a_second_run_without_resending(pacs, ct_case, tmp_path, capsys):
    record = tmp_path / "r.jsonl"
    on_result, _ = _stop_after(pacs, 2, restart_after_s=None)
    no_retry = ExportOptions(max_retries=0, acse_timeout=5, dimse_timeout=5)
    with pytest.raises(PeerSilentError, match="Run the same command again") as caught:
        export_series([ct_case.variant_dir], _dest(pacs), record_path=record, options=no_retry, on_result=on_result)
    statuses = [r.status for r in caught.value.report.results]
    assert statuses.count(InstanceStatus.SUCCESS) == 2 and statuses.count(InstanceStatus.NOT_SENT) == 3

    pacs.start()
    assert export_main([str(ct_case.variant_dir), "--to", pacs.dicom_destination, "--calling-aet", CALLING_AET,
                        "--record", str(record)]) == 0
    out = capsys.readouterr().out
    assert _rows(out, "already sent") == 2 and _rows(out, "success") == 3, out
    assert sorted(pacs.sop_instance_uids()) == sorted(_uids(ct_case.files))


def test_nothing_listening_is_a_connection_error_after_retries(ct_case, tmp_path):
    from medgen.dicom.export import ConnectionFailedError
    from orthanc_fixture import free_port

    nowhere = DimseDestination.parse(f"dicom://PACS@127.0.0.1:{free_port()}", calling_aet=CALLING_AET)
    with pytest.raises(ConnectionFailedError, match="nothing accepts connections"):
        export_series([ct_case.variant_dir], nowhere, record_path=tmp_path / "r.jsonl",
                      options=ExportOptions(max_retries=1, backoff_s=0.1))


# ---------------------------------------------------------------------- STOW-RS


@pytest.mark.skipif(dicomweb_plugin() is None, reason="Orthanc's DICOMweb plugin (orthanc-dicomweb) is not installed")
def test_stow_rs_stores_and_reads_back_the_failed_instances(pacs, ct_case, tmp_path, capsys):
    password = tmp_path / "password"
    password.write_text(pacs.password + "\n")
    folder = tmp_path / "series"
    folder.mkdir()
    for f in ct_case.files:
        (folder / f.name).write_bytes(f.read_bytes())
    broken = pydicom.dcmread(ct_case.files[0])
    del broken.SeriesInstanceUID  # Orthanc cannot index it and lists it as failed
    broken.SOPInstanceUID = broken.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    broken.save_as(folder / "broken.dcm")

    args = [str(folder), "--to", "dicomweb", pacs.dicomweb_url, "--user", pacs.user,
            "--password-file", str(password), "--record", str(tmp_path / "r.jsonl")]
    assert export_main(args) == 1
    out = capsys.readouterr().out
    broken_line = next(line for line in out.splitlines() if "broken.dcm" in line)
    assert "failure" in broken_line and "failed in the STOW-RS response" in broken_line
    assert _rows(out, "success") == N_SLICES, out
    ids = pacs.instance_ids()
    assert len(ids) == N_SLICES and all(_synthetic_data(pacs, i) == "YES" for i in ids)


@pytest.mark.skipif(dicomweb_plugin() is None, reason="Orthanc's DICOMweb plugin (orthanc-dicomweb) is not installed")
def test_stow_rs_wrong_password_is_a_sentence(pacs, ct_case, tmp_path, capsys):
    password = tmp_path / "password"
    password.write_text("not-the-password\n")
    assert export_main([str(ct_case.variant_dir), "--to", "dicomweb", pacs.dicomweb_url, "--user", pacs.user,
                        "--password-file", str(password), "--record", str(tmp_path / "r.jsonl")]) == 1
    assert "refused the credentials" in capsys.readouterr().err
    assert pacs.instance_ids() == []


# ---------------------------------------------------------------------- DICOM TLS


@pytest.fixture(scope="module")
def tls_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("orthanc-tls")
    trusted, stranger = make_tls_files(root / "pki"), make_tls_files(root / "other-pki", common_name_prefix="other")
    server = OrthancServer(root / "server", tls=trusted, dicomweb=False).start()
    try:
        yield server, trusted, stranger
    finally:
        server.stop()


def _tls_args(server, ca, cert, key, record):
    return ["--to", server.dicom_destination, "--calling-aet", CALLING_AET, "--tls-ca", str(ca), "--tls-cert",
            str(cert), "--tls-key", str(key), "--record", str(record), "--retries", "0"]


def test_tls_export_succeeds_with_trusted_certificates(tls_setup, ct_case, tmp_path):
    server, trusted, _ = tls_setup
    server.clear()
    args = _tls_args(server, trusted.ca_cert, trusted.client_cert, trusted.client_key, tmp_path / "r.jsonl")
    assert export_main([str(ct_case.variant_dir), *args]) == 0
    assert sorted(server.sop_instance_uids()) == sorted(_uids(ct_case.files))


@pytest.mark.parametrize("failure", ["untrusted-server", "untrusted-client", "no-tls"])
def test_tls_failures_are_sentences(tls_setup, ct_case, tmp_path, capsys, failure):
    server, trusted, stranger = tls_setup
    record = tmp_path / "r.jsonl"
    if failure == "untrusted-server":  # we do not trust the PACS's CA
        args = _tls_args(server, stranger.ca_cert, stranger.client_cert, stranger.client_key, record)
        expected = "certificate is not trusted"
    elif failure == "untrusted-client":  # the PACS does not trust our client certificate
        args = _tls_args(server, trusted.ca_cert, stranger.client_cert, stranger.client_key, record)
        expected = "TLS handshake failed"
    else:
        args = ["--to", server.dicom_destination, "--calling-aet", CALLING_AET, "--record", str(record),
                "--retries", "0"]
        expected = "does it expect TLS"
    assert export_main([str(ct_case.variant_dir), *args]) == 1
    assert expected in capsys.readouterr().err


# ---------------------------------------------------------------------- de-identification


@pytest.fixture(scope="module")
def two_patients(tmp_path_factory, ct_case):
    """Patient A: two synthetic series of one study; patient B: one series of another study."""
    root = tmp_path_factory.mktemp("second")
    second_a = write_synthetic_case(root / "a", ct_case.source, [3])
    root_b = tmp_path_factory.mktemp("patient-b")
    b = write_synthetic_case(root_b, make_classic_series(root_b / "source", 3, patient_id="PAT-B",
                                                         study_uid=pydicom.uid.generate_uid()), [1])
    return [ct_case, second_a, b]


def _all_uid_values(ds) -> set[str]:
    values = set()
    for element in ds.iterall():
        if element.VR == "UI" and element.value:
            values.update(str(v) for v in (element.value if element.VM > 1 else [element.value]))
    return values


def test_deidentify_keeps_the_synthetic_marks_and_replaces_identity_everywhere(two_patients):
    deidentifier = Deidentifier.new()
    originals = [pydicom.dcmread(f) for case in two_patients for f in case.files]
    original_uids = {str(u) for ds in originals for u in _all_uid_values(ds)
                     if not pydicom.uid.UID(u).is_transfer_syntax and pydicom.uid.UID(u).name == str(u)}
    results = [deidentifier.deidentify(ds) for ds in originals]
    for before, after in zip(originals, results):
        assert after.SyntheticData == "YES"
        assert list(after.ImageType) == list(before.ImageType)
        synthesizing = [e for e in after.ContributingEquipmentSequence
                        if e.PurposeOfReferenceCodeSequence[0].CodeValue == "109100"]
        assert synthesizing and synthesizing[0].Manufacturer == "MedGenSlicer"
        assert after.SeriesDescription.startswith("SYNTHETIC")
        assert after.PatientIdentityRemoved == "YES"
        assert after.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert after.PatientID != before.PatientID and after.PatientID.startswith("MEDGEN-")
        assert not [t for t in after.keys() if t.is_private]
        assert not (_all_uid_values(after) & original_uids)
        assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
        # the reference to the source still resolves to the source's pseudonymised UID
        assert after.SourceImageSequence[0].ReferencedSOPInstanceUID == deidentifier.uid(
            before.SourceImageSequence[0].ReferencedSOPInstanceUID)
    n_a = len(two_patients[0].files) + len(two_patients[1].files)
    patient_ids = [ds.PatientID for ds in results]
    assert len(set(patient_ids[:n_a])) == 1 and patient_ids[-1] != patient_ids[0]
    assert len({ds.StudyInstanceUID for ds in results[:n_a]}) == 1  # one study stays one study
    assert len({ds.SeriesInstanceUID for ds in results[:n_a]}) == 2  # and its two series stay two


def test_same_secret_gives_the_same_pseudonyms(ct_case, tmp_path):
    """What makes a resumed de-identified export idempotent: the record keeps the secret."""
    record = ExportRecord(tmp_path / "r.jsonl", "export-1", "somewhere", want_secret=True)
    reopened = ExportRecord(tmp_path / "r.jsonl", "export-1", "somewhere", want_secret=True)
    assert reopened.secret_hex == record.secret_hex
    ds = pydicom.dcmread(ct_case.files[0])
    first = Deidentifier.from_hex(record.secret_hex).deidentify(ds)
    again = Deidentifier.from_hex(reopened.secret_hex).deidentify(ds)
    assert first.SOPInstanceUID == again.SOPInstanceUID and first.PatientID == again.PatientID
    assert Deidentifier.new().deidentify(ds).SOPInstanceUID != first.SOPInstanceUID
    with pytest.raises(InputError, match="another export"):
        ExportRecord(tmp_path / "r.jsonl", "export-2", "somewhere")


def test_deidentified_series_and_seg_still_validate_and_reference_each_other(ct_case, tmp_path):
    from medgen.dicom.seg import write_inpaint_seg

    seg = write_inpaint_seg(ct_case.files, ct_case.masks, tmp_path / "seg" / "SEG.dcm", "cyst",
                            source_volume=ct_case.volume, software_version="0.1.0", model_name="tiny")
    deidentifier = Deidentifier.new()
    out = tmp_path / "deid"
    for f in [*ct_case.files, seg]:
        deidentifier.deidentify_file(f, out / f.name)
    report = validate_paths([out], run_dciodvfy=False)
    assert report.ok, report.table()
    seg_report = next(r for r in report.files if r.path.name == "SEG.dcm")
    assert [c.status for c in seg_report.checks if c.check == "seg-references"] == [CheckStatus.PASS]


def test_deidentified_export_round_trip(pacs, two_patients, tmp_path):
    folders = [case.variant_dir for case in two_patients]
    report = export_series(folders, _dest(pacs), deidentify=True, record_path=tmp_path / "r.jsonl",
                           options=FAST_RETRIES)
    assert report.ok, report.table()
    stored = [pydicom.dcmread(io.BytesIO(pacs.instance_file(i))) for i in pacs.instance_ids()]
    assert len(stored) == sum(len(case.files) for case in two_patients)
    assert {ds.SyntheticData for ds in stored} == {"YES"}
    assert {ds.PatientID for ds in stored} & {"PAT-A", "PAT-B"} == set()
    assert len({ds.PatientID for ds in stored}) == 2
    assert len(pacs.get("/patients")) == 2 and len(pacs.get("/studies")) == 2 and len(pacs.get("/series")) == 3
    # a second run of the same export sends nothing: same secret, same UIDs, all recorded
    again = export_series(folders, _dest(pacs), deidentify=True, record_path=tmp_path / "r.jsonl")
    assert {r.status for r in again.results} == {InstanceStatus.ALREADY_SENT}
    assert [r.sop_instance_uid for r in again.results] == [r.sop_instance_uid for r in report.results]
