"""`GET /v1/jobs/{id}/report` on the real server process (the shipped phantom model, a tiny NRRD job), and
`medgen inpaint --report` on pydicom's CT_small."""

import json
import shutil
import time

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from medgen.server.process import ServerProcess
from testfiles import dicom_testfile, write_labelmap_like


@pytest.fixture(scope="module")
def server(tmp_path_factory, phantom_model_dir):
    data_dir = tmp_path_factory.mktemp("qa-server") / "data"
    process = ServerProcess(data_dir, phantom_model_dir, "--cpu-threads", "1", "--keep-inputs", "1h")
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def nrrd_inputs(tmp_path_factory):
    """A 3-slice 48x48 CT-like NRRD and a square lesion mask on its middle slice."""
    folder = tmp_path_factory.mktemp("qa-inputs")
    rng = np.random.default_rng(0)
    pixels = (40 + rng.normal(0, 10, (3, 48, 48))).astype(np.int16)
    image = sitk.GetImageFromArray(pixels)
    image.SetSpacing((0.8, 0.8, 2.5))
    sitk.WriteImage(image, str(folder / "source.nrrd"))
    mask = np.zeros_like(pixels, dtype=np.uint8)
    mask[1, 18:30, 16:28] = 1
    mask_image = sitk.GetImageFromArray(mask)
    mask_image.CopyInformation(image)
    sitk.WriteImage(mask_image, str(folder / "mask.nrrd"))
    return folder / "source.nrrd", folder / "mask.nrrd"


def _run_job(http, inputs) -> str:
    parameters = dict(prompt="hypodense lesion", num_inference_steps=2, num_variants=2, seed=5, all_slices=True,
                      window_center=40, window_width=400)
    with open(inputs[0], "rb") as source, open(inputs[1], "rb") as mask:
        created = http.post("/v1/jobs", data={"parameters": json.dumps(parameters)},
                            files=[("source", ("ct.nrrd", source)), ("mask", ("lesion.nrrd", mask))])
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    for _ in range(2400):
        state = http.get(f"/v1/jobs/{job_id}").json()["state"]
        if state in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.05)
    assert state == "succeeded"
    return job_id


def test_server_report_of_a_finished_job(server, nrrd_inputs):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=60) as http:
        job_id = _run_job(http, nrrd_inputs)
        response = http.get(f"/v1/jobs/{job_id}/report")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["content-disposition"].startswith("inline")
        page = response.text
        assert page.count("100.0000% (0 changed of") == 2  # both variants: nothing changed outside the mask
        assert "variant-01" in page and "variant-02" in page and "synthetic-data" in page
        assert "FAIL" not in page
        # made once and kept: it stays available after the upload is removed
        shutil.rmtree(server.data_dir / "jobs" / job_id / "input")
        assert http.get(f"/v1/jobs/{job_id}/report").text == page
        # a job whose upload went before any report was asked for: a 409 that says what to do
        second = _run_job(http, nrrd_inputs)
        shutil.rmtree(server.data_dir / "jobs" / second / "input")
        refused = http.get(f"/v1/jobs/{second}/report")
        assert refused.status_code == 409 and "--keep-inputs" in refused.json()["error"]["message"]
        assert http.get("/v1/jobs/no-such-job/report").status_code == 404
        assert httpx.get(f"{server.url}/v1/jobs/{job_id}/report").status_code == 401


def test_inpaint_report_flag_writes_the_report_beside_the_run(tmp_path, phantom_model_dir, capsys):
    from medgen.cli import main
    from medgen.imaging.read import read_volume

    ct_small = dicom_testfile("CT_small.dcm")
    volume = read_volume(ct_small)
    rows, cols = np.mgrid[: volume.shape2d[0], : volume.shape2d[1]]
    mask = write_labelmap_like(volume, ((rows - 70) ** 2 + (cols - 60) ** 2 <= 8**2)[None], tmp_path / "disc.nii.gz")
    out = tmp_path / "run"
    code = main(["inpaint", str(ct_small), "--mask", str(mask), "--prompt", "hypodense liver lesion, 2 cm",
                 "--model", str(phantom_model_dir), "--steps", "2", "--seed", "3", "--window", "soft_tissue",
                 "--device", "cpu", "--out", str(out), "--report"])
    assert code == 0
    assert str(out / "report.html") in capsys.readouterr().out
    page = (out / "report.html").read_text()
    assert "CT_small.dcm" in page and page.count("100.0000% (0 changed of") == 1
