"""`medgen batch --ray` on a real local Ray instance (started once for the module: 2 CPU slots, loopback,
no dashboard) with the tiny random-weight model, on the 12-row real DICOM and NIfTI manifest of
test_batch.py: a worker killed mid-run by its PID, a driver killed and run again, and in both cases
every row once in the index, no partial folder, and the same files as the local run.

UIDs are derived from content, so DICOM outputs are compared on pixel data and every attribute, UIDs
included, except the creation dates/times (SOURCE_DATE_EPOCH would fix those too); NIfTI, PNG and the
JSON sidecars are compared byte for byte.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

ray = pytest.importorskip("ray")

from medgen.batch.run import run_batch  # noqa: E402
from test_batch import assert_complete, assert_same_outputs, dataset, local_run, manifest_ids  # noqa: E402,F401

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def ray_address():
    """A new local Ray instance owned by this module; its address for drivers in other processes."""
    context = ray.init(
        address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False
    )
    yield context.address_info["gcs_address"]
    ray.shutdown()


def test_ray_run_with_a_worker_killed_mid_run_matches_the_local_run_but_for_creation_times(
    dataset, local_run, ray_address, tiny_model_dir, tmp_path
):
    killed = []

    def kill_the_first_worker_that_finishes_a_row(row, outcome):
        # by now that worker has its next row: killing it loses a row in flight
        if outcome.ok and not killed:
            pid = int(outcome.worker.rsplit(":", 1)[1])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    out = tmp_path / "out"
    summary = run_batch(
        dataset, out, model=tiny_model_dir, ray=ray_address, device="cpu", progress_stream=open(os.devnull, "w"),
        on_row=kill_the_first_worker_that_finishes_a_row,
    )
    assert killed and summary.ok and summary.workers_count == 2 and summary.done == 12
    assert "2 workers of 1 CPU slot each" in summary.workers
    attempts = {line["row_id"]: line["attempts"] for line in map(__import__("json").loads, (out / "index.jsonl").open())}
    assert max(attempts.values()) == 2, "the killed worker's row was not handed out again"
    assert_complete(out, manifest_ids(dataset))
    assert_same_outputs(local_run, out)


@pytest.mark.slow
def test_driver_killed_and_run_again_gives_every_row_once_and_the_local_files(
    dataset, local_run, ray_address, tiny_model_dir, tmp_path
):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "medgen.cli", "batch", str(dataset), "--out", str(out),
               "--model", str(tiny_model_dir), "--device", "cpu", "--ray", ray_address]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        rows = out / "rows"
        while time.monotonic() < deadline and driver.poll() is None:
            if rows.is_dir() and sum(1 for p in rows.iterdir() if not p.name.startswith(".")) >= 3:
                break
            time.sleep(0.05)
        assert driver.poll() is None, "the driver ended before it could be killed"
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
    finished_at_kill = sum(1 for p in rows.iterdir() if not p.name.startswith("."))
    assert 3 <= finished_at_kill < 12
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    made_before = int(again.stdout.split(" made by this run, ")[1].split(" finished before")[0])
    assert made_before >= 3  # what the killed driver published was kept, not made again
    assert_complete(out, manifest_ids(dataset))
    assert_same_outputs(local_run, out)
