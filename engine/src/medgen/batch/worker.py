"""One worker: keeps one model loaded and turns manifest rows into published row folders.

The same class runs in the local process and as a Ray actor. A row is written by
:class:`medgen.api.Inpainter` into a staging folder beside ``DIR/rows/<id>`` and moved into place by
one rename, so a folder under ``rows/`` is always complete. Two attempts at one row (a retry whose
first try was not dead after all) cannot both publish: the second finds the folder and keeps it.

A row is generated alone (``run``) or with others in shared model calls (``run_many``). By default
the model's layers run batched: a row's images are the same within float rounding however it was
batched, locally or on Ray. With ``batch_invariant`` (``--batch-invariant``) every row is generated
under :func:`medgen.generate.batched.batch_invariant`, so its files are the same bytes.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from medgen.batch.index import ROWS_DIR, describe_published_row
from medgen.batch.manifest import BatchRow
from medgen.errors import MedgenError


@dataclass
class RowOutcome:
    """What became of one attempt at a row. ``retryable`` is False for bad input, which fails the
    same way every time."""

    row_id: str
    ok: bool
    index_lines: list[dict] = field(default_factory=list)
    error: str | None = None
    kind: str | None = None  # on failure: input, error or lost (see index.failure_entry)
    retryable: bool = False
    generate_s: float | None = None  # inside Inpainter: read, generate, write
    worker_s: float | None = None  # the whole attempt in the worker, describing the folder included
    worker: str = ""  # host:pid of the process that ran it
    already_published: bool = False  # an earlier attempt had published the folder

    @classmethod
    def lost(cls, row_id: str, error: str) -> "RowOutcome":
        return cls(row_id, ok=False, error=error, kind="lost", retryable=True)


def should_retry(outcome: RowOutcome, attempts: int, max_retries: int) -> bool:
    """Unexpected errors and lost workers are tried again, up to max_retries more times."""
    return not outcome.ok and outcome.retryable and attempts <= max_retries


class RowWorker:
    """Holds an Inpainter (one model load) and runs rows into ``out_dir/rows/<id>``."""

    def __init__(
        self,
        model: str | Path,
        out_dir: str | Path,
        *,
        device: str = "auto",
        dtype: str | None = None,
        scheduler: str | None = None,
        threads: int | None = None,
        batch_invariant: bool = False,
    ):
        from medgen.api import Inpainter
        from medgen.threads import set_threads

        set_threads(threads)  # a Ray worker's start-up; None (a local run): as the command set it
        self.out_dir = Path(out_dir)
        self.batch_invariant = batch_invariant
        self.inpainter = Inpainter(model, device=device, dtype=dtype, scheduler=scheduler)
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def load(self) -> str | None:
        """Load the model now, so the first row's timing is the row's alone; the error text if it fails."""
        try:
            self.inpainter.model
        except Exception as error:  # reported to the driver, which stops the run with it
            return f"{self.inpainter.model_path}: the model did not load: {error}"
        return None

    def pid(self) -> int:
        return os.getpid()

    def run(self, row: BatchRow) -> RowOutcome:
        """One attempt at a row. Never raises: every failure comes back as an outcome."""
        from medgen.api import run_alone

        start = time.perf_counter()
        outcome = RowOutcome(row.id, ok=False, worker=self.name)
        row_dir = self.out_dir / ROWS_DIR / row.id
        if row_dir.is_dir():
            outcome.already_published = True
        else:
            try:
                run_alone(self.inpainter, row.request(row_dir), batch_invariant=self.batch_invariant)
                outcome.generate_s = time.perf_counter() - start
            except Exception as error:
                self._failed(row, outcome, error)
        return self._described(row, outcome, start)

    def run_many(self, rows: list[BatchRow]) -> list[RowOutcome]:
        """One attempt at several rows whose crops go through the model together (``run`` of each
        within float rounding; with batch_invariant the same files). Never raises. Each row's
        generate_s is its share of the time of the whole."""
        from medgen.api import run_together

        start = time.perf_counter()
        outcomes = [RowOutcome(row.id, ok=False, worker=self.name) for row in rows]
        todo = []
        for row, outcome in zip(rows, outcomes):
            if (self.out_dir / ROWS_DIR / row.id).is_dir():
                outcome.already_published = True
            else:
                todo.append((row, outcome))
        requests = [row.request(self.out_dir / ROWS_DIR / row.id) for row, _ in todo]
        try:
            results = run_together(self.inpainter, requests, batch_invariant=self.batch_invariant)
        except Exception as error:  # the shared model call failed: every row of it failed
            results = [error] * len(todo)
        share = (time.perf_counter() - start) / max(len(todo), 1)
        for (row, outcome), result in zip(todo, results):
            if isinstance(result, Exception):
                self._failed(row, outcome, result)
            else:
                outcome.generate_s = share
        return [self._described(row, outcome, start) for row, outcome in zip(rows, outcomes)]

    def _failed(self, row: BatchRow, outcome: RowOutcome, error: Exception) -> None:
        """Record why an attempt failed; bad input is final, anything else may be retried. A folder
        that another attempt published meanwhile counts as done."""
        if isinstance(error, MedgenError):
            outcome.error, outcome.kind = str(error), "input"
        else:
            trace = "".join(traceback.format_exception(error, limit=8))
            outcome.error = f"{type(error).__name__}: {error}\n{trace}"
            outcome.kind, outcome.retryable = "error", True
        if (self.out_dir / ROWS_DIR / row.id).is_dir():
            outcome.error, outcome.kind, outcome.retryable = None, None, False
            outcome.already_published = True

    def _described(self, row: BatchRow, outcome: RowOutcome, start: float) -> RowOutcome:
        """The index lines of a published row (an error if its folder cannot be described)."""
        row_dir = self.out_dir / ROWS_DIR / row.id
        if outcome.error is None:
            try:
                outcome.index_lines = describe_published_row(self.out_dir, row.id, line=row.line)
                outcome.ok = True
            except Exception as error:  # a folder that cannot be described is an error, never a silent skip
                outcome.error, outcome.kind, outcome.retryable = f"{row_dir}: cannot index: {error}", "error", False
        outcome.worker_s = time.perf_counter() - start
        return outcome
