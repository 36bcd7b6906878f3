"""The job store: one SQLite table of jobs plus one folder per job, so a restart loses nothing.

SQLite holds each job's state, parameters and progress; the files (upload, results) live under
``DATA_DIR/jobs/<id>/``. Every change is committed before it is acted on, so a server killed at any
moment finds, on restart, each job either queued, finished, or running (and puts it back in the queue).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from pydantic import BaseModel

from medgen.server.errors import QueueFull
from medgen.server.schemas import JobParameters, JobState, JobStatus, Progress, SourceInfo

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
        self._db = sqlite3.connect(self.data_dir / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

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
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (queued,) = self._db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (JobState.QUEUED,)).fetchone()
                if queued >= self.max_queued_jobs:
                    raise QueueFull(queued)
                self._db.execute(
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
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        record = self.get(job_id)
        assert record is not None
        return record

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _record(row)

    def count(self, state: JobState) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (state,)).fetchone()
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
            model=record.model,
            error=record.error,
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
        )

    # --- the worker's side --------------------------------------------------------------------

    def claim_next(self) -> JobRecord | None:
        """Mark the oldest queued job running and return it (None when the queue is empty)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT id FROM jobs WHERE state = ? ORDER BY seq LIMIT 1", (JobState.QUEUED,)
                ).fetchone()
                if row is not None:
                    self._db.execute(
                        "UPDATE jobs SET state = ?, started_at = ? WHERE id = ?",
                        (JobState.RUNNING, time.time(), row["id"]),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return None if row is None else self.get(row["id"])

    def set_progress(self, job_id: str, steps_done: int, steps_total: int) -> None:
        self._update(job_id, steps_done=steps_done, steps_total=steps_total)

    def set_variants_ready(self, job_id: str, count: int) -> None:
        self._update(job_id, variants_ready=count)

    def finish(self, job_id: str, state: JobState, error: str | None = None) -> None:
        if not state.finished:
            raise ValueError(f"finish() needs a final state, got {state}")
        self._update(job_id, state=state, error=error, finished_at=time.time())

    def requeue(self, job_id: str) -> None:
        """Put an interrupted job back at its old place in the queue (its finished variants stay)."""
        self._update(job_id, state=JobState.QUEUED, started_at=None)

    def request_cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued job now; flag a running one so the worker stops it at its next step."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "UPDATE jobs SET state = ?, finished_at = ?, cancel_requested = 1 WHERE id = ? AND state = ?",
                    (JobState.CANCELLED, time.time(), job_id, JobState.QUEUED),
                )
                self._db.execute(
                    "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = ?", (job_id, JobState.RUNNING)
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.get(job_id)

    def is_cancel_requested(self, job_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    def recover_after_restart(self) -> list[str]:
        """Jobs a killed server left running go back to the queue (or end, if their cancel was asked)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, cancel_requested FROM jobs WHERE state = ?", (JobState.RUNNING,)
            ).fetchall()
        requeued = []
        for row in rows:
            if row["cancel_requested"]:
                self.finish(row["id"], JobState.CANCELLED)
            else:
                self.requeue(row["id"])
                requeued.append(row["id"])
        return requeued

    def remove_scratch(self, job_id: str) -> None:
        shutil.rmtree(self.files(job_id).work_dir, ignore_errors=True)

    def _update(self, job_id: str, **values) -> None:
        columns = ", ".join(f"{name} = ?" for name in values)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*values.values(), job_id))


def _record(row: sqlite3.Row) -> JobRecord:
    data = dict(row)
    data["parameters"] = JobParameters.model_validate(json.loads(data["parameters"]))
    data["source"] = SourceInfo.model_validate(json.loads(data["source"]))
    data["cancel_requested"] = bool(data["cancel_requested"])
    return JobRecord.model_validate(data)
