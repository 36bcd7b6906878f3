"""Follow an engine's export from a background thread, and hand events to a GUI one by one.

Threads here never touch Qt or MRML: they only talk HTTP and decode numpy arrays, and hand their
results over through a queue (`ExportMonitor.events`). In the panel they run inside the worker
process (`worker`, `background`); following a job lives in `jobs.JobMonitor`.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from .client import EngineClient, EngineError, EngineTimeout
from .nrrd import NrrdImage
from .results import JobResult, VariantInfo

POLL_INTERVAL_S = 0.5
EXPORT_FINAL_STATES = ("succeeded", "failed")
EXPORT_MAX_WAIT_S = 3600.0  # the engine's own timeouts end an export long before; this only guards a bug


def deliver(events: Iterable, handle: Callable[[Any], None], report: Callable[[Any, Exception], None]) -> int:
    """Hand each event to ``handle``; one whose handling raises goes to ``report`` and the rest are still
    handled. The GUI timer drains a monitor's queue before handling, so an event it fails on must not
    take the events after it down too. Returns how many were handled without error."""
    handled = 0
    for event in events:
        try:
            handle(event)
        except Exception as exc:  # noqa: BLE001 - reported to the user by the caller, the pump goes on
            report(event, exc)
        else:
            handled += 1
    return handled


@dataclass
class JobEvent:
    """What happened to a job: kind is submitted, status, reconnecting, reconnected, variant, finished or error.

    A variant comes as ``image`` (stored values) or, when the monitor converts, as ``slab`` (a
    `jobs.VariantSlab` of modality values)."""

    kind: str
    status: Optional[dict] = None
    variant: Optional[VariantInfo] = None
    image: Optional[NrrdImage] = None
    result: Optional[JobResult] = None
    error: Optional[EngineError] = None
    slab: Any = None


class _BackgroundMonitor:
    """A worker thread that talks to the engine and leaves events in a queue for the GUI timer."""

    thread_name = "MedGenSlicer-monitor"

    def __init__(self):
        self.events: "queue.Queue" = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def start(self):
        self._thread.start()
        return self

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def drain(self) -> list:
        """Events since the last call, for the GUI timer (never blocks)."""
        drained = []
        while True:
            try:
                drained.append(self.events.get_nowait())
            except queue.Empty:
                return drained


@dataclass
class ExportEvent:
    """What happened to an export: kind is started, status, finished or error."""

    kind: str
    status: Optional[dict] = None
    error: Optional[EngineError] = None


class ExportMonitor(_BackgroundMonitor):
    """Send one finished variant to a destination configured on the engine, and follow it to the end."""

    thread_name = "MedGenSlicer-export"

    def __init__(
        self,
        client: EngineClient,
        job_id: str,
        destination: str,
        *,
        variant: int = 1,
        deidentify: bool = False,
        poll_interval: float = POLL_INTERVAL_S,
        max_wait: float = EXPORT_MAX_WAIT_S,
    ):
        self.client = client
        self.job_id = job_id
        self.destination = destination
        self.variant = variant
        self.deidentify = deidentify
        self.poll_interval = poll_interval
        self.max_wait = max_wait
        super().__init__()

    def _run(self) -> None:
        try:
            status = self.client.export(self.job_id, self.destination, variant=self.variant,
                                        deidentify=self.deidentify)
            self.events.put(ExportEvent("started", status=status))
            deadline = time.monotonic() + self.max_wait
            while status["state"] not in EXPORT_FINAL_STATES:
                if time.monotonic() > deadline:
                    raise EngineTimeout(f"the export to {self.destination!r} did not finish within "
                                        f"{self.max_wait:g} s; see the engine's log")
                time.sleep(self.poll_interval)
                status = self.client.export_status(self.job_id, status["id"])
                self.events.put(ExportEvent("status", status=status))
            self.events.put(ExportEvent("finished", status=status))
        except EngineError as exc:
            self.events.put(ExportEvent("error", error=exc))
        except Exception as exc:  # noqa: BLE001 - a decoding bug must reach the user, not die silently
            self.events.put(ExportEvent("error", error=EngineError(f"unexpected error: {type(exc).__name__}: {exc}")))


def export_summary(status: dict) -> str:
    """One line for the panel: how far the export is, or how it ended and why."""
    destination, total = status["destination"], status["total"]
    delivered, failed = status["delivered"], status["failed"]
    if status["state"] not in EXPORT_FINAL_STATES:
        return f"Sending to {destination}: {delivered + failed} of {total or '?'} instance(s)…"
    message = status.get("message") or "no reason given"
    if status["state"] == "succeeded":
        return f"{message[0].upper()}{message[1:]}."
    counts = f" ({delivered} of {total} instance(s) delivered)" if total else ""
    return f"Send to {destination} failed{counts}: {message}"
