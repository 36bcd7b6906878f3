"""The panel's engine work, run in a process of its own: ``python -m MedGenSlicerLib.worker FOLDER``.

Slicer's main thread keeps Python's GIL while Qt waits for events (PythonQt does not enable its
thread support, and neither Slicer nor CTK release the GIL), so a Python thread in Slicer's process
runs only while the GUI runs Python. Network transfers, decoding and conversions therefore run here,
in a child process, as Slicer's own modules and extensions run long work (SlicerMONAIAuto3DSeg and
``slicer.util.launchConsoleProcess`` on Slicer's main branch: a process polled from a QTimer).

FOLDER (private to the user) holds ``task.json``; the token arrives on standard input, never on the
command line. The worker appends one JSON record per event to ``events.jsonl`` and leaves each
variant as an ``.npy`` file beside it; a file named ``cancel`` or ``detach`` asks it to cancel the job
or to stop following it, and ``abandon`` to remove the folder when it ends. Standard library and numpy only, like the rest of MedGenSlicerLib.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from .client import EngineClient, EngineError, RequestRefused
from .jobs import JobMonitor
from .payload import FilePart, JobUpload
from .results import extract_zip, write_private_report
from .tasks import ExportMonitor

TASK_FILE = "task.json"
EVENTS_FILE = "events.jsonl"
CANCEL_FILE = "cancel"
DETACH_FILE = "detach"
ABANDON_FILE = "abandon"  # nobody reads the events: remove the folder at the end
LOG_FILE = "worker.log"
DRAIN_INTERVAL_S = 0.05


class EventWriter:
    """Appends whole JSON lines: a reader never sees half a record (it reads up to the last newline)."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict) -> None:
        line = (json.dumps(record) + "\n").encode("utf-8")
        descriptor = os.open(str(self.path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(descriptor, line)
        finally:
            os.close(descriptor)


def error_record(error: BaseException) -> dict:
    """An error as the parent rebuilds it (`background.rebuild_error`)."""
    if not isinstance(error, EngineError):
        return {"kind": "error", "type": "EngineError", "message": f"unexpected error: {type(error).__name__}: {error}"}
    record = {"kind": "error", "type": type(error).__name__, "message": str(error)}
    if isinstance(error, RequestRefused):
        record.update(status=error.status, code=error.code)
    return record


def upload_from_task(spec: dict) -> JobUpload:
    """The upload the GUI wrote to files: form fields and the paths of the parts, read as they are sent."""
    return JobUpload(
        fields=[(name, value) for name, value in spec["fields"]],
        files=[FilePart(part["field"], part["filename"], content_type=part["content_type"], path=part["path"])
               for part in spec["files"]],
        slab_start=int(spec["slab_start"]),
        slab_stop=int(spec["slab_stop"]),
    )


def follow_job(client: EngineClient, task: dict, folder: Path, out: EventWriter) -> None:
    """Submit (or re-attach to) a job and report every event; variants go to .npy files."""
    upload = upload_from_task(task["upload"]) if task.get("upload") else None
    monitor = JobMonitor(
        client, upload, job_id=task.get("job_id"), poll_interval=float(task.get("poll_interval", 0.5)),
        volume_dtype=task.get("volume_dtype"), region=task.get("region"),
        skip_variants=int(task.get("skip_variants", 0)), slab_ijk_to_ras=task.get("slab_ijk_to_ras"),
    )
    uploaded = upload is None
    del upload
    monitor.start()
    while True:
        if (folder / CANCEL_FILE).exists() and not monitor.cancel_requested:
            monitor.cancel()
        if (folder / DETACH_FILE).exists():
            monitor.detach()
        alive = monitor.is_alive()
        for event in monitor.drain():
            if event.kind == "submitted" and not uploaded:  # the engine has the slab: no copy stays here
                for part in task["upload"]["files"]:
                    Path(part["path"]).unlink(missing_ok=True)
                uploaded = True
            out.write(event_record(event, folder))
        if not alive:
            return
        time.sleep(DRAIN_INTERVAL_S)


def event_record(event, folder: Path) -> dict:
    record: Dict[str, object] = {"kind": event.kind}
    if event.kind == "error":
        return error_record(event.error)
    if event.status is not None:
        record["status"] = event.status
    if event.error is not None:
        record["message"] = str(event.error)
    if event.variant is not None:
        record["variant"] = dataclasses.asdict(event.variant)
    if event.slab is not None:
        name = f"variant-{event.variant.index:02d}.npy"
        partial = folder / (name + ".partial")
        with open(partial, "wb") as target:
            np.save(target, event.slab.values)
        partial.replace(folder / name)
        record.update(slab=name, ijk_to_ras=np.asarray(event.slab.ijk_to_ras).tolist())
    return record


def follow_export(client: EngineClient, task: dict, folder: Path, out: EventWriter) -> None:
    monitor = ExportMonitor(client, task["job_id"], task["destination"], variant=int(task["variant"]),
                            deidentify=bool(task["deidentify"])).start()
    while True:
        alive = monitor.is_alive()
        for event in monitor.drain():
            out.write(error_record(event.error) if event.kind == "error" else {"kind": event.kind, "status": event.status})
        if not alive:
            return
        time.sleep(DRAIN_INTERVAL_S)


def _accept(client: EngineClient, url: str, folder: str) -> List[str]:
    return [str(path) for path in extract_zip(client.download(url), Path(folder))]


def _report(client: EngineClient, job_id: str, folder: Optional[str] = None) -> str:
    return str(write_private_report(client.report(job_id), job_id, folder=Path(folder) if folder else None))


CALLS: Dict[str, Callable] = {
    "check_connection": lambda client: client.check_connection(),
    "delete_job": lambda client, job_id: client.delete_job(job_id),
    "cancel_job": lambda client, job_id: client.cancel(job_id),
    "accept": _accept,
    "report": _report,
}


def run(folder: Path, token: str) -> None:
    task = json.loads((folder / TASK_FILE).read_text(encoding="utf-8"))
    out = EventWriter(folder / EVENTS_FILE)
    try:
        client = EngineClient(task["url"], token, allow_plain_http=bool(task.get("allow_plain_http")),
                              timeout=float(task.get("timeout", 10.0)))
        if task["task"] == "follow_job":
            follow_job(client, task, folder, out)
        elif task["task"] == "follow_export":
            follow_export(client, task, folder, out)
        else:
            value = CALLS[task["task"]](client, **task.get("arguments", {}))
            out.write({"kind": "result", "value": value})
    except BaseException as error:  # noqa: BLE001 - every failure reaches the panel as a record
        out.write(error_record(error))
    if (folder / ABANDON_FILE).exists():
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m MedGenSlicerLib.worker FOLDER (token on standard input)", file=sys.stderr)
        return 2
    run(Path(argv[0]), sys.stdin.readline().strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
