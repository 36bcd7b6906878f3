"""Patient data has a lifecycle in the engine (issue 19), checked on disk through the real server.

DELETE removes a job's files and database contents (a tombstone stays; later requests answer 410);
uploads go when a job finishes; a purge removes old jobs and keeps new ones; the quota answers 507;
the access log records reads and deletes and never the token. Tiny random-weight model, 32x32 images.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
import uuid

import pytest

from medgen.server.process import ServerProcess
from test_server import assert_error, client, inputs, post_job, wait_for  # noqa: F401 - inputs is a fixture

QUOTA_MB = 3
LONG_STEPS = 200


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    data_dir = tmp_path_factory.mktemp("lifecycle") / "data"
    process = ServerProcess(data_dir, tiny_model_dir, "--cpu-threads", "1", "--max-upload-mb", "8",
                            "--max-steps", str(LONG_STEPS), "--max-data-size", f"{QUOTA_MB}M")
    process.start()
    yield process
    process.stop()


def finished_job(server, inputs, **changes) -> str:
    with client(server) as http:
        created = post_job(http, inputs, **changes)
        assert created.status_code == 202, created.text
        status = wait_for(http, created.json()["id"])
    assert status["state"] == "succeeded", (status["error"], server.log())
    return status["id"]


def database_bytes(server) -> bytes:
    return b"".join(p.read_bytes() for p in server.data_dir.glob("jobs.sqlite3*"))


def test_deleting_a_finished_job_leaves_no_file_or_parameter_of_its_own(server, inputs):
    prompt = f"lesion {uuid.uuid4().hex}"
    job_id = finished_job(server, inputs, prompt=prompt)
    folder = server.data_dir / "jobs" / job_id
    assert (folder / "result" / "variant-01" / "array.nrrd").is_file()
    assert prompt.encode() in database_bytes(server)
    with client(server) as http:
        deleted = http.delete(f"/v1/jobs/{job_id}")
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["state"] == "succeeded" and deleted.json()["deleted_at"] > 0
        assert deleted.json()["deleted_by"].startswith("client 127.0.0.1")
        for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/result", f"/v1/jobs/{job_id}/result/variants/1/array.nrrd",
                     f"/v1/jobs/{job_id}/result/preview.png"):
            assert_error(http.get(path), 410, "deleted")
        assert_error(http.delete(f"/v1/jobs/{job_id}"), 410, "deleted")
        assert_error(http.post(f"/v1/jobs/{job_id}/cancel"), 410)
    assert not folder.exists()
    assert not [p for p in server.data_dir.rglob("*") if job_id in p.name]
    assert prompt.encode() not in database_bytes(server), "the prompt lingers in the database files"


def test_deleting_a_running_job_cancels_it_and_deletes_it_when_it_stops(server, inputs):
    with client(server) as http:
        job_id = post_job(http, inputs, num_inference_steps=LONG_STEPS).json()["id"]
        wait_for(http, job_id, states=("running",), until=lambda s: s["progress"]["steps_done"] >= 1)
        answer = http.delete(f"/v1/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["delete_requested"] and answer.json()["cancel_requested"]
        folder = server.data_dir / "jobs" / job_id
        deadline = time.monotonic() + 60
        while (http.get(f"/v1/jobs/{job_id}").status_code != 410 or folder.exists()) and time.monotonic() < deadline:
            time.sleep(0.1)  # the worker stops it at its next step, then deletes
        assert_error(http.get(f"/v1/jobs/{job_id}"), 410, "deleted")
    assert not folder.exists()


def test_uploads_are_removed_as_soon_as_a_job_finishes(server, inputs):
    job_id = finished_job(server, inputs)
    folder = server.data_dir / "jobs" / job_id
    assert not (folder / "input").exists()
    assert (folder / "result" / "variant-01" / "dicom.zip").is_file()
    with client(server) as http:
        busy = post_job(http, inputs, num_inference_steps=LONG_STEPS).json()["id"]
        queued = post_job(http, inputs).json()["id"]
        assert (server.data_dir / "jobs" / queued / "input").is_dir()
        assert http.post(f"/v1/jobs/{queued}/cancel").json()["state"] == "cancelled"
        assert not (server.data_dir / "jobs" / queued / "input").exists()
        http.post(f"/v1/jobs/{busy}/cancel")
        assert wait_for(http, busy)["state"] == "cancelled"
    assert not (server.data_dir / "jobs" / busy / "input").exists()


def purge(server, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "medgen.cli", "purge", "--data-dir", str(server.data_dir), *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_purge_with_a_short_retention_removes_old_jobs_and_keeps_new_ones(server, inputs):
    old = finished_job(server, inputs)
    time.sleep(4.0)
    new = finished_job(server, inputs)
    with client(server) as http:
        cutoff = http.get(f"/v1/jobs/{old}").json()["finished_at"] + 1.0  # the purge may take 3 s to start

    def older_than() -> str:
        return f"{time.time() - cutoff:.2f}s"

    dry = purge(server, "--older-than", older_than(), "--dry-run")
    assert f"would remove job (results, upload, database contents) {old}" in dry and new not in dry
    assert (server.data_dir / "jobs" / old).is_dir()

    done = purge(server, "--older-than", older_than())
    assert f"removed job (results, upload, database contents) {old}" in done and new not in done
    assert "VACUUM" in done
    assert not (server.data_dir / "jobs" / old).exists() and (server.data_dir / "jobs" / new).is_dir()
    with client(server) as http:
        message = assert_error(http.get(f"/v1/jobs/{old}"), 410, "retention")
        assert "medgen purge" in message or "retention" in message
        assert http.get(f"/v1/jobs/{new}/result/variants/1/array.nrrd").status_code == 200


def test_a_submission_over_the_quota_gets_507_with_the_sizes(server, inputs):
    with client(server) as http:
        storage = http.get("/v1/info").json()["storage"]
        assert storage["max_data_bytes"] == QUOTA_MB << 20 and 0 < storage["used_bytes"] < QUOTA_MB << 20
        assert storage["keep_results_s"] == 7 * 86400 and storage["keep_inputs_s"] == 0
        big = inputs["source"].read_bytes() + b"\0" * (QUOTA_MB << 20)
        response = http.post("/v1/jobs", data={"parameters": json.dumps({"prompt": "x"})},
                             files=[("source", ("s.nrrd", big)), ("mask", ("m.nrrd", inputs["mask"].read_bytes()))])
        message = assert_error(response, 507, "quota", f"{QUOTA_MB:.1f} MiB")
        assert "upload of" in message
    before = {p.name for p in (server.data_dir / "jobs").iterdir()}
    finished_job(server, inputs)  # a submission that fits is still taken
    assert len({p.name for p in (server.data_dir / "jobs").iterdir()} - before) == 1


def test_the_access_log_records_reads_and_deletes_and_never_the_token(server, inputs):
    job_id = finished_job(server, inputs)
    with client(server) as http:
        http.get(f"/v1/jobs/{job_id}/result/variants/1/array.nrrd")
        http.delete(f"/v1/jobs/{job_id}")
    with client(server, token="wrong-token") as intruder:
        intruder.get(f"/v1/jobs/{job_id}")
    log = (server.data_dir / "access.log").read_text()
    lines = [line for line in log.splitlines() if f"job={job_id}" in line]
    assert any(f" POST /v1/jobs " in line for line in log.splitlines())
    assert any(f"GET /v1/jobs/{job_id}/result/variants/1/array.nrrd job={job_id} status=200" in line for line in lines)
    assert any(f"DELETE /v1/jobs/{job_id} job={job_id} status=200" in line for line in lines)
    assert any(f"GET /v1/jobs/{job_id} job={job_id} status=401" in line for line in lines)
    assert all("client=127.0.0.1" in line for line in lines)
    assert server.token not in log and "wrong-token" not in log and "Bearer" not in log
    assert "hypodense" not in log and "NRRD" not in log
    assert stat.S_IMODE((server.data_dir / "access.log").stat().st_mode) == 0o600


def test_the_server_purges_finished_jobs_after_keep_results_on_its_own(tmp_path, tiny_model_dir, inputs):
    access_log = tmp_path / "logs" / "engine-access.log"
    process = ServerProcess(tmp_path / "data", tiny_model_dir, "--cpu-threads", "1", "--keep-results", "2s",
                            "--access-log", str(access_log))
    with process:
        job_id = finished_job(process, inputs)
        with client(process) as http:
            deadline = time.monotonic() + 60
            while http.get(f"/v1/jobs/{job_id}").status_code != 410 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert_error(http.get(f"/v1/jobs/{job_id}"), 410, "retention")
            assert http.get("/v1/info").json()["storage"]["keep_results_s"] == 2
    assert not (tmp_path / "data" / "jobs" / job_id).exists()
    assert f"job={job_id}" in access_log.read_text() and not (tmp_path / "data" / "access.log").exists()
