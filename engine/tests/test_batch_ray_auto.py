"""`medgen batch --ray auto` with no cluster running: the command starts a local Ray instance of its own,
runs the 12-row real DICOM and NIfTI manifest of test_batch.py with the tiny random-weight model (under
--batch-invariant: the local run's bytes), and leaves no Ray process behind. The driver runs as a
separate process, as a user would start it, without RAY_ADDRESS and with a Ray temp folder of its own,
so it cannot find another instance's address file.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from test_batch import assert_complete, assert_same_outputs, dataset, local_run, manifest_ids  # noqa: E402,F401

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def alive(process: psutil.Process) -> bool:
    """Still running (an exited, not yet reaped child is not)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(text in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def test_tiny_random_weight_ray_auto_starts_a_local_instance_and_leaves_no_process_behind(
    dataset, local_run, tiny_model_dir, tmp_path
):
    from ray._private.services import find_gcs_addresses

    if find_gcs_addresses():
        pytest.skip("a Ray instance is running on this machine: --ray auto would join it")
    # a short path: Ray puts Unix sockets in it (at most 107 characters)
    ray_tmp = tempfile.mkdtemp(prefix="medgen-ray-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = ray_tmp
    out = tmp_path / "out"
    command = [sys.executable, "-m", "medgen.cli", "batch", str(dataset), "--out", str(out),
               "--model", str(tiny_model_dir), "--device", "cpu", "--ray", "auto", "--batch-invariant"]
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[int, tuple[psutil.Process, str]] = {}  # every process the driver started, by PID, and its name
    try:
        parent = psutil.Process(driver.pid)
        deadline = time.monotonic() + 600
        while driver.poll() is None and time.monotonic() < deadline:
            try:
                for child in parent.children(recursive=True):
                    if child.pid not in seen:
                        seen[child.pid] = (child, child.name())
            except psutil.NoSuchProcess:  # the driver, or a child while it was being looked at, just ended
                pass
            time.sleep(0.1)
        stdout, stderr = driver.communicate(timeout=60)
        assert driver.returncode == 0, stderr
        names = {name for _, name in seen.values()}
        assert any("raylet" in n for n in names) and any("gcs_server" in n for n in names), names
        assert "2 workers of 1 CPU slot each" in stdout and "12 made by this run" in stdout, stdout
        assert os.path.isdir(os.path.join(ray_tmp, "ray")), "the local instance did not use its own temp folder"

        # every process the driver started is gone once it has exited (shutdown may take a moment)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(alive(p) for p, _ in seen.values()):
            time.sleep(0.2)
        left = [(pid, name) for pid, (p, name) in seen.items() if alive(p)]
        left += [(p.pid, p.name()) for p in processes_mentioning(ray_tmp) if alive(p) and p.pid not in seen]
        assert not left, f"Ray processes left behind: {left}"
    finally:
        driver.kill()
        driver.wait()
        for process, _ in seen.values():  # only what this test's driver started, by PID
            if alive(process):
                process.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)

    assert_complete(out, manifest_ids(dataset))
    assert_same_outputs(local_run, out)
