"""The local runner: rows in this process, the model loaded once for the run, rows that can share
model calls generated together (``batch_size`` rows at a time)."""

from __future__ import annotations

import time
from typing import Callable

from medgen.batch.manifest import BatchRow
from medgen.batch.worker import RowOutcome, RowWorker, should_retry
from medgen.errors import InputError

FinishedCallback = Callable[[BatchRow, RowOutcome, int, float], None]
"""Called once per row with its last outcome, the number of attempts and the row's seconds as the
driver saw them (from the first hand-out to the last result)."""

DEFAULT_BATCH_SIZE = 8
"""Rows per shared model call in a local run unless --batch-size says otherwise."""

CALL_SETTINGS = ("negative_prompt", "num_inference_steps", "guidance_scale", "strength", "adapters", "token",
                 "controlnet", "control_from")
"""Row options that must be equal for rows to share a model call (prompts, seeds, sources may differ)."""


def batches(rows: list[BatchRow], batch_size: int) -> list[list[BatchRow]]:
    """Rows in groups of up to ``batch_size`` that can share model calls, in manifest order of each
    group's first row; a group is closed when it is full, the rest at the end."""
    done, open_groups = [], {}
    for row in rows:
        key = tuple(repr(row.options.get(name)) for name in CALL_SETTINGS)
        group = open_groups.setdefault(key, [])
        group.append(row)
        if len(group) == batch_size:
            done.append(open_groups.pop(key))
    return done + list(open_groups.values())


class LocalRunner:
    """Runs rows in this process with one RowWorker; unexpected errors are retried in place, one row
    at a time."""

    description = "this process"

    def __init__(self, worker_options: dict, *, max_retries: int, batch_size: int = 1):
        if batch_size < 1:
            raise InputError(None, f"--batch-size must be >= 1, got {batch_size}")
        self.worker_options = worker_options
        self.max_retries = max_retries
        self.batch_size = batch_size
        self.workers = 1
        self.worker: RowWorker | None = None
        if batch_size > 1:
            self.description = f"this process, up to {batch_size} rows per model call"
        if worker_options.get("batch_invariant"):
            self.description += ", batch-invariant"

    def start(self) -> None:
        self.worker = RowWorker(**self.worker_options)
        error = self.worker.load()
        if error:
            raise InputError(None, error)

    def run(self, rows: list[BatchRow], on_finished: FinishedCallback) -> None:
        for group in batches(rows, self.batch_size):
            start = time.perf_counter()
            outcomes = self.worker.run_many(group) if len(group) > 1 else [self.worker.run(group[0])]
            for row, outcome in zip(group, outcomes):
                attempts = 1
                while should_retry(outcome, attempts, self.max_retries):
                    attempts += 1
                    outcome = self.worker.run(row)
                on_finished(row, outcome, attempts, time.perf_counter() - start)

    def stop(self) -> None:
        self.worker = None
