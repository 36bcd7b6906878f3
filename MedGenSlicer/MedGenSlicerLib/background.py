"""Engine work in a child process (`worker`), polled by the GUI's timer without ever blocking it.

Why a process and not a thread: in Slicer the main thread holds Python's GIL while Qt waits for
events, so a Python thread makes progress only while the GUI itself runs Python (see `worker`). A
child process runs at full speed whatever the GUI does, and a tick of the GUI's timer only reads the
new lines of a small file. Each piece of work gets a private folder (0700) that holds its task, its
events and its variants, removed when the work is done with.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, List, Optional

import numpy as np

from . import client as client_errors
from .client import EngineClient, EngineError, RequestRefused
from .jobs import JobGone, VariantSlab
from .results import VariantInfo
from .tasks import ExportEvent, JobEvent
from .worker import ABANDON_FILE, CANCEL_FILE, DETACH_FILE, EVENTS_FILE, LOG_FILE, TASK_FILE

LIBRARY_PARENT = str(Path(__file__).resolve().parent.parent)  # the folder that holds MedGenSlicerLib


def python_executable() -> str:
    """The Python that runs the worker: ``$MEDGENSLICER_PYTHON``, else Slicer's ``PythonSlicer`` beside the
    application, else this interpreter."""
    if os.environ.get("MEDGENSLICER_PYTHON"):
        return os.environ["MEDGENSLICER_PYTHON"]
    folder = Path(sys.executable).parent
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        if (folder / name).is_file():
            return str(folder / name)
    if Path(sys.executable).name.lower().startswith("python"):
        return sys.executable
    return shutil.which("PythonSlicer") or shutil.which("python3") or sys.executable


def private_folder(prefix: str = "medgenslicer-") -> Path:
    """A new folder only this user can enter (patient data goes in it)."""
    return Path(tempfile.mkdtemp(prefix=prefix))  # mkdtemp makes it 0700


def rebuild_error(record: dict) -> EngineError:
    """The error a worker reported, as the EngineError subclass it raised there."""
    kind = record.get("type", "EngineError")
    message = record.get("message", "no reason given")
    if kind == "RequestRefused":
        return RequestRefused(message, int(record.get("status") or 400), record.get("code"))
    if kind == "JobGone":
        return JobGone(message)
    cls = getattr(client_errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, EngineError) and cls is not RequestRefused:
        return cls(message)
    return EngineError(message)


_EXITING: List[subprocess.Popen] = []  # workers that gave their answer and are exiting, reaped by the next one


def _reap_exited() -> None:
    _EXITING[:] = [process for process in _EXITING if process.poll() is None]


class WorkerProcess:
    """One task for the worker: started at once, its records read as they come."""

    def __init__(self, engine: EngineClient, task: dict, *, folder: Optional[Path] = None):
        _reap_exited()
        self.folder = Path(folder) if folder is not None else private_folder()
        os.chmod(self.folder, 0o700)
        task = dict(task, url=engine.url, allow_plain_http=engine.allow_plain_http, timeout=engine.timeout)
        (self.folder / TASK_FILE).write_text(json.dumps(task), encoding="utf-8")
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            [LIBRARY_PARENT] + ([environment["PYTHONPATH"]] if environment.get("PYTHONPATH") else []))
        with open(self.folder / LOG_FILE, "wb") as log:
            self._process = subprocess.Popen(
                [python_executable(), "-m", "MedGenSlicerLib.worker", str(self.folder)],
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, cwd=str(self.folder), env=environment,
            )
        try:
            self._process.stdin.write((engine.token + "\n").encode("utf-8"))
            self._process.stdin.close()
        except OSError:
            pass  # a worker that died at once says so through its exit status
        self._offset = 0
        self._ended_reported = False
        self.finished_cleanly = False

    def is_alive(self) -> bool:
        return self._process.poll() is None

    def records(self) -> List[dict]:
        """The records written since the last call (complete lines only); never blocks."""
        path = self.folder / EVENTS_FILE
        try:
            with open(path, "rb") as events:
                events.seek(self._offset)
                data = events.read()
        except FileNotFoundError:
            data = b""
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        records = [json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip()]
        if not records and not self.is_alive() and not self._ended_reported:
            self._ended_reported = True
            if self._process.returncode != 0 or not self._offset:
                log = self.log_tail()
                records.append({"kind": "error", "type": "EngineError",
                                "message": f"the panel's worker process ended unexpectedly (exit status "
                                           f"{self._process.returncode}){': ' + log if log else ''}"})
        return records

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = (self.folder / LOG_FILE).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def has_pending(self) -> bool:
        """Whether records may still come: the process runs, or wrote lines not read yet."""
        if self.is_alive():
            return True
        try:
            return (self.folder / EVENTS_FILE).stat().st_size > self._offset or not self._ended_reported
        except FileNotFoundError:
            return not self._ended_reported

    def signal(self, name: str) -> None:
        (self.folder / name).touch()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to stop following and wait briefly; terminate it if it does not."""
        self.signal(DETACH_FILE)
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.terminate()
            self._process.wait(timeout)

    def remove(self, wait: bool = True) -> None:
        """The folder and everything in it (variants are patient data). Without ``wait`` a worker that is
        still exiting is left to finish and reaped later, so the GUI never waits for it."""
        if self.is_alive():
            if wait:
                self.stop()
            else:
                _EXITING.append(self._process)
        shutil.rmtree(self.folder, ignore_errors=True)


class ProcessCall:
    """One engine call in the worker (check_connection, delete_job, cancel_job, accept, report): poll
    `done()`, then `result()` returns the value or raises the error the engine answered."""

    def __init__(self, engine: EngineClient, name: str, **arguments):
        self._worker = WorkerProcess(engine, {"task": name, "arguments": arguments})
        self._outcome: Optional[dict] = None

    def done(self) -> bool:
        if self._outcome is None:
            for record in self._worker.records():
                if record["kind"] in ("result", "error"):
                    self._outcome = record
            if self._outcome is not None:  # the answer is the worker's last word: its folder can go now
                self._worker.remove(wait=False)
        return self._outcome is not None

    def wait(self, timeout: float) -> bool:
        import time

        deadline = time.monotonic() + timeout
        while not self.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.done()

    def result(self) -> Any:
        if not self.done():
            raise RuntimeError("result() before the call is done")
        if self._outcome["kind"] == "error":
            raise rebuild_error(self._outcome)
        return self._outcome["value"]


class JobProcess:
    """Submit or re-attach to one job in the worker; `drain()` gives `JobEvent`s, variants as `VariantSlab`s
    of modality values already cut to the region the job could change."""

    def __init__(self, engine: EngineClient, *, upload: Optional[dict] = None, job_id: Optional[str] = None,
                 volume_dtype=None, region=None, skip_variants: int = 0, poll_interval: float = 0.5,
                 folder: Optional[Path] = None, slab_ijk_to_ras=None):
        if (upload is None) == (job_id is None):
            raise ValueError("give an upload to submit or the id of a submitted job, not both")
        task = {"task": "follow_job", "upload": upload, "job_id": job_id, "poll_interval": poll_interval,
                "volume_dtype": np.dtype(volume_dtype).str if volume_dtype is not None else None,
                "region": [int(v) for v in region] if region is not None else None,
                "skip_variants": int(skip_variants),
                "slab_ijk_to_ras": np.asarray(slab_ijk_to_ras).tolist() if slab_ijk_to_ras is not None else None}
        self.job_id = job_id
        self.reconnecting = False
        self._worker = WorkerProcess(engine, task, folder=folder)

    @property
    def folder(self) -> Path:
        return self._worker.folder

    def is_alive(self) -> bool:
        return self._worker.is_alive()

    def has_pending(self) -> bool:
        return self._worker.has_pending()

    def cancel(self) -> None:
        self._worker.signal(CANCEL_FILE)

    def detach(self) -> None:
        self._worker.signal(DETACH_FILE)

    def abandon(self) -> None:
        """Nobody will read this job's events: the worker cancels the job once it is submitted, and removes
        its folder when it ends."""
        self._worker.signal(CANCEL_FILE)
        self._worker.signal(ABANDON_FILE)

    def remove(self, wait: bool = True) -> None:
        self._worker.remove(wait=wait)

    def drain(self) -> List[JobEvent]:
        events = []
        for record in self._worker.records():
            kind = record["kind"]
            if kind == "error":
                events.append(JobEvent("error", error=rebuild_error(record)))
                continue
            event = JobEvent(kind, status=record.get("status"))
            if kind == "reconnecting":
                self.reconnecting = True
                event.error = EngineError(record.get("message", ""))
            elif kind == "reconnected":
                self.reconnecting = False
            if kind == "submitted":
                self.job_id = record["status"]["id"]
            if record.get("variant"):
                event.variant = VariantInfo(**record["variant"])
            if record.get("slab"):
                path = self.folder / record["slab"]
                event.slab = VariantSlab(event.variant, np.load(path), np.asarray(record["ijk_to_ras"], dtype=np.float64))
                path.unlink()
            events.append(event)
        return events


class ExportProcess:
    """Send one finished variant to a PACS destination of the engine and follow it, in the worker."""

    def __init__(self, engine: EngineClient, job_id: str, destination: str, *, variant: int = 1,
                 deidentify: bool = True):
        self._worker = WorkerProcess(engine, {"task": "follow_export", "job_id": job_id, "destination": destination,
                                              "variant": int(variant), "deidentify": bool(deidentify)})

    def is_alive(self) -> bool:
        return self._worker.is_alive()

    def has_pending(self) -> bool:
        return self._worker.has_pending()

    def drain(self) -> List[ExportEvent]:
        events = []
        for record in self._worker.records():
            if record["kind"] == "error":
                events.append(ExportEvent("error", error=rebuild_error(record)))
            else:
                events.append(ExportEvent(record["kind"], status=record.get("status")))
        if not self._worker.has_pending():
            self._worker.remove(wait=False)
        return events
