"""Exports of finished variants to configured PACS destinations, run off the HTTP thread and the GPU worker.

An export is a row in SQLite (beside the jobs) that a client polls; the sending itself is
`medgen.dicom.export.export_series` on a thread of its own, so a slow PACS never holds up generation.
Each (variant, destination, de-identification) keeps one resume record in the job's folder: sending the
same variant again delivers only what is missing, and a server stopped mid-export loses nothing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
import zipfile
from pathlib import Path

from medgen.dicom.export import ExportError, ExportOptions, ExportReport, InstanceResult, InstanceStatus
from medgen.dicom.export import export_id as resume_id
from medgen.dicom.export import export_series
from medgen.errors import MedgenError
from medgen.server.config import ServerConfig
from medgen.server.destinations import ExportDestination
from medgen.server.errors import ApiError
from medgen.server.jobs import JobFiles, JobStore
from medgen.server.results import DICOM_ZIP_FILENAME
from medgen.server.schemas import ExportState, ExportStatus, InstanceExportResult

logger = logging.getLogger(__name__)

MAX_CONCURRENT_EXPORTS = 2
_STOP_WAIT_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS exports (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    job_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    variant INTEGER NOT NULL,
    deidentify INTEGER NOT NULL,
    state TEXT NOT NULL,
    total INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    message TEXT,
    results TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS exports_by_job ON exports (job_id, seq);
"""


class ExportInterrupted(Exception):
    """Raised from the per-instance callback when the server shuts down mid-export."""


class ExportStore:
    """The exports table, in the jobs database (its own connection, so job updates never wait on it)."""

    def __init__(self, data_dir: Path):
        self._lock = threading.Lock()
        self._db = sqlite3.connect(Path(data_dir) / "jobs.sqlite3", check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(self, job_id: str, destination: str, variant: int, deidentify: bool) -> ExportStatus:
        """A queued export; 409 while the same variant is already on its way to the same destination."""
        export_id = uuid.uuid4().hex
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                busy = self._db.execute(
                    "SELECT id FROM exports WHERE job_id = ? AND destination = ? AND variant = ? AND deidentify = ? "
                    "AND state IN (?, ?)",
                    (job_id, destination, variant, int(deidentify), ExportState.QUEUED, ExportState.RUNNING),
                ).fetchone()
                if busy is not None:
                    raise ApiError(409, "export_running", f"variant {variant} is already being sent to "
                                   f"{destination!r} (export {busy['id']}); poll that export instead")
                self._db.execute(
                    "INSERT INTO exports (id, job_id, destination, variant, deidentify, state, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (export_id, job_id, destination, variant, int(deidentify), ExportState.QUEUED, time.time()),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        status = self.get(job_id, export_id)
        assert status is not None
        return status

    def get(self, job_id: str, export_id: str) -> ExportStatus | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM exports WHERE id = ? AND job_id = ?", (export_id, job_id)).fetchone()
        return None if row is None else _status(row)

    def start(self, export_id: str, total: int) -> None:
        self._update(export_id, state=ExportState.RUNNING, total=total, started_at=time.time())

    def set_counts(self, export_id: str, delivered: int, failed: int) -> None:
        self._update(export_id, delivered=delivered, failed=failed)

    def finish(self, export_id: str, state: ExportState, message: str, results: list[InstanceExportResult]) -> None:
        self._update(
            export_id,
            state=state,
            message=message,
            total=len(results) or None,
            delivered=sum(1 for r in results if InstanceStatus(r.status).delivered),
            failed=sum(1 for r in results if r.status == InstanceStatus.FAILURE.value),
            results=json.dumps([r.model_dump() for r in results]),
            finished_at=time.time(),
        )

    def fail_interrupted(self) -> int:
        """Exports a stopped server left queued or running end as failed; sending again resumes them."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE exports SET state = ?, message = ?, finished_at = ? WHERE state IN (?, ?)",
                (ExportState.FAILED, "the engine stopped during the export; send it again (instances already at "
                 "the destination are not sent twice)", time.time(), ExportState.QUEUED, ExportState.RUNNING),
            )
        return cursor.rowcount

    def _update(self, export_id: str, **values) -> None:
        values = {name: value for name, value in values.items() if value is not None}
        columns = ", ".join(f"{name} = ?" for name in values)
        with self._lock:
            self._db.execute(f"UPDATE exports SET {columns} WHERE id = ?", (*values.values(), export_id))


class ExportRunner:
    """Runs each export on a daemon thread, at most MAX_CONCURRENT_EXPORTS at once."""

    def __init__(self, exports: ExportStore, jobs: JobStore, config: ServerConfig,
                 options: ExportOptions | None = None):
        self._exports = exports
        self._jobs = jobs
        self._config = config
        self._options = options or ExportOptions()
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT_EXPORTS)
        self._unpack_lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self, export: ExportStatus) -> None:
        thread = threading.Thread(target=self._run, args=(export,), name=f"medgen-export-{export.id[:8]}", daemon=True)
        with self._threads_lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def stop(self) -> None:
        """Interrupt running exports at their next instance, and wait a little for them to record it."""
        self._stopping.set()
        deadline = time.monotonic() + _STOP_WAIT_S
        with self._threads_lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0))

    def _run(self, export: ExportStatus) -> None:
        with self._slots:
            if self._stopping.is_set():
                return  # stays queued; the next start marks it interrupted
            try:
                state, message, results = self._send(export)
            except ExportInterrupted:
                return
            except Exception as exc:  # noqa: BLE001 - the thread must record any failure, not die silently
                logger.exception("export %s: internal error", export.id)
                state, message, results = (ExportState.FAILED, f"internal error ({type(exc).__name__}: {exc}); "
                                           f"see the engine's log", [])
            try:
                self._exports.finish(export.id, state, message, results)
            except sqlite3.ProgrammingError:  # the store closed under us at shutdown
                return
            logger.info("export %s: %s: %s", export.id, state.value, message)

    def _send(self, export: ExportStatus) -> tuple[ExportState, str, list[InstanceExportResult]]:
        destination = self._config.destination(export.destination)
        if destination is None:
            return ExportState.FAILED, f"destination {export.destination!r} is no longer configured", []
        files = self._jobs.files(export.job_id)
        series = self._unpacked_series(files, export.variant)
        ident = resume_id([series], destination.target, export.deidentify)
        record = files.root / "exports" / "records" / f"{ident}.jsonl"
        total = sum(1 for path in series.rglob("*") if path.is_file())
        self._exports.start(export.id, total)
        counts = {"delivered": 0, "failed": 0}

        def on_result(result: InstanceResult) -> None:
            counts["delivered" if result.status.delivered else "failed"] += 1
            self._exports.set_counts(export.id, counts["delivered"], counts["failed"])
            if self._stopping.is_set():
                raise ExportInterrupted()

        try:
            report = export_series([series], destination.target, deidentify=export.deidentify, record_path=record,
                                   options=self._options, on_result=on_result)
        except ExportError as error:
            return ExportState.FAILED, str(error), _results(error.report, series)
        except MedgenError as error:
            return ExportState.FAILED, f"the series could not be exported: {error}", []
        state = ExportState.SUCCEEDED if report.ok else ExportState.FAILED
        return state, _message(report, destination), _results(report, series)

    def _unpacked_series(self, files: JobFiles, variant: int) -> Path:
        """The variant's DICOM files in a folder of the job (unpacked once; the resume record names it)."""
        target = files.root / "exports" / f"variant-{variant:02d}"
        with self._unpack_lock:
            if target.is_dir():
                return target
            partial = target.with_name(f".{target.name}.partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            root = partial.resolve()
            with zipfile.ZipFile(files.variant_dir(variant) / DICOM_ZIP_FILENAME) as archive:
                for entry in archive.infolist():
                    path = (root / entry.filename).resolve()
                    if root not in path.parents:
                        raise ValueError(f"zip entry {entry.filename!r} lies outside the series folder")
                    if not entry.is_dir():
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_bytes(archive.read(entry))
            os.replace(partial, target)
        return target


def _message(report: ExportReport, destination: ExportDestination) -> str:
    """One sentence for the panel: what arrived, or how many did not and the first reason."""
    sent = report.count(InstanceStatus.SUCCESS) + report.count(InstanceStatus.WARNING)
    earlier = report.count(InstanceStatus.ALREADY_SENT)
    failures = [r for r in report.results if not r.status.delivered]
    name = repr(destination.name)
    if failures:
        return (f"{len(failures)} of {len(report.results)} instance(s) did not reach {name}: "
                f"{failures[0].message or failures[0].status.value}")
    if not sent:
        return f"all {earlier} instance(s) already at {name} from an earlier export (not sent twice)"
    if earlier:
        return f"sent {sent} instance(s) to {name}; {earlier} already there from an earlier export (not sent twice)"
    return f"sent {sent} instance(s) to {name}"


def _results(report: ExportReport | None, series: Path) -> list[InstanceExportResult]:
    if report is None:
        return []
    return [
        InstanceExportResult(
            file=r.path.relative_to(series).as_posix() if r.path.is_relative_to(series) else r.path.name,
            sop_class_uid=r.sop_class_uid,
            sop_instance_uid=r.sop_instance_uid,
            status=r.status.value,
            status_code=r.status_code,
            message=r.message,
        )
        for r in report.results
    ]


def _status(row: sqlite3.Row) -> ExportStatus:
    data = dict(row)
    return ExportStatus(
        id=data["id"],
        job_id=data["job_id"],
        destination=data["destination"],
        variant=data["variant"],
        deidentify=bool(data["deidentify"]),
        state=ExportState(data["state"]),
        total=data["total"],
        delivered=data["delivered"],
        failed=data["failed"],
        message=data["message"],
        results=[InstanceExportResult.model_validate(r) for r in json.loads(data["results"])],
        status_url=f"/v1/jobs/{data['job_id']}/exports/{data['id']}",
        created_at=data["created_at"],
        started_at=data["started_at"],
        finished_at=data["finished_at"],
    )
