"""A private `medgen serve --model demo` for the module's self-test, started and stopped by its own pid.

The self-test (``MedGenSlicerTest.test_EngineRoundTrip``) runs inside Slicer, whose Python has neither
the engine nor torch: it starts the engine's own command found on ``PATH``, on a free loopback port,
with a data folder of its own (so a user's engine, token and jobs are never touched), and stops exactly
that process. Standard library only, Python 3.9 and newer.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

ENGINE_COMMAND = "medgen"
TOKEN_FILENAME = "token"  # the engine keeps its token in DATA_DIR/token (engine/SERVER.md)
PORT_ATTEMPTS = 4
PORT_TAKEN_MESSAGES = ("address already in use", "only one usage of each socket address")  # POSIX, Windows


class EngineStartError(RuntimeError):
    """The engine did not come up; the message ends with the tail of its log."""


def find_engine_command(env: Optional[Dict[str, str]] = None) -> Optional[str]:
    """The full path of ``medgen`` on the ``PATH`` of ``env`` (default: this process's), else None."""
    path = (env if env is not None else os.environ).get("PATH")
    return shutil.which(ENGINE_COMMAND, path=path)


def free_loopback_port() -> int:
    """A loopback port nobody listens on right now (another program may still take it before the
    engine binds it; ``SelfTestEngine.start`` then tries another)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SelfTestEngine:
    """``medgen serve --model MODEL`` on 127.0.0.1 with a temporary data folder, for one test.

    ``env`` is the environment the engine runs in: inside Slicer pass ``slicer.util.startupEnvironment()``,
    so the engine's Python does not inherit Slicer's ``PYTHONHOME``/``PYTHONPATH``.
    """

    def __init__(
        self,
        command: Optional[str] = None,
        *,
        model: str = "demo",
        extra_args: Sequence[str] = (),
        env: Optional[Dict[str, str]] = None,
        work_dir: Optional[Path] = None,
    ):
        self.env = dict(env if env is not None else os.environ)
        self.command = command or find_engine_command(self.env)
        if not self.command:
            raise EngineStartError(f"no `{ENGINE_COMMAND}` command on PATH; install the engine (engine/scripts/setup.sh)")
        self.model = model
        self.extra_args = list(extra_args)
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="medgen-selftest-"))
        self.data_dir = self.work_dir / "data"
        self.log_path = self.work_dir / "engine.log"
        self.port: Optional[int] = None
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise EngineStartError("the engine has not been started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return (self.data_dir / TOKEN_FILENAME).read_text(encoding="utf-8").strip()

    def start(self, timeout: float = 180.0, wait_callback: Optional[Callable[[], None]] = None) -> "SelfTestEngine":
        """Start the engine and wait until /v1/health answers and its model is loaded.

        ``wait_callback`` is called between polls (Slicer passes ``slicer.app.processEvents``). A port taken
        between choosing and binding it is retried with another; any other failure raises with the log.
        """
        for attempt in range(PORT_ATTEMPTS):
            self.port = free_loopback_port()
            self._launch()
            try:
                self._wait_ready(timeout, wait_callback)
                return self
            except EngineStartError as error:
                self.stop()
                port_taken = any(message in str(error).lower() for message in PORT_TAKEN_MESSAGES)
                if not port_taken or attempt == PORT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        command = [
            self.command, "serve", "--model", self.model, "--host", "127.0.0.1", "--port", str(self.port),
            "--data-dir", str(self.data_dir), *self.extra_args,
        ]
        env = {**self.env, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        with open(self.log_path, "wb") as log:  # this attempt's log only
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=env)

    def _wait_ready(self, timeout: float, wait_callback: Optional[Callable[[], None]]) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise EngineStartError(f"`{ENGINE_COMMAND} serve` exited with {self.process.returncode}; "
                                       f"log:\n{self.log_tail()}")
            if self._default_model_ready():
                return
            if wait_callback is not None:
                wait_callback()
            time.sleep(0.2)
        raise EngineStartError(f"`{ENGINE_COMMAND} serve` not ready after {timeout:.0f} s; log:\n{self.log_tail()}")

    def _default_model_ready(self) -> bool:
        """/v1/health answers, the token file exists, and the default model is loaded (a model that failed
        to load raises: the round trip could only fail later with a vaguer message)."""
        try:
            health = self.get_json("/v1/health", authorized=False)
            if health.get("status") != "ok":
                return False
            info = self.get_json("/v1/info")
        except (OSError, ValueError):  # not listening yet, token not written yet, or a half-started server
            return False
        for model in info.get("models", []):
            if model.get("default") and model.get("state") == "failed":
                raise EngineStartError(f"the engine could not load model {model.get('name')!r}: {model.get('error')}")
        return all(model.get("state") == "ready" for model in info.get("models", []) if model.get("default"))

    def get_json(self, path: str, *, authorized: bool = True) -> dict:
        headers = {"Authorization": f"Bearer {self.token}"} if authorized else {}
        request = urllib.request.Request(self.url + path, headers=headers)
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate our process (SIGTERM; TerminateProcess on Windows), kill it if still there after ``timeout``."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)

    def cleanup(self) -> None:
        """Stop the engine and remove the temporary folder this object made (never one it was given)."""
        self.stop()
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def log_tail(self, characters: int = 4000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-characters:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> "SelfTestEngine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()
