"""`POST /v1/jobs/{id}/export` against a real Orthanc, through the real engine server in a child process.

The server is configured with two destinations that both reach the fixture's Orthanc: `pacs` (DIMSE
C-STORE, from --destination) and `web` (STOW-RS with a login, from a --destinations file). What is
checked is what Orthanc holds afterwards, read back through its REST API.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
import zipfile

import pydicom
import pytest

from medgen.server.main import parse_destinations, serve_main
from medgen.server.process import ServerProcess
from orthanc_fixture import CALLING_AET, dicomweb_plugin, orthanc_executable, OrthancServer
from orthanc_fixture import orthanc  # noqa: F401,E402 (the module-scoped fixture)
from test_server import assert_error, client, inputs, post_job, wait_for  # noqa: F401 - inputs is a fixture

pytestmark = pytest.mark.skipif(
    orthanc_executable() is None, reason="Orthanc is not installed (set-up installs Debian packages orthanc, "
    "orthanc-dicomweb)"
)
HAS_DICOMWEB = dicomweb_plugin() is not None
LONG_STEPS = 200


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir, orthanc):
    root = tmp_path_factory.mktemp("server-export")
    options = ["--destination", f"pacs={orthanc.dicom_destination}?calling_aet={CALLING_AET}"]
    if HAS_DICOMWEB:
        (root / "orthanc-password").write_text(orthanc.password + "\n")
        (root / "destinations.json").write_text(json.dumps({"web": {
            "url": f"dicomweb+{orthanc.dicomweb_url}", "user": orthanc.user, "password_file": "orthanc-password"}}))
        options += ["--destinations", str(root / "destinations.json")]
    process = ServerProcess(root / "data", tiny_model_dir, "--cpu-threads", "1", "--max-steps", str(LONG_STEPS),
                            *options)
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def finished_job(server, inputs):  # noqa: F811 - the fixture imported above
    """A succeeded one-variant job and the SOP Instance UIDs of its synthetic series."""
    with client(server) as http:
        job_id = post_job(http, inputs, seed=5).json()["id"]
        assert wait_for(http, job_id)["state"] == "succeeded"
        archive = zipfile.ZipFile(io.BytesIO(http.get(f"/v1/jobs/{job_id}/result/variants/1/dicom.zip").content))
    uids = {str(pydicom.dcmread(io.BytesIO(archive.read(name)), stop_before_pixels=True).SOPInstanceUID)
            for name in archive.namelist()}
    assert uids
    return job_id, uids


def export(http, job_id: str, timeout: float = 60.0, **body) -> dict:
    """POST the export, then poll it as the panel does until it has finished."""
    started = http.post(f"/v1/jobs/{job_id}/export", json=body)
    assert started.status_code == 202, started.text
    assert started.json()["state"] in ("queued", "running", "succeeded")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = http.get(started.json()["status_url"]).json()
        if status["state"] in ("succeeded", "failed"):
            return status
        time.sleep(0.1)
    raise AssertionError(f"export still {status['state']} after {timeout} s")


def synthetic_data(orthanc: OrthancServer, instance_id: str) -> str:
    return orthanc.get(f"/instances/{instance_id}/content/0008-001c").decode().strip("\x00 ")


# ---------------------------------------------------------------------- configuration


def test_destinations_are_checked_when_the_server_starts(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "password").write_text("s3cret\n")
    (tmp_path / "good.json").write_text(json.dumps({
        "web": {"url": "dicomweb+https://pacs.example/dicom-web", "user": "u", "password_file": "password"},
        "tls": {"url": "dicom://PACS@pacs.example:2762", "calling_aet": "SLICER"},
    }))
    pacs, web, tls = parse_destinations(["pacs=dicom://PACS@127.0.0.1:4242?calling_aet=ME"], tmp_path / "good.json")
    assert (pacs.target.called_aet, pacs.target.port, pacs.target.calling_aet) == ("PACS", 4242, "ME")
    assert web.target.password == "s3cret" and "s3cret" not in web.address and "u@" not in web.address
    assert tls.target.calling_aet == "SLICER"

    (tmp_path / "typo.json").write_text(json.dumps({"web": {"url": "dicomweb+http://h/x", "hostname": "h"}}))
    (tmp_path / "nopassword.json").write_text(json.dumps({"web": {"url": "dicomweb+http://h/x", "user": "u",
                                                                  "password_file": "missing"}}))
    refusals = {
        ("--destination", "pacs"): "NAME=URL",
        ("--destination", "p=ftp://pacs:21"): "dicom://CALLED_AET@HOST:PORT",
        ("--destination", "p=dicom://PACS@h:4242?callingaet=X"): "calling_aet",
        ("--destination", "w=dicomweb+http://u:hunter2@h/dicom-web"): "password_file",
        ("--destination", "p=dicom://A@h:1", "--destination", "p=dicom://B@h:2"): "twice",
        ("--destinations", str(tmp_path / "typo.json")): "hostname",
        ("--destinations", str(tmp_path / "nopassword.json")): "password_file",
    }
    for options, expected in refusals.items():
        assert serve_main(["--model", str(tiny_model_dir), "--data-dir", str(tmp_path / "d"), *options]) == 2
        err = capsys.readouterr().err
        assert expected in err and "hunter2" not in err, err


def test_info_lists_destination_names_and_never_credentials(server, orthanc):
    with client(server) as http:
        response = http.get("/v1/info")
    names = [(d["name"], d["kind"]) for d in response.json()["destinations"]]
    assert names == [("pacs", "dicom")] + ([("web", "dicomweb")] if HAS_DICOMWEB else [])
    assert str(orthanc.dicom_port) in response.json()["destinations"][0]["address"]
    assert orthanc.password not in response.text and "password" not in response.text


# ---------------------------------------------------------------------- refusals


def test_export_refuses_unknown_destinations_hosts_and_unfinished_jobs(server, inputs, finished_job):  # noqa: F811
    job_id, _ = finished_job
    with client(server) as http:
        assert_error(http.post(f"/v1/jobs/{job_id}/export", json={"destination": "archive"}), 400, "'archive'",
                     "pacs")
        assert_error(http.post(f"/v1/jobs/{job_id}/export",
                               json={"destination": "pacs", "host": "10.0.0.9", "port": 104}), 400, "host")
        assert_error(http.post(f"/v1/jobs/{job_id}/export", json={"destination": "pacs", "variant": 2}), 400,
                     "variants 1..1")
        assert_error(http.post("/v1/jobs/0123456789abcdef/export", json={"destination": "pacs"}), 404, "no job")
        assert_error(http.get(f"/v1/jobs/{job_id}/exports/nope"), 404, "no export")
        with client(server, token=None) as anonymous:
            assert_error(anonymous.post(f"/v1/jobs/{job_id}/export", json={"destination": "pacs"}), 401)

        running = post_job(http, inputs, num_inference_steps=LONG_STEPS).json()["id"]
        assert_error(http.post(f"/v1/jobs/{running}/export", json={"destination": "pacs"}), 409, "finished")
        http.post(f"/v1/jobs/{running}/cancel")
        assert wait_for(http, running, timeout=60)["state"] == "cancelled"
        assert_error(http.post(f"/v1/jobs/{running}/export", json={"destination": "pacs"}), 409, "cancelled")


# ---------------------------------------------------------------------- exports that arrive


def test_exported_variant_is_in_orthanc_marked_synthetic_and_never_sent_twice(server, orthanc, finished_job):
    job_id, uids = finished_job
    orthanc.clear()
    with client(server) as http:
        status = export(http, job_id, destination="pacs", variant=1)
        assert status["state"] == "succeeded", status
        assert status["total"] == status["delivered"] == len(uids) and status["failed"] == 0
        assert [r["status"] for r in status["results"]] == ["success"] * len(uids)
        assert {r["sop_instance_uid"] for r in status["results"]} == uids
        assert f"sent {len(uids)} instance(s)" in status["message"]

        instance_ids = orthanc.instance_ids()
        assert {orthanc.instance_tags(i)["SOPInstanceUID"] for i in instance_ids} == uids
        assert all(synthetic_data(orthanc, i) == "YES" for i in instance_ids)

        again = export(http, job_id, destination="pacs")
        assert again["state"] == "succeeded" and again["id"] != status["id"]
        assert [r["status"] for r in again["results"]] == ["already sent"] * len(uids)
        assert "not sent twice" in again["message"]
    assert len(orthanc.instance_ids()) == len(uids)


def test_deidentified_export_arrives_under_new_uids(server, orthanc, finished_job):
    job_id, uids = finished_job
    orthanc.clear()
    with client(server) as http:
        status = export(http, job_id, destination="pacs", deidentify=True)
    assert status["state"] == "succeeded", status
    stored = set(orthanc.sop_instance_uids())
    assert len(stored) == len(uids) and not stored & uids
    assert stored == {r["sop_instance_uid"] for r in status["results"]}


@pytest.mark.skipif(not HAS_DICOMWEB, reason="the Orthanc DICOMweb plugin is not installed (orthanc-dicomweb)")
def test_dicomweb_destination_with_a_login_from_the_file(server, orthanc, finished_job):
    job_id, uids = finished_job
    orthanc.clear()
    with client(server) as http:
        status = export(http, job_id, destination="web")
    assert status["state"] == "succeeded", status
    assert set(orthanc.sop_instance_uids()) == uids
    assert all(synthetic_data(orthanc, i) == "YES" for i in orthanc.instance_ids())


def test_deleting_an_exported_job_removes_its_export_copies_and_records(server, orthanc, inputs):  # noqa: F811
    """Issue 19: DELETE removes the export's unpacked series and resume records with the job."""
    orthanc.clear()
    with client(server) as http:
        job_id = post_job(http, inputs, seed=9).json()["id"]
        assert wait_for(http, job_id)["state"] == "succeeded"
        status = export(http, job_id, destination="pacs")
        assert status["state"] == "succeeded", status
        exports_dir = server.data_dir / "jobs" / job_id / "exports"
        assert exports_dir.is_dir() and any(exports_dir.rglob("*"))
        assert http.delete(f"/v1/jobs/{job_id}").status_code == 200
        assert_error(http.get(status["status_url"]), 410, "deleted")
    assert not (server.data_dir / "jobs" / job_id).exists()
    rows = sqlite3.connect(server.data_dir / "jobs.sqlite3").execute(
        "SELECT COUNT(*) FROM exports WHERE job_id = ?", (job_id,)).fetchone()
    assert rows == (0,)
