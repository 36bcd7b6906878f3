"""The local runner: rows one after another in this process, the model loaded once for the run."""

from __future__ import annotations

import time
from typing import Callable

from medgen.batch.manifest import BatchRow
from medgen.batch.worker import RowOutcome, RowWorker, should_retry
from medgen.errors import InputError

FinishedCallback = Callable[[BatchRow, RowOutcome, int, float], None]
"""Called once per row with its last outcome, the number of attempts and the row's seconds as the
driver saw them (from the first hand-out to the last result)."""


class LocalRunner:
    """Runs rows in this process with one RowWorker; unexpected errors are retried in place."""

    description = "this process"

    def __init__(self, worker_options: dict, *, max_retries: int):
        self.worker_options = worker_options
        self.max_retries = max_retries
        self.workers = 1
        self.worker: RowWorker | None = None

    def start(self) -> None:
        self.worker = RowWorker(**self.worker_options)
        error = self.worker.load()
        if error:
            raise InputError(None, error)

    def run(self, rows: list[BatchRow], on_finished: FinishedCallback) -> None:
        for row in rows:
            start = time.perf_counter()
            attempts = 0
            while True:
                attempts += 1
                outcome = self.worker.run(row)
                if not should_retry(outcome, attempts, self.max_retries):
                    break
            on_finished(row, outcome, attempts, time.perf_counter() - start)

    def stop(self) -> None:
        self.worker = None
