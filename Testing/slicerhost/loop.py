"""The Qt event loop for tests: run it until something holds, and measure how long the GUI thread stalls.

A module's panel does its work in slots (button clicks, timer ticks); they run only while the event loop
runs. :func:`run_until` runs a real ``QEventLoop`` (so timers fire on time, as in Slicer's main loop) until a
condition holds or a timeout passes. :class:`StallMeter` is a 10 ms ``QTimer`` on that loop recording the
longest gap between its ticks: a gap much longer than 10 ms is the GUI thread busy in one piece of work
(a slot, a timer tick) during which Slicer's window would not repaint or answer the mouse.

Note on threads: PySide6 releases the GIL while Qt waits for events, so background Python threads run
freely here; the stall figures measure the GUI thread's own work.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, List, Optional

from PySide6 import QtCore


@dataclasses.dataclass
class Stall:
    seconds: float  # the gap between two ticks of the 10 ms timer
    at: float  # time.monotonic() when it ended


class StallMeter:
    """Longest gap between ticks of a 10 ms timer while :func:`run_until` runs the event loop.

    Only gaps within one run of the loop count (time the test spends outside the loop is not the GUI's).
    ``longest`` is the longest gap in seconds, ``longest_stall`` that minus the timer's interval;
    ``stalls`` the longest few; ``ticks`` how many ticks were seen."""

    KEEP = 5

    def __init__(self, interval_ms: int = 10) -> None:
        self.interval_ms = interval_ms
        self._timer = QtCore.QTimer()
        self._timer.setTimerType(QtCore.Qt.PreciseTimer)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self._last: Optional[float] = None
        self._session = False
        self.reset()

    def reset(self) -> None:
        self.longest = 0.0
        self.stalls: List[Stall] = []
        self.ticks = 0
        self.measured = 0.0

    @property
    def longest_stall(self) -> float:
        return max(0.0, self.longest - self.interval_ms / 1000.0)

    def begin(self) -> None:
        self._session = True
        self._last = time.perf_counter()
        if not self._timer.isActive():
            self._timer.start()

    def end(self) -> None:
        if self._session and self._last is not None:
            self._record(time.perf_counter() - self._last)
        self._session = False
        self._last = None
        self._timer.stop()

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._session and self._last is not None:
            self._record(now - self._last)
        self._last = now
        self.ticks += 1

    def _record(self, gap: float) -> None:
        self.measured += gap
        if gap > self.longest:
            self.longest = gap
        if len(self.stalls) < self.KEEP or gap > self.stalls[-1].seconds:
            self.stalls.append(Stall(gap, time.monotonic()))
            self.stalls.sort(key=lambda s: -s.seconds)
            del self.stalls[self.KEEP:]

    def summary(self) -> str:
        return (f"longest GUI-thread gap {self.longest * 1000:.0f} ms (stall {self.longest_stall * 1000:.0f} ms beyond "
                f"the {self.interval_ms} ms tick) over {self.measured:.1f} s of event loop, {self.ticks} ticks")


def run_until(predicate: Callable[[], bool], timeout: float = 30.0, action: Optional[Callable[[], None]] = None,
              meter: Optional[StallMeter] = None, poll_ms: int = 10) -> bool:
    """Run the Qt event loop until ``predicate()`` is true (checked every ``poll_ms``) or ``timeout``
    seconds pass; returns whether it became true. ``action`` (a button's ``click``, say) runs first, from
    the event loop, so its own duration counts as a stall. An exception raised by the predicate ends the
    loop and is raised here."""
    if action is None and predicate():
        return True
    loop = QtCore.QEventLoop()
    outcome = {"done": False, "error": None}
    deadline = time.monotonic() + timeout

    def check() -> None:
        try:
            if predicate():
                outcome["done"] = True
                loop.quit()
                return
        except BaseException as error:  # noqa: BLE001 - handed to the caller
            outcome["error"] = error
            loop.quit()
            return
        if time.monotonic() >= deadline:
            loop.quit()

    poller = QtCore.QTimer()
    poller.setInterval(poll_ms)
    poller.timeout.connect(check)
    if meter is not None:
        meter.begin()
    poller.start()
    if action is not None:
        def run_action() -> None:
            try:
                action()
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                outcome["error"] = error
                loop.quit()

        QtCore.QTimer.singleShot(0, run_action)
    try:
        loop.exec()
    finally:
        poller.stop()
        if meter is not None:
            meter.end()
    if outcome["error"] is not None:
        raise outcome["error"]
    return outcome["done"]


def pump(seconds: float = 0.0, meter: Optional[StallMeter] = None) -> None:
    """Run the event loop for ``seconds`` (at least one pass)."""
    end = time.monotonic() + seconds
    run_until(lambda: time.monotonic() >= end, timeout=seconds + 1.0, action=lambda: None, meter=meter)
