"""A source whose modality the model does not cover is refused at submission, through the real server:
a 400 naming `force_modality` before the job is queued; `"force_modality": true` runs it, and
`"source_modality"` states the modality of a volume file that states none. The tiny random-weight model
(under a medgen.json that states CT alone) keeps every job to a second or so."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest

from medgen.generate.settings import write_model_settings
from medgen.imaging.intensity import IntensityContract, Window
from medgen.server.process import ServerProcess
from test_server import assert_error, client, inputs, post_job, wait_for  # noqa: F401 - inputs is a fixture
from testfiles import dicom_testfile


@pytest.fixture(scope="module")
def ct_only_server(tmp_path_factory, tiny_model_dir):
    model = tmp_path_factory.mktemp("ct-model") / "tiny-ct"
    shutil.copytree(tiny_model_dir, model)
    write_model_settings(model, {}, IntensityContract(modality="CT", window=Window(40, 400)))
    process = ServerProcess(tmp_path_factory.mktemp("modality") / "data", model, "--cpu-threads", "1")
    process.start()
    yield process
    process.stop()


def post_mr_dicom(http, **parameters):
    """MR_small.dcm (pydicom's real MR slice) with a square mask as an NPY."""
    mask = np.zeros((1, 64, 64), np.uint8)
    mask[0, 28:36, 28:36] = 1
    buffer = io.BytesIO()
    np.save(buffer, mask)
    fields = dict(prompt="lesion", num_inference_steps=1, seed=3, all_slices=True, guidance_scale=1.0, **parameters)
    with open(dicom_testfile("MR_small.dcm"), "rb") as source:
        return http.post("/v1/jobs", data={"parameters": json.dumps(fields)},
                         files=[("source", ("mr.dcm", source)), ("mask", ("mask.npy", buffer.getvalue()))])


def test_an_mr_upload_to_a_ct_only_model_is_refused_at_submission_unless_forced(ct_only_server):
    with client(ct_only_server) as http:
        before = len(list((ct_only_server.data_dir / "jobs").iterdir()))
        message = assert_error(post_mr_dicom(http), 400, "force_modality", "MR", "CT")
        assert "--force-modality" not in message
        assert len(list((ct_only_server.data_dir / "jobs").iterdir())) == before  # nothing queued or kept
        created = post_mr_dicom(http, force_modality=True)
        assert created.status_code == 202, created.text
        assert wait_for(http, created.json()["id"])["state"] == "succeeded"


def test_a_volume_without_modality_runs_and_a_stated_modality_is_checked(ct_only_server, inputs):
    with client(ct_only_server) as http:
        unknown = post_job(http, inputs, window_center=None, window_width=None)  # OT: no window in HU
        assert unknown.status_code == 202, unknown.text
        assert wait_for(http, unknown.json()["id"])["state"] == "succeeded"
        assert_error(post_job(http, inputs, source_modality="MR"), 400, "MR", "given by the user")
        assert_error(post_job(http, inputs, source_modality="M R"), 422, "source_modality")
