"""The panel's engine work in a child process (MedGenSlicerLib.background and .worker) against a real engine:
variants cut and converted off the GUI, polls that survive a killed and restarted engine and a refused
connection, the Cancel/finish race, re-attaching by job id, and the upload gone once the engine has it."""

from __future__ import annotations

import time

import numpy as np
import pytest

from MedGenSlicerLib import EngineClient, InpaintParameters, JobMonitor, array_upload, variant_on_source
from MedGenSlicerLib.background import JobProcess, ProcessCall, private_folder
from MedGenSlicerLib.client import EngineUnreachable
from MedGenSlicerLib.geometry import changed_region, crop_slab, paste_into
from MedGenSlicerLib.jobs import JobGone, wait_for_monitor
from MedGenSlicerLib.payload import upload_spec

IJK_TO_RAS = np.array([[-0.75, 0.0, 0.0, 120.0], [0.0, -0.8, 0.0, 95.5], [0.0, 0.0, 3.0, -40.0], [0.0, 0.0, 0.0, 1.0]])


def volume_and_mask():
    rows, cols = np.mgrid[:48, :48]
    volume = np.stack([rows * 5 + cols * 4 - 100 + 30 * k for k in range(4)]).astype(np.int16)
    mask = np.zeros(volume.shape, np.uint8)
    mask[1:3, 20:28, 18:26] = 1
    return volume, mask


def parameters(**changes) -> InpaintParameters:
    values = dict(prompt="hypodense lesion", num_inference_steps=1, guidance_scale=1.0, seed=5, mask_dilate_mm=1.0)
    values.update(changes)
    return InpaintParameters(**values)


def submit_in_worker(client, volume, mask, params, **options):
    upload = array_upload(volume, IJK_TO_RAS, mask, params)
    folder = private_folder()
    spec = upload_spec(upload, folder)
    _, slab_matrix = crop_slab(mask, IJK_TO_RAS, upload.slab_start, upload.slab_stop)
    region = changed_region(mask[upload.slab_start:upload.slab_stop], slab_matrix, params.mask_dilate_mm)
    process = JobProcess(client, upload=spec, volume_dtype=volume.dtype, region=region, poll_interval=0.1,
                         folder=folder, **options)
    return process, spec, region


def follow(process, timeout=180.0, during=None):
    events = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = process.drain()
        events += new
        if during is not None:
            during(new, events)
        if events and events[-1].kind in ("finished", "error") and not process.is_alive():
            return events
        time.sleep(0.05)
    raise AssertionError(f"the job did not end within {timeout} s: {[e.kind for e in events]}")


def test_worker_variants_are_cut_to_the_changed_box_and_equal_the_whole_result(engine):
    client = EngineClient(engine.url, engine.token)
    volume, mask = volume_and_mask()
    process, spec, region = submit_in_worker(client, volume, mask, parameters(num_variants=2))
    events = follow(process)
    kinds = [e.kind for e in events]
    assert kinds[0] == "submitted" and kinds[-1] == "finished" and kinds.count("variant") == 2, kinds
    # the engine has the upload: its files are gone from the private folder
    assert not any(__import__("os").path.exists(part["path"]) for part in spec["files"])

    # the same job through the in-process monitor, uncut and unconverted, is the reference
    upload = array_upload(volume, IJK_TO_RAS, mask, parameters(num_variants=2))
    reference = [e for e in wait_for_monitor(JobMonitor(client, upload, poll_interval=0.1).start(), 120)
                 if e.kind == "variant"]
    for event, expected in zip([e for e in events if e.kind == "variant"], reference):
        slab = event.slab
        j0, j1, i0, i1 = region
        assert slab.values.shape == (2, j1 - j0, i1 - i0) and slab.values.dtype == volume.dtype
        assert slab.values.nbytes < volume[1:3].nbytes / 4  # the box, not the slab
        full = np.array(volume, copy=True)
        paste_into(full, IJK_TO_RAS, slab.values, slab.ijk_to_ras)
        np.testing.assert_array_equal(full, variant_on_source(volume, IJK_TO_RAS, expected.image, expected.result.source))
    process.remove()
    assert not process.folder.exists()


def test_a_call_in_the_worker_returns_the_engines_answer_or_its_error(engine):
    call = ProcessCall(EngineClient(engine.url, engine.token), "check_connection")
    assert call.wait(60)
    info = call.result()
    assert info["version"] and info["queue"]["queued"] == 0 and info["models"]
    refused = ProcessCall(EngineClient("http://127.0.0.1:9", "x"), "check_connection")
    assert refused.wait(60)
    with pytest.raises(EngineUnreachable, match="connection refused"):
        refused.result()


@pytest.fixture()
def own_engine(tmp_path, tiny_model, server_process_class):
    """An engine this test may kill and restart on the same port and data folder."""
    server = server_process_class(tmp_path / "data", tiny_model, "--cpu-threads", "1", "--max-steps", "400")
    server.start()
    yield server
    server.stop()


def test_a_job_survives_a_killed_engine_and_a_refused_connection(own_engine):
    """The engine is killed mid-job, nothing answers for a while (connection refused), then it starts
    again on the same data folder: the panel's worker says 'reconnecting', then every variant arrives."""
    client = EngineClient(own_engine.url, own_engine.token)
    volume, mask = volume_and_mask()
    process, _, _ = submit_in_worker(client, volume, mask, parameters(num_variants=2, num_inference_steps=60))
    restarted = {}

    def during(new, events):
        running = any(e.kind == "status" and e.status["state"] == "running" and e.status["progress"]["steps_done"] >= 1
                      for e in new)
        if running and "killed" not in restarted:
            own_engine.kill()
            restarted["killed"] = time.monotonic()
        if "killed" in restarted and "started" not in restarted and any(e.kind == "reconnecting" for e in events) \
                and time.monotonic() - restarted["killed"] > 3.0:
            own_engine.start()
            restarted["started"] = time.monotonic()

    events = follow(process, timeout=300, during=during)
    kinds = [e.kind for e in events]
    assert "killed" in restarted and "started" in restarted, kinds
    assert kinds.count("reconnecting") == 1 and "reconnected" in kinds
    assert kinds.index("reconnecting") < kinds.index("reconnected")
    assert kinds[-1] == "finished" and events[-1].status["state"] == "succeeded", events[-1]
    assert kinds.count("variant") == 2
    process.remove()


def test_cancel_that_meets_a_finished_job_still_delivers_every_variant(engine):
    client = EngineClient(engine.url, engine.token)
    volume, mask = volume_and_mask()
    process, _, _ = submit_in_worker(client, volume, mask, parameters(num_variants=2))
    job_id = None
    while job_id is None:
        for event in process.drain():
            if event.kind == "submitted":
                job_id = event.status["id"]
        time.sleep(0.02)
    while client.status(job_id)["state"] != "succeeded":
        time.sleep(0.05)
    process.cancel()  # the engine answers 409: nothing to cancel
    events = follow(process)
    kinds = [e.kind for e in events]
    assert kinds[-1] == "finished" and events[-1].status["state"] == "succeeded"
    assert kinds.count("variant") == 2 and "error" not in kinds
    process.remove()


def test_reattach_by_job_id_fetches_the_missing_variants_and_a_deleted_job_is_gone(engine):
    client = EngineClient(engine.url, engine.token)
    volume, mask = volume_and_mask()
    process, _, region = submit_in_worker(client, volume, mask, parameters(num_variants=3))
    events = follow(process)
    job_id = events[0].status["id"]
    process.remove()

    again = JobProcess(client, job_id=job_id, volume_dtype=volume.dtype, region=region, skip_variants=1,
                       poll_interval=0.1)
    events = follow(again)
    assert [e.variant.index for e in events if e.kind == "variant"] == [2, 3]
    again.remove()

    client.delete_job(job_id)
    gone = JobProcess(client, job_id=job_id, volume_dtype=volume.dtype, poll_interval=0.1)
    events = follow(gone)
    assert events[-1].kind == "error" and isinstance(events[-1].error, JobGone), events[-1]
    gone.remove()


def test_modality_conversion_of_a_slab_costs_a_chunk_of_floats_not_eight_times_the_slab():
    """A 20 x 512 x 512 slab with intercept -1024 went through float64 copies of the whole slab (84 MB
    peak for 10.5 MB); now a few rows at a time, off the GUI thread in the worker."""
    import tracemalloc

    from MedGenSlicerLib.results import CONVERSION_CHUNK_VOXELS, to_modality_values

    stored = (np.arange(20 * 512 * 512, dtype=np.int64) % 3000).astype(np.uint16).reshape(20, 512, 512)
    tracemalloc.start()
    values = to_modality_values(stored, [1.0] * 20, [-1024.0] * 20, np.int16)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.testing.assert_array_equal(values, stored.astype(np.int32) - 1024)
    assert peak <= values.nbytes + 3 * 8 * CONVERSION_CHUNK_VOXELS, f"peak {peak / 1e6:.1f} MB for {values.nbytes / 1e6:.1f} MB"
    scaled = to_modality_values(np.array([[[100, 3000]]], np.uint16), [0.5], [-1024.0], np.int16)
    np.testing.assert_array_equal(scaled, [[[-974, 476]]])
    with pytest.raises(ValueError, match="do not fit"):
        to_modality_values(np.array([[[60000]]], np.uint16), [1.0], [0.0], np.int16)
