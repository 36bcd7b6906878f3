"""No single request stops the engine server's worker (issue 12, server side), through the real server.

Numbers that are not finite or out of range are refused at the door with 422 naming the field; a job
that raises ends failed and the next one runs; a stored job this version cannot decode is failed at
start-up; a cancel answered 200 never ends as a success; headers that claim huge images are refused
before decoding; an oversized upload without the token gets 401 before its body is read; the data
folder is private whatever mode it had; a full disk passes and the worker runs new jobs once space is
freed; seeded fuzz cases of the upload and JSON bodies (server_fuzz.py) never get a 5xx. The tiny
random-weight model keeps every job to a second or so.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sqlite3
import stat
import subprocess
import time

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage, generate_uid

from medgen.server.process import ServerProcess
from server_fuzz import FAST_CASES, run_cases
from test_server import assert_error, client, inputs, job_parameters, post_job, wait_for  # noqa: F401 - inputs is a fixture

LONG_STEPS = 200
MAX_SLICES = 64


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    """A server started on a data folder that already existed with modes other users could read."""
    data_dir = tmp_path_factory.mktemp("robust") / "data"
    (data_dir / "jobs" / "left-over").mkdir(parents=True)
    (data_dir / "jobs" / "left-over" / "scan.dcm").write_bytes(b"patient data")
    os.chmod(data_dir / "jobs" / "left-over" / "scan.dcm", 0o644)
    for folder in (data_dir, data_dir / "jobs", data_dir / "jobs" / "left-over"):
        os.chmod(folder, 0o755)
    process = ServerProcess(data_dir, tiny_model_dir, "--cpu-threads", "1", "--max-steps", str(LONG_STEPS),
                            "--max-upload-mb", "8", "--keep-inputs", "forever", "--max-slices", str(MAX_SLICES))
    process.start()
    yield process
    process.stop()


def post_raw_parameters(http, inputs, text: str):
    """POST a job whose `parameters` part is exactly ``text`` (so 1e400 and NaN reach the server as sent)."""
    with open(inputs["source"], "rb") as source, open(inputs["mask"], "rb") as mask:
        return http.post("/v1/jobs", data={"parameters": text},
                         files=[("source", ("ct.nrrd", source)), ("mask", ("lesion.nrrd", mask))])


def assert_worker_alive(server, inputs, **changes) -> None:
    with client(server) as http:
        created = post_job(http, inputs, **changes)
        assert created.status_code == 202, created.text
        status = wait_for(http, created.json()["id"], timeout=120)
    assert status["state"] == "succeeded", status


# --- item 6: the door --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("guidance_scale", "1e400"),  # JSON's 1e400 parses as infinity
        ("guidance_scale", "-1e400"),
        ("mask_blur_px", "NaN"),
        ("mask_dilate_mm", "Infinity"),
        ("window_center", "1e400"),
        ("mask_dilate_mm", "1e6"),  # finite, but asks for terabytes
        ("crop_padding_px", "100000000"),
        ("label", "-3"),
        ("weight", None),  # an adapter weight of infinity
    ],
)
def test_non_finite_or_out_of_range_numbers_get_422_naming_the_field(server, inputs, field, raw):
    text = json.dumps(job_parameters())[:-1]
    if field == "weight":
        text += ', "adapters": [{"name": "x", "weight": 1e400}]}'
    else:
        text += f', "{field}": {raw}}}'
    with client(server) as http:
        assert_error(post_raw_parameters(http, inputs, text), 422, field)


def test_a_seed_whose_last_variant_passes_the_largest_seed_is_refused_at_the_door(server, inputs):
    with client(server) as http:
        message = assert_error(post_job(http, inputs, seed=2**63 - 1, num_variants=2), 422, "seed")
        assert "2 variants" in message
        created = post_job(http, inputs, seed=2**63 - 2, num_variants=2, num_inference_steps=1)
        assert created.status_code == 202, created.text
        status = wait_for(http, created.json()["id"])
    assert status["state"] == "succeeded", status


def test_after_every_refused_number_the_worker_still_runs_jobs(server, inputs):
    with client(server) as http:
        for raw in ("1e400", "NaN", "-Infinity"):
            response = post_raw_parameters(http, inputs, json.dumps(job_parameters())[:-1] + f', "guidance_scale": {raw}}}')
            assert response.status_code == 422, response.text
    assert_worker_alive(server, inputs)


def test_a_job_that_raises_fails_with_its_reason_and_the_next_one_runs(server, inputs):
    with client(server) as http:
        busy = post_job(http, inputs, num_inference_steps=LONG_STEPS).json()["id"]
        wait_for(http, busy, states=("running",))
        doomed = post_job(http, inputs).json()["id"]
        # Its upload vanishes from under the queue: the engine raises when the job starts.
        for path in sorted((server.data_dir / "jobs" / doomed / "input").rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        assert http.post(f"/v1/jobs/{busy}/cancel").status_code == 200
        failed = wait_for(http, doomed)
    assert failed["state"] == "failed" and "missing" in failed["error"], failed
    assert_worker_alive(server, inputs)


def test_a_cancel_answered_200_never_ends_as_a_success(server, inputs):
    """Cancels aimed at the last moments of short jobs: a 200 must mean the job did not succeed, a 409
    that it had finished already (before the fix, 10 of 40 such 200s were followed by a success)."""
    answered = {200: 0, 409: 0}
    with client(server) as http:
        for round_number in range(24):
            job_id = post_job(http, inputs, seed=round_number).json()["id"]
            wait_for(http, job_id, states=("running", "succeeded"),
                     until=lambda s: s["state"] == "succeeded" or s["progress"]["steps_done"] >= 1)
            time.sleep(0.004 * (round_number % 6))
            response = http.post(f"/v1/jobs/{job_id}/cancel")
            assert response.status_code in (200, 409), response.text
            answered[response.status_code] += 1
            final = wait_for(http, job_id)
            if response.status_code == 200:
                assert final["state"] == "cancelled", (round_number, final)
            else:
                assert final["state"] == "succeeded" and "already" in response.json()["error"]["message"]
    assert sum(answered.values()) == 24


def test_a_stored_job_that_cannot_be_decoded_is_failed_at_start_up_not_retried(server, inputs):
    """A row an older version wrote (infinity stored as null) must not stop the worker at every start."""
    server.stop()
    database = sqlite3.connect(server.data_dir / "jobs.sqlite3")
    with database:
        database.execute(
            "INSERT INTO jobs (id, state, model, parameters, source, created_at, steps_total) "
            "VALUES ('unreadable0001', 'queued', ?, ?, '{}', ?, 1)",
            (server.model.name, json.dumps({**job_parameters(), "guidance_scale": None}), time.time()),
        )
    database.close()
    server.start()
    with client(server) as http:
        status = http.get("/v1/jobs/unreadable0001")
        assert status.status_code == 200, status.text
        assert status.json()["state"] == "failed" and "guidance_scale" in status.json()["error"]
        assert http.delete("/v1/jobs/unreadable0001").status_code == 200
        assert_error(http.get("/v1/jobs/unreadable0001"), 410, "deleted")
    assert_worker_alive(server, inputs)


# --- item 5: limits before work, the token first, private files --------------------------------


def test_an_oversized_upload_without_the_token_is_refused_before_its_body_is_read(server):
    """A 2 GB Content-Length claim from a client without the token gets 401 at once; before the fix
    the server waited for (and discarded) the 2 GB first."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2000000000\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
        sock.settimeout(10)
        answer = b""
        while chunk := sock.recv(4096):  # the server closes the connection after its answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"token" in answer


def npy_header_only(shape: tuple[int, ...], dtype: str = "<i2") -> bytes:
    """An .npy file whose header declares ``shape`` but which carries a few bytes of data only."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + b"\0" * 64


def test_an_npy_header_claiming_1e15_voxels_is_refused_before_loading(server, inputs):
    geometry = json.dumps({"ijk_to_lps": np.eye(4).tolist()})
    with client(server) as http:
        for shape in ((100_000, 100_000, 100_000), (10**15,), (3, 10**7, 10**8)):
            response = http.post(
                "/v1/jobs",
                data={"parameters": json.dumps(job_parameters()), "source_geometry": geometry},
                files=[("source", ("huge.npy", npy_header_only(shape))), ("mask", ("m.npy", npy_header_only((3, 32, 32))))],
            )
            assert 400 <= response.status_code < 500, (shape, response.text)
        assert_error(response, 413, "before decoding")


def rle_file_claiming(rows: int, columns: int) -> bytes:
    """A few kB of RLE Lossless DICOM whose header claims rows x columns 8-bit pixels."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = RLELossless
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality, dataset.PatientID = "OT", "FUZZ"
    dataset.Rows, dataset.Columns = rows, columns
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    segment = b"\x81\x00" * 3800  # runs of 128 zeros
    frame = (1).to_bytes(4, "little") + (64).to_bytes(4, "little") + b"\0" * 56 + segment
    dataset.PixelData = encapsulate([frame])
    dataset["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_an_rle_file_claiming_65535_squared_pixels_is_refused_before_decoding(server, inputs):
    data = rle_file_claiming(65535, 65535)
    assert len(data) < 10_000
    with client(server) as http:
        response = http.post("/v1/jobs", data={"parameters": json.dumps(job_parameters())},
                             files=[("source", ("big.dcm", data)), ("mask", ("m.nrrd", inputs["mask"].read_bytes()))])
        assert_error(response, 413, "65535x65535", "before decoding")
        assert http.get("/v1/health").status_code == 200


def test_the_slice_limit_is_configurable_and_read_from_the_header(server, tmp_path):
    import SimpleITK as sitk

    image = sitk.Image([4, 4, MAX_SLICES + 1], sitk.sitkInt16)
    sitk.WriteImage(image, str(tmp_path / "tall.nrrd"))
    with client(server) as http:
        assert http.get("/v1/info").json()["limits"]["max_slices"] == MAX_SLICES
        response = http.post("/v1/jobs", data={"parameters": json.dumps(job_parameters())},
                             files=[("source", ("tall.nrrd", (tmp_path / "tall.nrrd").read_bytes())),
                                    ("mask", ("m.nrrd", (tmp_path / "tall.nrrd").read_bytes()))])
    assert_error(response, 413, f"{MAX_SLICES + 1} slices", str(MAX_SLICES))


def test_the_data_folder_is_private_whatever_mode_it_had(server, inputs):
    assert_worker_alive(server, inputs)  # so uploads, results and the database all exist
    paths = [server.data_dir, *server.data_dir.rglob("*")]
    assert any(p.name == "scan.dcm" for p in paths) and any(p.name == "jobs.sqlite3" for p in paths)
    assert any(p.name == "array.nrrd" for p in paths) and any(p.parent.name == "input" for p in paths)
    loose = [f"{p} {stat.S_IMODE(p.stat().st_mode):o}" for p in paths
             if stat.S_IMODE(p.stat().st_mode) != (0o700 if p.is_dir() else 0o600)]
    assert not loose, loose


# --- item 3: fuzzing the upload and the JSON -------------------------------------------------


def test_fuzzed_uploads_and_json_never_get_a_5xx_and_the_worker_survives(server, inputs):
    run_cases(server, inputs, range(FAST_CASES))


@pytest.mark.slow
def test_many_fuzzed_requests_never_get_a_5xx_and_the_worker_survives(server, inputs):
    """MEDGEN_SERVER_FUZZ_CASES cases (default 2000) beyond the fast subset."""
    cases = int(os.environ.get("MEDGEN_SERVER_FUZZ_CASES", "2000"))
    run_cases(server, inputs, range(FAST_CASES, FAST_CASES + cases))


# --- item 6: a full disk -----------------------------------------------------------------------


def can_mount_private_tmpfs() -> bool:
    try:
        result = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                                capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def in_server_mounts(process: ServerProcess, script: str) -> None:
    """Run ``script`` in the server's private mount namespace (where its data folder is the small tmpfs)."""
    subprocess.run(["nsenter", "-t", str(process.process.pid), "-m", "--", "sh", "-c", script],
                   capture_output=True, timeout=60)


@pytest.mark.skipif(not can_mount_private_tmpfs(), reason="needs unshare -rm to mount a small private tmpfs")
def test_a_full_disk_does_not_stop_the_worker_and_new_jobs_run_once_space_is_freed(tmp_path, tiny_model_dir, inputs):
    """The data folder is a 16 MiB tmpfs in a private mount namespace. While a job runs and another
    waits, a filler file takes every free byte: progress, the final state and the next claim cannot be
    written (before the fix the worker thread died there and every later job stayed queued). Once the
    filler is removed, the waiting job runs to an end and a new one succeeds."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (tmp_path / "token").write_text("full-disk-test-token\n")
    mount = (f"mount -t tmpfs -o size=16m tmpfs {data_dir} && cp {tmp_path / 'token'} {data_dir}/token && "
             f"chmod 600 {data_dir}/token && exec \"$@\"")
    process = ServerProcess(data_dir, tiny_model_dir, "--cpu-threads", "1", "--max-steps", str(LONG_STEPS),
                            command_prefix=("unshare", "-rm", "sh", "-c", mount, "sh"), token_path=tmp_path / "token")
    process.start()
    try:
        with client(process) as http:
            running = post_job(http, inputs, num_inference_steps=LONG_STEPS).json()["id"]
            waiting = post_job(http, inputs).json()["id"]
            wait_for(http, running, states=("running",), until=lambda s: s["progress"]["steps_done"] >= 1)
            in_server_mounts(process, f"head -c 64M /dev/zero > {data_dir}/filler")
            refused = post_job(http, inputs)
            assert refused.status_code == 507, refused.text
            # 200: cancelled; 507: the cancel could not be recorded; 409: the full disk already ended the job
            # (it failed writing its progress or results), which is one of the outcomes checked below
            assert http.post(f"/v1/jobs/{running}/cancel").status_code in (200, 409, 507)
            time.sleep(5)  # the worker meets the full disk: progress, final state, next claim
            assert http.get("/v1/health").status_code == 200
            in_server_mounts(process, f"rm -f {data_dir}/filler")
            assert wait_for(http, running, timeout=60)["state"] in ("cancelled", "failed")
            assert wait_for(http, waiting, timeout=120)["state"] in ("succeeded", "failed")
            created = post_job(http, inputs)
            assert created.status_code == 202, created.text
            status = wait_for(http, created.json()["id"], timeout=120)
        assert status["state"] == "succeeded", (status, process.log())
        assert "Exception in thread" not in process.log()
    finally:
        process.stop()
