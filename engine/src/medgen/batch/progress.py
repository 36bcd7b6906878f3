"""Progress of a batch run as plain lines (readable in a log file as well as a terminal):
rows done, failed and left, rows per minute over this run, and the estimated time left."""

from __future__ import annotations

import datetime
import sys
import time
from typing import TextIO


class BatchProgress:
    """Counts finished rows; prints a line at most every ``every_s`` seconds and at the end."""

    def __init__(self, total: int, already_done: int, *, stream: TextIO | None = None, every_s: float = 5.0):
        self.total = total
        self.done = already_done
        self.failed = 0
        self.done_this_run = 0
        self.every_s = every_s
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.monotonic()
        self._last_print = -float("inf")
        self._printed: tuple[int, int] | None = None

    @property
    def left(self) -> int:
        return self.total - self.done - self.failed

    def rows_per_min(self) -> float | None:
        elapsed = time.monotonic() - self.start
        finished = self.done_this_run + self.failed
        return 60.0 * finished / elapsed if finished and elapsed > 0 else None

    def eta_s(self) -> float | None:
        rate = self.rows_per_min()
        return 60.0 * self.left / rate if rate else None

    def row_done(self) -> None:
        self.done += 1
        self.done_this_run += 1
        self._maybe_print()

    def row_failed(self) -> None:
        self.failed += 1
        self._maybe_print()

    def line(self) -> str:
        rate = self.rows_per_min()
        eta = self.eta_s()
        return (
            f"batch: {self.done}/{self.total} done, {self.failed} failed, {self.left} left"
            f" | {'-' if rate is None else f'{rate:.1f}'} rows/min"
            f" | ETA {'-' if eta is None else datetime.timedelta(seconds=round(eta))}"
        )

    def _maybe_print(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or self.left == 0 or now - self._last_print >= self.every_s:
            print(self.line(), file=self.stream, flush=True)
            self._last_print = now
            self._printed = (self.done, self.failed)

    def finish(self) -> None:
        if self._printed != (self.done, self.failed):
            self._maybe_print(force=True)
