"""MedGenSlicerLib against a real engine server (a child process with a tiny random-weight model).

What the panel does, minus Slicer: check the connection, build an upload from arrays with their
IJK-to-RAS geometry (or from DICOM instances), follow the job from a "timer", put each variant back on
the source grid, unpack the synthetic DICOM, and show the right message for each kind of failure.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from MedGenSlicerLib import (
    EngineAuthError,
    EngineBusy,
    EngineClient,
    EngineError,
    EngineTimeout,
    EngineUnreachable,
    InpaintParameters,
    JobFailed,
    JobMonitor,
    NotAnEngine,
    RequestRefused,
    array_upload,
    dicom_upload,
    extract_zip,
    normalize_url,
    parse_prompt_variations,
    variant_on_source,
)
from MedGenSlicerLib.geometry import crop_slab
from MedGenSlicerLib.nrrd import RAS_FROM_LPS

# Slicer-like geometry: RAS with the usual flipped x and y of an axial DICOM volume.
IJK_TO_RAS = np.array(
    [[-0.75, 0.0, 0.0, 120.0], [0.0, -0.8, 0.0, 95.5], [0.0, 0.0, 3.0, -40.0], [0.0, 0.0, 0.0, 1.0]]
)


def parameters(**changes) -> InpaintParameters:
    values = dict(prompt="hypodense liver lesion", num_inference_steps=1, guidance_scale=1.0, seed=21)
    values.update(changes)
    return InpaintParameters(**values)


def volume_and_mask():
    rows, cols = np.mgrid[:32, :32]
    volume = np.stack([rows * 5 + cols * 4 - 100 + 30 * k for k in range(5)]).astype(np.int16)
    mask = np.zeros(volume.shape, np.uint8)
    mask[1:4, 12:20, 10:18] = 1
    return volume, mask


def follow(monitor, timeout: float = 120.0) -> list:
    """What the panel's QTimer does: drain a job's or an export's events until it ends."""
    events = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events += monitor.drain()
        if events and events[-1].kind in ("finished", "error"):
            return events
        time.sleep(0.05)
    raise AssertionError(f"{type(monitor).__name__} did not end within {timeout} s: {[e.kind for e in events]}")


def wait_state(client: EngineClient, job_id: str, state: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.status(job_id)
        if status["state"] == state and (state != "running" or status["progress"]["steps_done"] >= 1):
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {state}: {status}")


# --- connection ----------------------------------------------------------------------------------


def test_urls_are_normalized_or_refused():
    assert normalize_url("localhost:8765") == "http://localhost:8765"
    assert normalize_url(" http://127.0.0.1:8765/ ") == "http://127.0.0.1:8765"
    for bad in ("", "ftp://host:1", "http://host:99999", "http://host:8765/v1/info"):
        with pytest.raises(EngineError):
            normalize_url(bad)


def test_each_connection_problem_gets_its_own_message(engine, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(EngineUnreachable, match="connection refused.*medgen serve"):
        EngineClient(f"http://127.0.0.1:{closed_port}", "token").check_connection()

    # Some other web server on the port: a wrong URL, not a bad token
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        with pytest.raises(NotAnEngine, match="not a MedGen engine"):
            EngineClient(f"http://127.0.0.1:{other.server_address[1]}", "token").check_connection()
    finally:
        other.shutdown()
        other.server_close()

    # A port that accepts and never answers: a timeout, not a hang
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        started = time.monotonic()
        with pytest.raises(EngineTimeout, match="did not answer within 0.5 s"):
            EngineClient(f"http://127.0.0.1:{silent.getsockname()[1]}", "t", timeout=0.5).check_connection()
        assert time.monotonic() - started < 5
    finally:
        silent.close()

    with pytest.raises(EngineAuthError, match="refused the token"):
        EngineClient(engine.url, "wrong-token").check_connection()
    with pytest.raises(EngineAuthError, match="enter the token"):
        EngineClient(engine.url, "").check_connection()
    info = EngineClient(engine.url, engine.token).check_connection()
    assert [model["name"] for model in info["models"]] == ["tiny-inpaint"]
    assert info["limits"]["max_queued_jobs"] == 2


# --- jobs ----------------------------------------------------------------------------------------


def test_array_job_of_the_red_slice_comes_back_on_the_source_grid(engine):
    client = EngineClient(engine.url, engine.token)
    volume, mask = volume_and_mask()
    upload = array_upload(volume, IJK_TO_RAS, mask, parameters(num_variants=2), slices=[2])
    assert (upload.slab_start, upload.slab_stop) == (2, 3)  # one slice sent, not five

    events = follow(JobMonitor(client, upload, poll_interval=0.1).start())
    kinds = [event.kind for event in events]
    assert kinds[0] == "submitted" and kinds[-1] == "finished" and kinds.count("variant") == 2
    assert events[-1].status["state"] == "succeeded"
    assert kinds.index("variant") < len(kinds) - 1

    _, slab_matrix = crop_slab(volume, IJK_TO_RAS, 2, 3)
    variants = []
    for event in (e for e in events if e.kind == "variant"):
        np.testing.assert_allclose(event.image.ijk_to_ras, slab_matrix, atol=1e-9)
        full = variant_on_source(volume, IJK_TO_RAS, event.image, event.result.source)
        assert full.shape == volume.shape and full.dtype == volume.dtype
        np.testing.assert_array_equal(np.delete(full, 2, axis=0), np.delete(volume, 2, axis=0))
        np.testing.assert_array_equal(full[2, :, :4], volume[2, :, :4])  # far from the mask: untouched
        assert not np.array_equal(full[2, 12:20, 10:18], volume[2, 12:20, 10:18])
        variants.append(full)
    assert [e.variant.seed for e in events if e.kind == "variant"] == [21, 22]
    assert not np.array_equal(variants[0], variants[1])


def test_prompt_variations_and_control_source_reach_each_variant(engine):
    """The panel's comma-separated field gives one word per variant, in turn; the ControlNet source
    choice travels too; both are recorded in each variant's provenance."""
    assert parse_prompt_variations(" small, ,large ") == ["small", "large"] and parse_prompt_variations("") is None
    client = EngineClient(engine.url, engine.token)
    volume, mask = volume_and_mask()
    upload = array_upload(volume, IJK_TO_RAS, mask, parameters(
        num_variants=2, prompt_variations=parse_prompt_variations("small, large"), control_from="mask"), slices=[2])
    events = follow(JobMonitor(client, upload, poll_interval=0.1).start())
    assert events[-1].status["state"] == "succeeded"
    variants = [e for e in events if e.kind == "variant"]
    used = [json.loads(client.download(e.variant.provenance_url))["parameters"] for e in variants]
    assert [p["prompt"] for p in used] == ["small hypodense liver lesion", "large hypodense liver lesion"]
    assert {p["control_from"] for p in used} == {"mask"}
    with pytest.raises(ValueError, match="ControlNet source"):
        parameters(control_from="sobel").check()


def test_dicom_job_returns_a_synthetic_series_of_the_same_study(engine, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    path = Path(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(path)
    # What Slicer holds for this series: HU values and the IJK-to-RAS of the slice
    hu = (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).astype(np.int16)[np.newaxis]
    row, column = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
    spacing_rows, spacing_cols = (float(v) for v in ds.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = row * spacing_cols, column * spacing_rows
    lps[:3, 2] = np.cross(row, column) * float(ds.SliceThickness)
    lps[:3, 3] = [float(v) for v in ds.ImagePositionPatient]
    ijk_to_ras = RAS_FROM_LPS @ lps
    mask = np.zeros(hu.shape, np.uint8)
    mask[0, 60:80, 50:70] = 1

    client = EngineClient(engine.url, engine.token)
    upload = dicom_upload([str(path)], [list(map(float, ds.ImagePositionPatient))], ijk_to_ras, mask,
                          parameters(prompt="liver cyst"))
    events = follow(JobMonitor(client, upload, poll_interval=0.1).start())
    assert events[-1].kind == "finished", events[-1].error
    (variant,) = [e for e in events if e.kind == "variant"]
    assert variant.result.source.format == "dicom"
    full = variant_on_source(hu, ijk_to_ras, variant.image, variant.result.source)
    np.testing.assert_array_equal(full[0, :20], hu[0, :20])
    assert not np.array_equal(full[0, 60:80, 50:70], hu[0, 60:80, 50:70])

    written = extract_zip(client.download(variant.variant.dicom_zip_url), tmp_path / "accepted")
    synthetic = pydicom.dcmread(written[0])
    assert synthetic[0x0008, 0x001C].value == "YES"  # Synthetic Data (by tag: older pydicom lacks the name)
    assert synthetic.SeriesDescription.startswith("SYNTHETIC")
    assert synthetic.StudyInstanceUID == ds.StudyInstanceUID and synthetic.SeriesInstanceUID != ds.SeriesInstanceUID
    np.testing.assert_array_equal(
        synthetic.pixel_array * float(synthetic.RescaleSlope) + float(synthetic.RescaleIntercept), full[0]
    )


def test_busy_refused_failed_and_cancelled_jobs_each_say_so(engine):
    client = EngineClient(engine.url, engine.token)
    volume, mask = volume_and_mask()
    quick = array_upload(volume, IJK_TO_RAS, mask, parameters())
    long = array_upload(volume, IJK_TO_RAS, mask, parameters(num_inference_steps=200))

    with pytest.raises(RequestRefused, match="no model named 'sd-xl'.*tiny-inpaint"):
        client.submit(array_upload(volume, IJK_TO_RAS, mask, parameters(model="sd-xl")))

    running = client.submit(long)["id"]
    wait_state(client, running, "running")
    doomed, waiting = client.submit(quick)["id"], client.submit(quick)["id"]
    with pytest.raises(EngineBusy, match="queue is full"):
        client.submit(quick)

    # A job the engine cannot finish (its uploaded mask vanished from the engine's disk)
    (mask_file,) = (engine.data_dir / "jobs" / doomed / "input").glob("mask.*")
    mask_file.unlink()
    doomed_monitor = JobMonitor(client, job_id=doomed, poll_interval=0.1).start()
    waiting_monitor = JobMonitor(client, job_id=waiting, poll_interval=0.1).start()
    assert client.cancel(running)["cancel_requested"]

    failure = follow(doomed_monitor)[-1]
    assert failure.kind == "error" and isinstance(failure.error, JobFailed)
    assert "could not finish the job" in str(failure.error)
    assert follow(waiting_monitor)[-1].status["state"] == "succeeded"
    assert client.status(running)["state"] == "cancelled"

    # Cancel from the panel: the monitor asks, the engine stops at its next step
    monitor = JobMonitor(client, long, poll_interval=0.1).start()
    deadline = time.monotonic() + 60
    while monitor.job_id is None or client.status(monitor.job_id)["progress"]["steps_done"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    monitor.cancel()
    final = follow(monitor, timeout=60)[-1]
    assert final.kind == "finished" and final.status["state"] == "cancelled"
    assert final.status["progress"]["steps_done"] < 200


def test_modality_fields_are_sent_only_when_set():
    from MedGenSlicerLib.payload import InpaintParameters

    plain = InpaintParameters(prompt="lesion").to_json()
    assert "source_modality" not in plain and "force_modality" not in plain
    stated = InpaintParameters(prompt="lesion", source_modality="MR", force_modality=True).to_json()
    assert stated["source_modality"] == "MR" and stated["force_modality"] is True
