"""What the panel's "Cancel", "Delete from engine" and "Open report" buttons ask a real engine."""

from __future__ import annotations

import stat
import time

import numpy as np
import pytest

from MedGenSlicerLib import EngineClient, InpaintParameters, JobMonitor, RequestRefused, array_upload, write_private_report

IJK_TO_RAS = np.diag([-0.8, -0.8, 2.0, 1.0])


def finished_job(client: EngineClient) -> str:
    volume = np.arange(3 * 32 * 32, dtype=np.int16).reshape(3, 32, 32) % 200
    mask = np.zeros(volume.shape, np.uint8)
    mask[1, 10:20, 10:20] = 1
    upload = array_upload(volume, IJK_TO_RAS, mask, InpaintParameters(prompt="lesion", num_inference_steps=1, seed=3))
    monitor = JobMonitor(client, upload, poll_interval=0.1).start()
    deadline, events = time.monotonic() + 120, []
    while time.monotonic() < deadline and not (events and events[-1].kind in ("finished", "error")):
        events += monitor.drain()
        time.sleep(0.05)
    assert events[-1].kind == "finished" and events[-1].status["state"] == "succeeded", events[-1]
    return monitor.job_id


def test_delete_from_engine_removes_a_finished_job_and_says_so_afterwards(engine):
    client = EngineClient(engine.url, engine.token)
    job_id = finished_job(client)
    try:
        client.delete_job(job_id)
    except RequestRefused as refused:
        if refused.status == 409:
            pytest.skip("this engine does not delete finished jobs yet (it answers 409)")
        raise
    for ask in (client.status, client.delete_job):
        with pytest.raises(RequestRefused) as gone:
            ask(job_id)
        assert gone.value.status == 410 and "deleted" in str(gone.value)


def test_open_report_downloads_the_html_into_a_private_file(engine):
    client = EngineClient(engine.url, engine.token)
    job_id = finished_job(client)
    try:
        html = client.report(job_id)
    except RequestRefused as refused:
        if refused.status in (404, 405):
            pytest.skip("this engine has no job report yet")
        raise
    except Exception as error:  # an engine without the route answers FastAPI's own 404
        if "HTTP 404" in str(error):
            pytest.skip("this engine has no job report yet")
        raise
    assert b"<html" in html[:2000].lower()
    path = write_private_report(html, job_id)
    try:
        assert path.read_bytes() == html and stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        path.unlink()
        path.parent.rmdir()
