"""A progress bar on stderr driven by the engine's (done, total) callbacks; used by the commands."""

from __future__ import annotations

import sys


class ProgressBar:
    """Context manager whose ``update(done, total)`` is a ready-made ``progress`` callback."""

    def __init__(self, label: str, unit: str = "step"):
        self.label = label
        self.unit = unit
        self.bar = None

    def __enter__(self) -> "ProgressBar":
        return self

    def update(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            # Work already done when the first report arrives is the starting point, not a burst of speed:
            # counting it would show thousands of steps per second on the first tick.
            self.bar = tqdm(total=total, initial=done, desc=self.label, unit=self.unit, file=sys.stderr)
            return
        self.bar.total = total
        if done >= self.bar.n:
            self.bar.update(done - self.bar.n)
        else:  # a new phase counts from the start again
            self.bar.n = done
            self.bar.refresh()

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self.bar.close()
        return False
