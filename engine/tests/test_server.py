"""The engine server, started for real in a child process on a free loopback port (tiny random model).

One server serves the whole module (starting one costs seconds of torch import); the last test kills
it with SIGKILL and starts it again on the same data folder. Images are 32x32 and jobs take 1-2
denoising steps, except the "long" jobs that tests cancel.
"""

from __future__ import annotations

import io
import json
import stat
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

from medgen.server.main import is_loopback, serve_main
from medgen.server.process import ServerProcess

MAX_QUEUE = 24
MAX_UPLOAD_MB = 4
LONG_STEPS = 200  # a job that runs long enough to be cancelled or killed mid-way
FINISHED = ("succeeded", "failed", "cancelled")
SPACING = (0.8, 0.7, 2.5)  # i, j, k in mm: unequal, so a swapped axis shows


@pytest.fixture(scope="module")
def server(tmp_path_factory, phantom_model_dir):
    data_dir = tmp_path_factory.mktemp("server") / "data"
    process = ServerProcess(data_dir, phantom_model_dir, "--cpu-threads", "1", "--max-queue", str(MAX_QUEUE), "--max-upload-mb",
                            str(MAX_UPLOAD_MB), "--max-steps", str(LONG_STEPS))
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A 3-slice 32x32 int16 NRRD volume with LPS geometry, and a labelmap on its middle slice."""
    folder = tmp_path_factory.mktemp("inputs")
    rows, cols = np.mgrid[:32, :32]
    pixels = np.stack([rows * 7 + cols * 3 + 40 * k for k in range(3)]).astype(np.int16)
    image = sitk.GetImageFromArray(pixels)
    image.SetSpacing(SPACING)
    image.SetOrigin((-12.0, 30.5, 101.25))
    image.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, 1))  # rotated in plane, so direction handling is exercised
    sitk.WriteImage(image, str(folder / "source.nrrd"))
    mask = np.zeros_like(pixels, dtype=np.uint8)
    mask[1, 10:20, 12:22] = 1
    mask_image = sitk.GetImageFromArray(mask)
    mask_image.CopyInformation(image)
    sitk.WriteImage(mask_image, str(folder / "mask.nrrd"))
    np.save(folder / "source.npy", pixels)
    np.save(folder / "mask.npy", mask)
    return {"source": folder / "source.nrrd", "mask": folder / "mask.nrrd", "source_npy": folder / "source.npy",
            "mask_npy": folder / "mask.npy", "pixels": pixels, "mask_array": mask, "image": image}


def client(server: ServerProcess, token: str | None = "server") -> httpx.Client:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {server.token if token == 'server' else token}"
    return httpx.Client(base_url=server.url, headers=headers, timeout=30)


def job_parameters(**changes) -> dict:
    # A fixed wide window keeps the test image inside model space without clipping.
    parameters = dict(prompt="hypodense lesion", num_inference_steps=1, num_variants=1, seed=7, all_slices=True,
                      window_center=300, window_width=2000, guidance_scale=1.0)
    parameters.update(changes)
    return parameters


def post_job(http: httpx.Client, inputs: dict, **changes) -> httpx.Response:
    with open(inputs["source"], "rb") as source, open(inputs["mask"], "rb") as mask:
        return http.post(
            "/v1/jobs",
            data={"parameters": json.dumps(job_parameters(**changes))},
            files=[("source", ("ct.nrrd", source, "application/octet-stream")),
                   ("mask", ("lesion.nrrd", mask, "application/octet-stream"))],
        )


def wait_for(http: httpx.Client, job_id: str, states=FINISHED, timeout: float = 120.0, until=None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = http.get(f"/v1/jobs/{job_id}").json()
        if status["state"] in states and (until is None or until(status)):
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {status} after {timeout} s")


def assert_error(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    message = response.json()["error"]["message"]
    for word in words:
        assert word.lower() in message.lower(), message
    return message


# --- start-up and auth -------------------------------------------------------------------------


def test_binding_beyond_loopback_needs_an_explicit_flag(tiny_model_dir, capsys):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")
    assert serve_main(["--host", "0.0.0.0", "--model", str(tiny_model_dir)]) == 2
    assert "--allow-remote" in capsys.readouterr().err


def test_token_file_is_private_and_printed_once(server):
    mode = stat.S_IMODE((server.data_dir / "token").stat().st_mode)
    assert mode == 0o600
    assert server.token in server.log() and "Slicer" in server.log()


def test_every_endpoint_but_health_needs_the_token(server, inputs):
    with client(server, token=None) as anonymous:
        assert anonymous.get("/v1/health").json()["status"] == "ok"
        assert_error(anonymous.get("/v1/info"), 401, "token")
        assert anonymous.get("/v1/info").headers["www-authenticate"] == "Bearer"
        assert_error(post_job(anonymous, inputs), 401, "token")
        assert_error(anonymous.get("/v1/jobs/abc"), 401)
        assert_error(anonymous.delete("/v1/jobs/abc"), 401)
        assert_error(anonymous.get("/v1/jobs/abc/result"), 401)
        schema = anonymous.get("/openapi.json").json()
    with client(server, token="not-the-token") as wrong:
        assert_error(wrong.get("/v1/info"), 401, "refused")
    assert {"/v1/info", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/result"} <= set(schema["paths"])
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert "multipart/form-data" in schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    with client(server) as http:
        assert http.get("/v1/jobs").status_code in (404, 405)  # no listing of other people's jobs
        assert not list((server.data_dir / "jobs").iterdir())  # refused uploads left nothing behind


def test_info_lists_the_model_and_limits(server):
    with client(server) as http:
        info = http.get("/v1/info").json()
    assert info["engine"] == "medgen" and info["api_version"] == 1
    assert info["device"] == "cpu"
    (model,) = info["models"]
    assert model["default"] and model["state"] == "ready" and model["resolution"] == 64
    assert info["adapters"] == []
    assert info["limits"]["max_queued_jobs"] == MAX_QUEUE
    assert info["limits"]["max_upload_bytes"] == MAX_UPLOAD_MB << 20


# --- jobs ----------------------------------------------------------------------------------------


def test_round_trip_serves_each_variant_as_soon_as_it_is_ready(server, inputs):
    with client(server) as http:
        created = post_job(http, inputs, num_variants=2, num_inference_steps=2, seed=11)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]

        # Variant 1 is downloadable while variant 2 is still being generated.
        early = wait_for(http, job_id, states=("running", *FINISHED), until=lambda s: s["variants_ready"] >= 1)
        assert early["state"] == "running", "variant 2 should still be running when variant 1 is published"
        partial = http.get(f"/v1/jobs/{job_id}/result").json()
        assert not partial["complete"] and len(partial["variants"]) == 1 and partial["preview"] is None
        assert http.get(partial["variants"][0]["array"]).status_code == 200
        assert_error(http.get(f"/v1/jobs/{job_id}/result/variants/2/array.nrrd"), 409, "not ready")

        status = wait_for(http, job_id)
        assert status["state"] == "succeeded", status
        assert status["progress"]["steps_done"] == status["progress"]["steps_total"] > 0
        manifest = http.get(f"/v1/jobs/{job_id}/result").json()
        assert manifest["complete"] and [v["seed"] for v in manifest["variants"]] == [11, 12]
        source = manifest["source"]
        assert source["shape"] == [3, 32, 32] and source["dtype"] == "int16" and source["slices"] == [1]
        expected_matrix = np.eye(4)
        expected_matrix[:3, :3] = np.array(inputs["image"].GetDirection()).reshape(3, 3) @ np.diag(SPACING)
        expected_matrix[:3, 3] = inputs["image"].GetOrigin()
        np.testing.assert_allclose(source["ijk_to_lps"], expected_matrix, atol=1e-9)

        arrays = []
        for variant in manifest["variants"]:
            nrrd = http.get(variant["array"])
            path = server.data_dir.parent / f"{job_id}-{variant['index']}.nrrd"
            path.write_bytes(nrrd.content)
            image = sitk.ReadImage(str(path))
            assert image.GetSpacing() == pytest.approx(SPACING) and image.GetOrigin() == pytest.approx(
                inputs["image"].GetOrigin()) and image.GetDirection() == pytest.approx(inputs["image"].GetDirection())
            array = sitk.GetArrayFromImage(image)
            assert array.dtype == np.int16 and array.shape == (3, 32, 32)
            # Untouched slices and everything far from the mask keep their stored values bit for bit.
            np.testing.assert_array_equal(array[[0, 2]], inputs["pixels"][[0, 2]])
            np.testing.assert_array_equal(array[1, :, :5], inputs["pixels"][1, :, :5])
            assert not np.array_equal(array[1], inputs["pixels"][1]), "nothing was inpainted"
            arrays.append(array)

            archive = zipfile.ZipFile(io.BytesIO(http.get(variant["dicom_zip"]).content))
            names = archive.namelist()
            assert names and all(not name.startswith(("/", "..")) for name in names)
            dataset = pydicom.dcmread(io.BytesIO(archive.read(names[0])))
            assert dataset.SyntheticData == "YES" and dataset.SeriesDescription.startswith("SYNTHETIC")
            assert Image.open(io.BytesIO(http.get(variant["preview"]).content)).size[0] > 0
            assert json.loads(http.get(variant["provenance"]).content)
        assert not np.array_equal(arrays[0], arrays[1]), "two seeds gave the same variant"

        stacked = Image.open(io.BytesIO(http.get(manifest["preview"]).content))
        single = Image.open(io.BytesIO(http.get(manifest["variants"][0]["preview"]).content))
        assert stacked.height == 2 * single.height
        provenance = http.get(manifest["provenance"]).json()
        assert provenance["job_id"] == job_id and len(provenance["variants"]) == 2
        assert provenance["parameters"]["prompt"] == "hypodense lesion"


def test_npy_source_with_ras_geometry_matches_the_nrrd_upload(server, inputs):
    """An NPY array plus its IJK-to-RAS matrix is placed exactly where the same volume as NRRD is."""
    image = inputs["image"]
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    ijk_to_lps[:3, 3] = image.GetOrigin()
    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps
    with client(server) as http, open(inputs["source_npy"], "rb") as source, open(inputs["mask_npy"], "rb") as mask:
        created = http.post(
            "/v1/jobs",
            data={"parameters": json.dumps(job_parameters()),
                  "source_geometry": json.dumps({"ijk_to_ras": ijk_to_ras.tolist()})},
            files=[("source", ("a.npy", source)), ("mask", ("m.npy", mask))],
        )
        assert created.status_code == 202, created.text
        status = wait_for(http, created.json()["id"])
        assert status["state"] == "succeeded", status
        manifest = http.get(f"/v1/jobs/{status['id']}/result").json()
    np.testing.assert_allclose(manifest["source"]["ijk_to_lps"], ijk_to_lps, atol=1e-9)
    assert manifest["source"]["slices"] == [1]


def test_twenty_concurrent_jobs_all_finish_in_order(server, inputs):
    def submit(number: int) -> str:
        with client(server) as http:
            response = post_job(http, inputs, seed=1000 + number)
            assert response.status_code == 202, response.text
            return response.json()["id"]

    with ThreadPoolExecutor(max_workers=20) as pool:
        ids = list(pool.map(submit, range(20)))
    assert len(set(ids)) == 20
    with client(server) as http:
        statuses = [wait_for(http, job_id, timeout=180) for job_id in ids]
        assert [s["state"] for s in statuses] == ["succeeded"] * 20, [s["error"] for s in statuses]
        for job_id in ids:
            manifest = http.get(f"/v1/jobs/{job_id}/result").json()
            assert len(manifest["variants"]) == 1
            assert http.get(manifest["variants"][0]["array"]).content.startswith(b"NRRD")
    by_creation = sorted(statuses, key=lambda s: s["created_at"])
    started = [s["started_at"] for s in by_creation]
    assert started == sorted(started), "the worker must take jobs in the order they were queued"


def test_cancel_stops_a_running_job_at_the_next_step_and_a_queued_one_at_once(server, inputs):
    with client(server) as http:
        running = post_job(http, inputs, num_inference_steps=LONG_STEPS).json()["id"]
        queued = post_job(http, inputs).json()["id"]
        wait_for(http, running, states=("running",), until=lambda s: s["progress"]["steps_done"] >= 1)

        cancelled_queued = http.post(f"/v1/jobs/{queued}/cancel")
        assert cancelled_queued.status_code == 200
        assert cancelled_queued.json()["state"] == "cancelled" and cancelled_queued.json()["queue_position"] is None

        assert http.post(f"/v1/jobs/{running}/cancel").json()["cancel_requested"]
        status = wait_for(http, running, timeout=120)
        assert status["state"] == "cancelled"
        assert status["progress"]["steps_done"] < LONG_STEPS  # stopped at a step, not after the last one
        assert_error(http.get(f"/v1/jobs/{running}/result"), 409, "cancelled")
        assert_error(http.post(f"/v1/jobs/{running}/cancel"), 409, "nothing to cancel")
        assert_error(http.get("/v1/jobs/0123456789abcdef"), 404, "no job")
        assert_error(http.post("/v1/jobs/0123456789abcdef/cancel"), 404, "no job")


def test_malformed_uploads_get_a_4xx_that_says_what_to_fix(server, inputs, tmp_path, phantom_model_dir):
    source_bytes = inputs["source"].read_bytes()
    mask_bytes = inputs["mask"].read_bytes()
    good = json.dumps(job_parameters())

    def post(data=None, files=None, **kwargs):
        files = files if files is not None else [("source", ("s.nrrd", source_bytes)), ("mask", ("m.nrrd", mask_bytes))]
        return http.post("/v1/jobs", data=data if data is not None else {"parameters": good}, files=files, **kwargs)

    wrong_grid = np.zeros((3, 16, 16), np.uint8)
    wrong_grid[1, 4:8, 4:8] = 1
    npy = io.BytesIO()
    np.save(npy, wrong_grid)
    empty_mask = sitk.GetImageFromArray(np.zeros((3, 32, 32), np.uint8))
    empty_mask.CopyInformation(inputs["image"])
    sitk.WriteImage(empty_mask, str(tmp_path / "empty.nrrd"))

    with client(server) as http:
        assert_error(post(data={}), 400, "parameters")
        assert_error(post(data={"parameters": "{not json"}), 400, "JSON")
        assert_error(post(data={"parameters": json.dumps(job_parameters(stength=0.5))}), 422, "stength")
        assert_error(post(data={"parameters": json.dumps(job_parameters(strength=2))}), 422, "strength")
        assert_error(post(data={"parameters": json.dumps(job_parameters(prompt=""))}), 422, "prompt")
        assert_error(post(data={"parameters": json.dumps(job_parameters(num_variants=99))}), 422, "num_variants")
        assert_error(post(data={"parameters": json.dumps(job_parameters(model="sd-xl"))}), 400, "sd-xl", phantom_model_dir.name)
        assert_error(post(data={"parameters": json.dumps(job_parameters(adapters=[{"name": "liver-lora"}]))}), 400,
                     "adapter")
        assert_error(post(files=[("source", ("s.nrrd", source_bytes))]), 400, "mask")
        assert_error(post(files=[("mask", ("m.nrrd", mask_bytes))]), 400, "source")
        assert_error(post(files=[("source", ("s.dcm", b"\0" * 200)), ("mask", ("m.nrrd", mask_bytes))]), 400)
        assert_error(post(files=[("source", ("s.nrrd", b"NRRD0004\ntype: banana\n\n")),
                                 ("mask", ("m.nrrd", mask_bytes))]), 400)
        assert_error(post(files=[("source", ("s.nrrd", source_bytes)), ("mask", ("m.npy", npy.getvalue()))]), 400,
                     "grid")
        assert_error(post(files=[("source", ("s.nrrd", source_bytes)),
                                 ("mask", ("m.nrrd", (tmp_path / "empty.nrrd").read_bytes()))]), 400, "empty")
        assert_error(post(files=[("source", ("s.npy", inputs["source_npy"].read_bytes())),
                                 ("mask", ("m.nrrd", mask_bytes))]), 400, "source_geometry")
        assert_error(post(data={"parameters": good, "extra": "1"}), 400, "extra")
        assert_error(post(files=[("source", ("big.nrrd", b"NRRD0004\n" + b"\0" * ((MAX_UPLOAD_MB << 20) + 10))),
                                 ("mask", ("m.nrrd", mask_bytes))]), 413, "limit")
        assert_error(http.get("/v1/jobs/x/result/variants/1/../../token"), 404)
    job_dirs = {path.name for path in (server.data_dir / "jobs").iterdir()}
    with client(server) as http:
        known = {job_id for job_id in job_dirs if http.get(f"/v1/jobs/{job_id}").status_code == 200}
    assert job_dirs == known, "a refused upload left files behind"


def test_a_mask_on_another_spacing_needs_resample_mask_as_on_the_command_line(server, inputs, tmp_path):
    """The job field means what `medgen inpaint --resample-mask` means: refused without it, naming it."""
    coarse = sitk.Resample(sitk.Cast(sitk.ReadImage(str(inputs["mask"])), sitk.sitkUInt8),
                           [16, 16, 3], sitk.Transform(), sitk.sitkNearestNeighbor, inputs["image"].GetOrigin(),
                           (SPACING[0] * 2, SPACING[1] * 2, SPACING[2]), inputs["image"].GetDirection())
    coarse_path = tmp_path / "coarse-mask.nrrd"
    sitk.WriteImage(coarse, str(coarse_path))
    assert sitk.GetArrayFromImage(coarse).any()
    with client(server) as http:
        for resample, expected in ((False, 400), (True, 202)):
            with open(inputs["source"], "rb") as source, open(coarse_path, "rb") as mask:
                response = http.post(
                    "/v1/jobs", data={"parameters": json.dumps(job_parameters(resample_mask=resample))},
                    files=[("source", ("ct.nrrd", source, "application/octet-stream")),
                           ("mask", ("mask.nrrd", mask, "application/octet-stream"))],
                )
            assert response.status_code == expected, response.text
            if not resample:
                assert "resample" in response.json()["error"]["message"].lower()
        assert wait_for(http, response.json()["id"])["state"] == "succeeded"


def test_full_queue_answers_429_and_a_killed_server_finishes_its_queue_on_restart(server, inputs):
    with client(server) as http:
        finished = post_job(http, inputs, seed=3).json()["id"]
        assert wait_for(http, finished)["state"] == "succeeded"
        finished_array = http.get(f"/v1/jobs/{finished}/result/variants/1/array.nrrd").content

        long_job = post_job(http, inputs, num_inference_steps=LONG_STEPS).json()["id"]
        wait_for(http, long_job, states=("running",), until=lambda s: s["progress"]["steps_done"] >= 1)
        queued = [post_job(http, inputs, seed=500 + n).json()["id"] for n in range(MAX_QUEUE)]
        assert http.get(f"/v1/jobs/{queued[-1]}").json()["queue_position"] == MAX_QUEUE
        assert_error(post_job(http, inputs), 429, "queue is full")
        # Keep three; cancel the rest so the restart test stays short.
        for job_id in queued[3:]:
            assert http.post(f"/v1/jobs/{job_id}/cancel").json()["state"] == "cancelled"
        queued = queued[:3]

    server.kill()
    server.start()

    with client(server) as http:
        assert http.get(f"/v1/jobs/{finished}/result/variants/1/array.nrrd").content == finished_array
        resumed = http.get(f"/v1/jobs/{long_job}").json()
        assert resumed["state"] in ("queued", "running"), resumed
        assert [http.get(f"/v1/jobs/{j}").json()["queue_position"] for j in queued] == [
            p + (resumed["state"] == "queued") for p in (1, 2, 3)
        ]
        http.post(f"/v1/jobs/{long_job}/cancel")
        statuses = [wait_for(http, job_id, timeout=120) for job_id in queued]
        assert [s["state"] for s in statuses] == ["succeeded"] * 3, statuses
        assert wait_for(http, long_job)["state"] == "cancelled"


def test_info_lists_the_models_recommended_settings_and_unset_fields_use_them(server, inputs):
    """The phantom model recommends guidance 1.4 / 20 steps (its medgen.json): /v1/info says so, a job
    that leaves them out runs with them, and explicit values win."""
    from medgen.generate.settings import read_recommended_settings

    with client(server) as http:
        model = next(m for m in http.get("/v1/info").json()["models"] if m["default"])
        recommended = read_recommended_settings(model["path"])
        assert recommended and model["recommended"] == recommended

        def used_parameters(**changes) -> dict:
            parameters = job_parameters(**changes)
            for name in ("guidance_scale", "num_inference_steps"):
                if name not in changes:
                    parameters.pop(name)  # left out: the model's recommendation applies
            with open(inputs["source"], "rb") as source, open(inputs["mask"], "rb") as mask:
                response = http.post(
                    "/v1/jobs",
                    data={"parameters": json.dumps(parameters)},
                    files=[("source", ("ct.nrrd", source, "application/octet-stream")),
                           ("mask", ("lesion.nrrd", mask, "application/octet-stream"))],
                )
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            assert wait_for(http, job_id)["state"] == "succeeded"
            return http.get(f"/v1/jobs/{job_id}/result/provenance.json").json()["parameters"]

        defaulted = used_parameters()
        assert defaulted["guidance_scale"] == recommended["guidance_scale"]
        assert defaulted["num_inference_steps"] == recommended["num_inference_steps"]
        explicit = used_parameters(guidance_scale=3.0, num_inference_steps=2)
        assert explicit["guidance_scale"] == 3.0 and explicit["num_inference_steps"] == 2
