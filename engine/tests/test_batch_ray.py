"""`medgen batch --ray` on a real local Ray instance (started once for the module: 2 CPU slots, loopback,
no dashboard) with the tiny random-weight model, on the 12-row real DICOM and NIfTI manifest of
test_batch.py: a worker killed mid-run by its PID, a driver killed and run again, and in both cases
every row once in the index, no partial folder, and under --batch-invariant the same files as the local
run (8 rows per model call there, one row at a time and one torch thread per worker here). By default
(layers batched) the files are the same within test_batch.STORED_TOLERANCE stored values.

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
from medgen.cli import main  # noqa: E402
from test_batch import (  # noqa: E402,F401
    assert_close_outputs, assert_complete, assert_same_outputs, dataset, disk_mask, local_run, manifest_ids,
)
from testfiles import dicom_testfile, write_labelmap_like  # noqa: E402

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
        on_row=kill_the_first_worker_that_finishes_a_row, batch_invariant=True,
    )
    assert killed and summary.ok and summary.workers_count == 2 and summary.done == 12
    assert "2 workers of 1 CPU slot each, batch-invariant" in summary.workers
    attempts = {line["row_id"]: line["attempts"] for line in map(__import__("json").loads, (out / "index.jsonl").open())}
    assert max(attempts.values()) == 2, "the killed worker's row was not handed out again"
    assert_complete(out, manifest_ids(dataset))
    assert_same_outputs(local_run, out)


@pytest.mark.slow
def test_ray_run_batched_by_default_matches_the_local_run_within_rounding(
    dataset, ray_address, tiny_model_dir, tmp_path
):
    """Default batching, on four rows of the manifest (two variants, two slices, CT and MR): the local run
    stacks them into one model call with layers batched on this process's torch threads, the Ray
    workers take one row at a time on one thread; every written image agrees within one stored value."""
    lines = dataset.read_text().splitlines()
    manifest = tmp_path / "manifest.csv"
    chosen = [line for line in lines[1:] if line.split(",")[0] in ("ct-1", "ct-2", "mr-1", "emr-1")]
    manifest.write_text("\n".join([lines[0], *chosen]) + "\n")
    for mask in ("ct-mask.nii.gz", "mr-mask.nii.gz", "emr-mask.nii.gz"):
        (tmp_path / mask).write_bytes((dataset.parent / mask).read_bytes())
    local, out = tmp_path / "local", tmp_path / "ray"
    assert main(["batch", str(manifest), "--out", str(local), "--model", str(tiny_model_dir), "--device", "cpu"]) == 0
    summary = run_batch(manifest, out, model=tiny_model_dir, ray=ray_address, device="cpu",
                        progress_stream=open(os.devnull, "w"))
    assert summary.ok and summary.done == 4 and "batch-invariant" not in summary.workers
    assert_complete(out, manifest_ids(manifest))
    assert_close_outputs(local, out)


@pytest.mark.slow
def test_driver_killed_and_run_again_gives_every_row_once_and_the_local_files(
    dataset, local_run, ray_address, tiny_model_dir, tmp_path
):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "medgen.cli", "batch", str(dataset), "--out", str(out),
               "--model", str(tiny_model_dir), "--device", "cpu", "--ray", ray_address, "--batch-invariant"]
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


@pytest.mark.slow
def test_demo_model_pydicom_rows_batch_invariant_are_the_same_bytes_here_and_on_ray(ray_address, tmp_path):
    """The six rows where a Ray run once differed from the local one (MR2_J2KR, 1024 x 1024 JPEG 2000:
    two pixels by one stored value): pydicom-data's CT_small, 693_UNCI, MR_small, MR2_J2KR, MR2_UNCI and
    CT_small again, centre disks, seeds 10-15, the demo model. The local run takes this process's torch
    threads and 8 rows per call, each Ray worker one row at a time on one thread; under
    --batch-invariant the model runs on one thread either way, so every file is the same bytes (693_UNCI
    has no Frame of Reference UID: the one its synthetic series gets is derived from the source, not
    drawn at random)."""
    from medgen.imaging.read import read_volume

    lines = ["id,input,mask,prompt,seed"]
    for i, name in enumerate(["CT_small.dcm", "693_UNCI.dcm", "MR_small.dcm", "MR2_J2KR.dcm", "MR2_UNCI.dcm",
                              "CT_small.dcm"]):
        source = dicom_testfile(name)
        volume = read_volume(source)
        write_labelmap_like(volume, disk_mask(volume, [0]), tmp_path / f"mask-{i}.nii.gz")
        lines.append(f"row-{i},{source},mask-{i}.nii.gz,lesion,{10 + i}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    local, out = tmp_path / "local", tmp_path / "ray"
    assert main(["batch", str(manifest), "--out", str(local), "--device", "cpu", "--batch-invariant"]) == 0
    summary = run_batch(manifest, out, ray=ray_address, device="cpu", batch_invariant=True,
                        progress_stream=open(os.devnull, "w"))
    assert summary.ok and summary.done == 6
    assert_same_outputs(local, out)
