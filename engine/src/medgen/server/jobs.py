"""The job store: one SQLite table of jobs plus one folder per job, so a restart loses nothing.

SQLite holds each job's state, parameters and progress; the files (upload, results) live under
``DATA_DIR/jobs/<id>/``. Every change is committed before it is acted on, so a server killed at any
moment finds, on restart, each job either queued, finished, or running (and puts it back in the queue).

A deleted job keeps a tombstone row (id, times, state, who deleted it and when); its parameters, source
description and files are gone. SQLite's ``secure_delete`` zeroes the space deleted content leaves.
"""

from __future__ import annotations

import enum
import json
import logging
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, ValidationError

from medgen.server.errors import QueueFull
from medgen.server.schemas import JobParameters, JobState, JobStatus, Progress, SourceInfo

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    model TEXT NOT NULL,
    parameters TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    steps_done INTEGER NOT NULL DEFAULT 0,
    steps_total INTEGER NOT NULL DEFAULT 0,
    variants_ready INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
"""
# Columns added after the first release; an older database gains them at start.
_ADDED_COLUMNS = {
    "delete_requested": "INTEGER NOT NULL DEFAULT 0",
    "deleted_at": "REAL",
    "deleted_by": "TEXT",
}
_DB_TIMEOUT_S = 30.0  # `medgen purge` may write while a server runs


class CancelOutcome(str, enum.Enum):
    """What a cancel did, decided atomically against the worker finishing the job."""

    CANCELLED = "cancelled"  # it was queued; it will never run
    REQUESTED = "requested"  # it is running; it ends cancelled (never succeeded) at its next step
    FINISHED = "finished"  # it had already finished; nothing changed


class DeleteOutcome(str, enum.Enum):
    DELETED = "deleted"  # its files and parameters are gone now
    PENDING = "pending"  # it is running: it is cancelled, and deleted when it stops
    GONE = "gone"  # it had been deleted before


class JobRecord(BaseModel):
    """One row of the store, typed."""

    seq: int
    id: str
    state: JobState
    model: str
    parameters: JobParameters
    source: SourceInfo
    created_at: float
    started_at: float | None
    finished_at: float | None
    steps_done: int
    steps_total: int
    variants_ready: int
    cancel_requested: bool
    error: str | None
    delete_requested: bool = False
    deleted_at: float | None = None
    deleted_by: str | None = None
    unreadable: str | None = None
    """Why the stored parameters or source could not be decoded (a row an older version wrote)."""

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    @property
    def seed(self) -> int:
        """The seed of variant 1; always set, since the store fixes it when the job is created."""
        assert self.parameters.seed is not None
        return self.parameters.seed


class JobFiles:
    """Where one job's files live: the upload, the engine's scratch space and the published results."""

    def __init__(self, root: Path):
        self.root = root

    @property
    def input_dir(self) -> Path:
        return self.root / "input"

    @property
    def work_dir(self) -> Path:
        return self.root / "work"

    @property
    def result_dir(self) -> Path:
        return self.root / "result"

    def engine_inputs(self) -> tuple[Path, Path]:
        """The source (a DICOM folder or one volume file) and the mask, as saved by the upload."""
        dicom_dir = self.input_dir / "dicom"
        sources = [dicom_dir] if dicom_dir.is_dir() else sorted(self.input_dir.glob("source.*"))
        masks = sorted(p for p in self.input_dir.glob("mask.*") if p.suffix != ".npy")
        if len(sources) != 1 or len(masks) != 1:
            raise FileNotFoundError(f"{self.input_dir}: the uploaded source or mask is missing")
        return sources[0], masks[0]

    def variant_dir(self, index: int) -> Path:
        """Published results of variant ``index`` (1-based); it exists only once complete."""
        return self.result_dir / f"variant-{index:02d}"


class JobStore:
    """Thread-safe access to the jobs table; the queue is the queued rows in creation order."""

    def __init__(self, data_dir: Path, *, max_queued_jobs: int):
        self.data_dir = Path(data_dir)
        self.jobs_dir = self.data_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.max_queued_jobs = max_queued_jobs
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.data_dir / "jobs.sqlite3", check_same_thread=False, isolation_level=None,
                                   timeout=_DB_TIMEOUT_S)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.executescript(_SCHEMA)
        present = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for name, declaration in _ADDED_COLUMNS.items():
            if name not in present:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT under the lock. On any failure roll back if SQLite still has the
        transaction open (a COMMIT that failed on a full disk may have ended it already), then re-raise:
        a failed ROLLBACK must never hide the first error or leave the connection mid-transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    try:
                        self._db.execute("ROLLBACK")
                    except sqlite3.Error as exc:
                        logger.warning("job store: rollback failed too (%s)", exc)
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def files(self, job_id: str) -> JobFiles:
        return JobFiles(self.jobs_dir / job_id)

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    # --- creating and reading -----------------------------------------------------------------

    def check_room(self) -> None:
        """Fail fast with 429 before an upload is read, when the queue is already full."""
        queued = self.count(JobState.QUEUED)
        if queued >= self.max_queued_jobs:
            raise QueueFull(queued)

    def create(self, job_id: str, *, model: str, parameters: JobParameters, source: SourceInfo) -> JobRecord:
        """Queue a job whose files are already in place; raises QueueFull (429) if there is no room."""
        if parameters.seed is None:
            raise ValueError("fix the seed before creating a job, so a restarted job makes the same images")
        with self._transaction() as db:
            (queued,) = db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (JobState.QUEUED,)).fetchone()
            if queued >= self.max_queued_jobs:
                raise QueueFull(queued)
            db.execute(
                "INSERT INTO jobs (id, state, model, parameters, source, created_at, steps_total) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    JobState.QUEUED,
                    model,
                    parameters.model_dump_json(),
                    source.model_dump_json(),
                    time.time(),
                    parameters.num_inference_steps * parameters.num_variants,
                ),
            )
        record = self.get(job_id)
        assert record is not None
        return record

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _record(row)

    def count(self, state: JobState) -> int:
        """Live jobs in ``state`` (tombstones not counted)."""
        with self._lock:
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = ? AND deleted_at IS NULL", (state,)
            ).fetchone()
        return int(count)

    def queue_position(self, record: JobRecord) -> int | None:
        """1 for the job that runs next; None for a job that is not waiting."""
        if record.state is not JobState.QUEUED:
            return None
        with self._lock:
            (ahead,) = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = ? AND seq < ?", (JobState.QUEUED, record.seq)
            ).fetchone()
        return int(ahead) + 1

    def status(self, record: JobRecord) -> JobStatus:
        return JobStatus(
            id=record.id,
            state=record.state,
            progress=Progress(steps_done=record.steps_done, steps_total=record.steps_total),
            queue_position=self.queue_position(record),
            num_variants=record.parameters.num_variants,
            variants_ready=record.variants_ready,
            cancel_requested=record.cancel_requested,
            delete_requested=record.delete_requested,
            model=record.model,
            error=record.error,
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            deleted_at=record.deleted_at,
            deleted_by=record.deleted_by,
        )

    # --- the worker's side --------------------------------------------------------------------

    def claim_next(self) -> JobRecord | None:
        """Mark the oldest queued job running and return it (None when the queue is empty).

        A job whose stored parameters cannot be decoded is failed here with the reason, never retried.
        """
        while True:
            with self._transaction() as db:
                row = db.execute(
                    "SELECT id FROM jobs WHERE state = ? AND deleted_at IS NULL ORDER BY seq LIMIT 1",
                    (JobState.QUEUED,),
                ).fetchone()
                if row is not None:
                    db.execute(
                        "UPDATE jobs SET state = ?, started_at = ? WHERE id = ?",
                        (JobState.RUNNING, time.time(), row["id"]),
                    )
            if row is None:
                return None
            record = self.get(row["id"])
            if record is not None and record.unreadable is None:
                return record
            if record is not None:
                self.finish(record.id, JobState.FAILED, error=_unreadable_error(record.unreadable))

    def set_progress(self, job_id: str, steps_done: int, steps_total: int) -> None:
        self._update(job_id, steps_done=steps_done, steps_total=steps_total)

    def set_variants_ready(self, job_id: str, count: int) -> None:
        self._update(job_id, variants_ready=count)

    def finish(self, job_id: str, state: JobState, error: str | None = None) -> JobState:
        """Record the final state and return the one recorded: a job whose cancel was asked while it ran
        ends cancelled even if its last step succeeded, so a cancel answered 200 is never a success."""
        if not state.finished:
            raise ValueError(f"finish() needs a final state, got {state}")
        with self._transaction() as db:
            if state is JobState.SUCCEEDED:
                db.execute(
                    "UPDATE jobs SET state = CASE WHEN cancel_requested THEN ? ELSE ? END, finished_at = ? "
                    "WHERE id = ?",
                    (JobState.CANCELLED, JobState.SUCCEEDED, time.time(), job_id),
                )
            else:
                db.execute("UPDATE jobs SET state = ?, error = ?, finished_at = ? WHERE id = ?",
                           (state, error, time.time(), job_id))
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobState(row["state"]) if row is not None else state

    def requeue(self, job_id: str) -> None:
        """Put an interrupted job back at its old place in the queue (its finished variants stay)."""
        self._update(job_id, state=JobState.QUEUED, started_at=None)

    def request_cancel(self, job_id: str) -> CancelOutcome:
        """Cancel a queued job now; flag a running one so the worker stops it at its next step (and never
        records it as succeeded); a finished job is left as it is. One transaction, so the answer holds."""
        with self._transaction() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ? AND deleted_at IS NULL", (job_id,)).fetchone()
            if row is None or JobState(row["state"]).finished:
                return CancelOutcome.FINISHED
            if row["state"] == JobState.QUEUED:
                db.execute("UPDATE jobs SET state = ?, finished_at = ?, cancel_requested = 1 WHERE id = ?",
                           (JobState.CANCELLED, time.time(), job_id))
                return CancelOutcome.CANCELLED
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            return CancelOutcome.REQUESTED

    def request_delete(self, job_id: str, deleted_by: str) -> DeleteOutcome:
        """Delete a job: a queued or finished one now (tombstone, then its folder); a running one is
        cancelled and deleted by the worker when it stops (`delete_requested` survives a restart)."""
        with self._transaction() as db:
            row = db.execute("SELECT state, deleted_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["deleted_at"] is not None:
                return DeleteOutcome.GONE
            if row["state"] == JobState.RUNNING:
                db.execute("UPDATE jobs SET cancel_requested = 1, delete_requested = 1, deleted_by = ? WHERE id = ?",
                           (deleted_by, job_id))
                return DeleteOutcome.PENDING
            if row["state"] == JobState.QUEUED:
                db.execute("UPDATE jobs SET state = ?, finished_at = ?, cancel_requested = 1 WHERE id = ?",
                           (JobState.CANCELLED, time.time(), job_id))
            self._tombstone(db, job_id, deleted_by)
        self.remove_files(job_id)
        self._checkpoint()
        return DeleteOutcome.DELETED

    def complete_requested_delete(self, job_id: str) -> bool:
        """After the worker stopped a job: delete it if its deletion was asked while it ran."""
        with self._transaction() as db:
            row = db.execute("SELECT delete_requested, deleted_by, state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or not row["delete_requested"] or not JobState(row["state"]).finished:
                return False
            self._tombstone(db, job_id, row["deleted_by"] or "unknown")
        self.remove_files(job_id)
        self._checkpoint()
        return True

    def _checkpoint(self) -> None:
        """Move committed pages into the database file and empty the write-ahead log, so the old row's
        text does not stay in the log (secure_delete has zeroed it in the page)."""
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # a busy reader: the next checkpoint does it
                logger.info("job store: checkpoint postponed (%s)", exc)

    @staticmethod
    def _tombstone(db: sqlite3.Connection, job_id: str, deleted_by: str) -> None:
        """Keep id, times, state and who deleted it; drop what described the patient's data."""
        db.execute(
            "UPDATE jobs SET deleted_at = ?, deleted_by = ?, delete_requested = 0, model = '', parameters = '{}', "
            "source = '{}', error = NULL WHERE id = ?",
            (time.time(), deleted_by, job_id),
        )
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'exports'").fetchone():
            db.execute("DELETE FROM exports WHERE job_id = ?", (job_id,))

    def has_active_export(self, job_id: str) -> bool:
        """Whether an export of the job is queued or running (its files are being read)."""
        with self._lock:
            if not self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'exports'").fetchone():
                return False
            row = self._db.execute(
                "SELECT 1 FROM exports WHERE job_id = ? AND state IN ('queued', 'running') LIMIT 1", (job_id,)
            ).fetchone()
        return row is not None

    def remove_files(self, job_id: str) -> None:
        """The job's whole folder: upload, scratch, results, export copies and resume records."""
        shutil.rmtree(self.files(job_id).root, ignore_errors=True)

    def remove_inputs(self, job_id: str) -> None:
        shutil.rmtree(self.files(job_id).input_dir, ignore_errors=True)

    def finished_jobs(self) -> list[JobRecord]:
        """Every finished job that is not deleted, oldest first (for retention)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE state IN (?, ?, ?) AND deleted_at IS NULL ORDER BY seq",
                (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED),
            ).fetchall()
        return [_record(row) for row in rows]

    def known_ids(self) -> set[str]:
        with self._lock:
            return {row["id"] for row in self._db.execute("SELECT id FROM jobs")}

    def tombstone_ids(self) -> list[str]:
        with self._lock:
            return [row["id"] for row in self._db.execute("SELECT id FROM jobs WHERE deleted_at IS NOT NULL")]

    def vacuum(self) -> None:
        """Rewrite the database file without the space deleted rows left, and empty the write-ahead log."""
        with self._lock:
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def is_cancel_requested(self, job_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    def recover_after_restart(self) -> list[str]:
        """Jobs a killed server left running go back to the queue (or end, if their cancel was asked)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, cancel_requested FROM jobs WHERE state = ? AND deleted_at IS NULL", (JobState.RUNNING,)
            ).fetchall()
        requeued = []
        for row in rows:
            if row["cancel_requested"]:
                self.finish(row["id"], JobState.CANCELLED)
                self.complete_requested_delete(row["id"])
            else:
                self.requeue(row["id"])
                requeued.append(row["id"])
        return requeued

    def fail_unreadable(self) -> list[str]:
        """At start: unfinished jobs whose stored parameters cannot be decoded fail with the reason, so
        they are never picked up (and never stop the worker) again."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE state IN (?, ?) AND deleted_at IS NULL", (JobState.QUEUED, JobState.RUNNING)
            ).fetchall()
        failed = []
        for row in rows:
            record = _record(row)
            if record.unreadable is not None:
                self.finish(record.id, JobState.FAILED, error=_unreadable_error(record.unreadable))
                failed.append(record.id)
        return failed

    def remove_scratch(self, job_id: str) -> None:
        shutil.rmtree(self.files(job_id).work_dir, ignore_errors=True)

    def _update(self, job_id: str, **values) -> None:
        columns = ", ".join(f"{name} = ?" for name in values)
        with self._transaction() as db:
            db.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*values.values(), job_id))


def _record(row: sqlite3.Row) -> JobRecord:
    """The typed record of a row; a tombstone or an undecodable row gets placeholder parameters and source."""
    data = dict(row)
    data["cancel_requested"] = bool(data["cancel_requested"])
    data["delete_requested"] = bool(data.get("delete_requested") or 0)
    parameters = source = None
    if data.get("deleted_at") is None:
        try:
            parameters = JobParameters.model_validate(json.loads(data["parameters"]))
            source = SourceInfo.model_validate(json.loads(data["source"]))
        except (ValueError, TypeError, ValidationError) as exc:
            data["unreadable"] = _first_problem(exc)
    data["parameters"] = parameters or JobParameters.model_construct(prompt="", seed=0)
    data["source"] = source or SourceInfo.model_construct(
        format="", shape=[], dtype="", modality="", ijk_to_lps=[], rescale_slope=[], rescale_intercept=[], slices=[]
    )
    return JobRecord.model_validate(data)


def _first_problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error.get("loc", ())) or "parameters"
        return f"{where}: {error.get('msg')}"
    return str(exc)


def _unreadable_error(problem: str | None) -> str:
    return (f"the stored job cannot be read by this engine version ({problem}); submit it again")
