"""Follow one job on the engine from a background thread, through dropped connections and engine restarts.

The thread submits the upload (or takes the id of a job submitted before, to re-attach), polls the job,
and downloads each variant as soon as the engine publishes it. Each variant is cut to the rows and
columns the job could change and converted to the volume's modality values here, off the GUI thread,
so the GUI only copies a small box into a volume. A poll that fails because the engine is out of reach
(refused, timed out, restarting, a 5xx) is retried with backoff, announced once as "reconnecting";
the job is never given up while the engine may still be computing on the user's data.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from .client import EngineClient, EngineError, EngineFailure, EngineTimeout, EngineUnreachable, JobFailed, RequestRefused
from .geometry import crop_rows_columns, on_own_slab_grid
from .nrrd import NrrdImage
from .payload import JobUpload
from .results import JobResult, VariantInfo, decode_variant, to_modality_values
from .tasks import POLL_INTERVAL_S, JobEvent, _BackgroundMonitor

FINAL_STATES = ("succeeded", "failed", "cancelled")
RETRYABLE_ERRORS = (EngineUnreachable, EngineTimeout, EngineFailure)
RECONNECT_FIRST_WAIT_S = 0.5
RECONNECT_MAX_WAIT_S = 8.0
JOB_GONE_STATUSES = (404, 410)


@dataclass
class VariantSlab:
    """A variant as the panel keeps it: the modality values of the box the job could change, on their grid."""

    variant: VariantInfo
    values: np.ndarray
    ijk_to_ras: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes)


class JobGone(EngineError):
    """The engine no longer knows the job (deleted, expired, or another engine's data folder)."""


class _Detached(Exception):
    """Raised inside the thread when the panel stops following the job."""


class JobMonitor(_BackgroundMonitor):
    """Submit one job (or re-attach to one by its id), follow it, and hand each variant over as it is published.

    ``volume_dtype``: convert each variant to modality values of that dtype (the source volume's) before
    handing it over as ``event.slab``; without it ``event.image`` holds the stored values as sent.
    ``region``: (j0, j1, i0, i1), the rows and columns of the slab the job may change (see
    `geometry.changed_region`); a variant is cut to them. ``skip_variants``: variants already received.
    ``slab_ijk_to_ras``: the volume's own grid of the slab sent (see `geometry.on_own_slab_grid`).
    """

    thread_name = "MedGenSlicer-job"

    def __init__(
        self,
        client: EngineClient,
        upload: Optional[JobUpload] = None,
        *,
        job_id: Optional[str] = None,
        poll_interval: float = POLL_INTERVAL_S,
        volume_dtype=None,
        region: Optional[Sequence[int]] = None,
        skip_variants: int = 0,
        reconnect_max_wait: float = RECONNECT_MAX_WAIT_S,
        slab_ijk_to_ras=None,
    ):
        if (upload is None) == (job_id is None):
            raise ValueError("give an upload to submit or the id of a submitted job, not both")
        self.client = client
        self.upload = upload
        self.poll_interval = poll_interval
        self.volume_dtype = np.dtype(volume_dtype) if volume_dtype is not None else None
        self.region = tuple(int(v) for v in region) if region is not None else None
        self.job_id: Optional[str] = job_id
        self.fetched = int(skip_variants)
        self.slab_ijk_to_ras = np.asarray(slab_ijk_to_ras, dtype=np.float64) if slab_ijk_to_ras is not None else None
        self.reconnect_max_wait = reconnect_max_wait
        self.reconnecting = False
        self._cancel = threading.Event()
        self._detach = threading.Event()
        self._wake = threading.Event()
        super().__init__()

    def cancel(self) -> None:
        """Ask the engine to stop the job (at its next step); every variant finished before still arrives."""
        self._cancel.set()
        self._wake.set()

    def detach(self) -> None:
        """Stop following the job without touching it on the engine (its id is kept by the caller)."""
        self._detach.set()
        self._wake.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def _run(self) -> None:
        try:
            if self.upload is not None:
                upload, self.upload = self.upload, None  # the slab is the engine's now: nothing here keeps it
                created = self.client.submit(upload)
                del upload
                self.job_id = created["id"]
                self.events.put(JobEvent("submitted", status=created))
            self._follow()
        except _Detached:
            pass
        except EngineError as exc:
            self.events.put(JobEvent("error", error=exc))
        except Exception as exc:  # noqa: BLE001 - a decoding bug must reach the user, not die silently
            self.events.put(JobEvent("error", error=EngineError(f"unexpected error: {type(exc).__name__}: {exc}")))

    def _follow(self) -> None:
        cancel_sent = False
        while True:
            if self._cancel.is_set() and not cancel_sent:
                self._send_cancel()
                cancel_sent = True
            status = self._call(self.client.status, self.job_id)
            self.events.put(JobEvent("status", status=status))
            if status["variants_ready"] > self.fetched:
                self._fetch_variants()
            if status["state"] in FINAL_STATES:
                break
            self._wait(self.poll_interval)
        if status["state"] == "failed":
            raise JobFailed(f"the engine could not finish the job: {status.get('error') or 'no reason given'}")
        result = self._call(self.client.result, self.job_id) if self.fetched else None
        self.events.put(JobEvent("finished", status=status, result=result))

    def _send_cancel(self) -> None:
        try:
            self._call(self.client.cancel, self.job_id)
        except RequestRefused as exc:
            if exc.status != 409:  # 409: it finished meanwhile; its variants are fetched as usual
                raise

    def _fetch_variants(self) -> None:
        result = self._call(self.client.result, self.job_id)
        for variant in result.variants[self.fetched:]:
            image = decode_variant(self._call(self.client.download, variant.array_url))
            if self.slab_ijk_to_ras is not None:
                image = NrrdImage(image.array, on_own_slab_grid(image.ijk_to_ras, self.slab_ijk_to_ras))
            if self.region is not None:
                image = NrrdImage(*crop_rows_columns(image.array, image.ijk_to_ras, self.region))
            if self.volume_dtype is not None:
                values = to_modality_values(image.array, result.source.rescale_slope,
                                            result.source.rescale_intercept, self.volume_dtype)
                slab = VariantSlab(variant, values, image.ijk_to_ras)
                self.events.put(JobEvent("variant", variant=variant, result=result, slab=slab))
            else:
                self.events.put(JobEvent("variant", variant=variant, image=image, result=result))
            self.fetched = variant.index

    def _call(self, function: Callable, *args):
        """``function(*args)``, retried with backoff while the engine is out of reach; a job the engine
        no longer knows ends the monitor with `JobGone`."""
        wait = RECONNECT_FIRST_WAIT_S
        while True:
            if self._detach.is_set():
                raise _Detached()
            try:
                answer = function(*args)
            except RETRYABLE_ERRORS as exc:
                if not self.reconnecting:
                    self.reconnecting = True
                    self.events.put(JobEvent("reconnecting", error=exc))
                self._wait(wait)
                wait = min(wait * 2, self.reconnect_max_wait)
                continue
            except RequestRefused as exc:
                if exc.status in JOB_GONE_STATUSES:
                    raise JobGone(f"the engine no longer has job {self.job_id} ({exc})") from None
                raise
            if self.reconnecting:
                self.reconnecting = False
                self.events.put(JobEvent("reconnected"))
            return answer

    def _wait(self, seconds: float) -> None:
        """Sleep, waking at once for a cancel (to send it) or a detach."""
        if self._detach.is_set():
            raise _Detached()
        if self._wake.wait(seconds):
            self._wake.clear()
        if self._detach.is_set():
            raise _Detached()


def wait_for_monitor(monitor: JobMonitor, timeout: float) -> list:
    """Drain ``monitor`` until its thread ends (for scripts and tests without an event loop)."""
    deadline = time.monotonic() + timeout
    events = []
    while monitor.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
        events += monitor.drain()
    return events + monitor.drain()


__all__ = ["FINAL_STATES", "JobGone", "JobMonitor", "JobResult", "VariantSlab", "wait_for_monitor"]
