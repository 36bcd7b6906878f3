"""Run a real engine server in a child process: for tests (engine and Slicer side) and scripts.

Standard library only, so the Slicer-side tests can use it without importing the engine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``python -m medgen.server.main`` on a free loopback port, started and stopped by its own pid."""

    def __init__(
        self, data_dir: Path, model: Path, *extra_args: str, port: int | None = None, python: str | None = None,
        command_prefix: tuple[str, ...] = (), token_path: Path | None = None,
    ):
        """``command_prefix`` runs the server inside another command (``unshare ... sh -c '... exec "$@"'``);
        ``token_path`` is where this process can read the token when the data folder is not visible to it."""
        self.python = python or sys.executable
        self.data_dir = Path(data_dir)
        self.model = Path(model)
        self.extra_args = list(extra_args)
        self.port = port or free_port()
        self._port_chosen_here = port is None  # then a port taken in the meantime is retried with another
        self.command_prefix = tuple(command_prefix)
        self.token_path = Path(token_path) if token_path else self.data_dir / "token"
        self.process: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return self.token_path.read_text().strip()

    def start(self, timeout: float = 120.0) -> "ServerProcess":
        """Start and wait until ready. A free port can be taken between choosing it and binding it (other
        tests, other programs): when this object chose the port, it tries up to three others."""
        for attempt in range(4):
            try:
                return self._start_once(timeout)
            except RuntimeError as error:
                if not (self._port_chosen_here and attempt < 3 and "address already in use" in str(error).lower()):
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> "ServerProcess":
        command = [
            *self.command_prefix,
            self.python, "-m", "medgen.server.main",
            "--port", str(self.port), "--data-dir", str(self.data_dir), "--model", str(self.model),
            "--device", "cpu", "-v", *self.extra_args,
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Until /v1/info answers and the default model is loaded (so timings in tests exclude loading)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; log:\n{self.log()}")
            try:
                info = self.get_json("/v1/info")
                if all(model["state"] in ("ready", "failed") for model in info["models"] if model["default"]):
                    return
            except (OSError, urllib.error.URLError, FileNotFoundError, ValueError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout} s; log:\n{self.log()}")

    def get_json(self, path: str) -> dict:
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def kill(self) -> None:
        """SIGKILL: the crash a restart must survive."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL if it has not exited within 15 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
