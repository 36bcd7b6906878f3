"""What the host saw go wrong or behave oddly while the module ran: the findings a test asserts on.

PythonQt (Slicer's Python-Qt bridge) prints an exception raised in a slot to the Python console and goes
on; a Slicer user sees nothing else. The host records each such event here instead, so a test can fail
on it and name it precisely. Everything is process-wide, like Slicer's own console.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from typing import List, Optional

log = logging.getLogger("slicerhost")


@dataclasses.dataclass
class Problem:
    """One finding. kind: 'slot-error' (an exception escaped a slot), 'signal-not-found' (a string
    connection named a signal the object lacks), 'ui-connection' (a .ui <connection> that could not be
    made), 'no-stand-in' (a .ui class the host has no stand-in for),
    'unscripted-dialog' (a confirmation dialog the test gave no answer for), 'observer-error' (an
    exception in a VTK observer callback), 'stand-in-gap' (the .ui sets a property of a Slicer class that
    the host's stand-in does not declare)."""

    kind: str
    message: str
    detail: str = ""
    when: float = dataclasses.field(default_factory=time.monotonic)

    def __str__(self) -> str:
        text = f"[{self.kind}] {self.message}"
        return text + ("\n" + self.detail if self.detail else "")


@dataclasses.dataclass
class SlotTiming:
    """How long one call of a connected Python callable ran on the GUI thread."""

    what: str
    seconds: float
    when: float


class Diagnostics:
    """The process-wide record: problems, and the slowest slot calls (a GUI stall shows up as one)."""

    KEEP_SLOWEST = 10

    def __init__(self) -> None:
        self.problems: List[Problem] = []
        self.slowest_slots: List[SlotTiming] = []
        self.slot_calls = 0

    def add(self, kind: str, message: str, detail: str = "") -> Problem:
        problem = Problem(kind, message, detail)
        self.problems.append(problem)
        log.warning("slicerhost: %s", problem)
        return problem

    def add_exception(self, kind: str, message: str, error: BaseException) -> Problem:
        detail = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        return self.add(kind, f"{message}: {type(error).__name__}: {error}", detail)

    def slot_timing(self, what: str, seconds: float) -> None:
        self.slot_calls += 1
        slowest = self.slowest_slots
        if len(slowest) < self.KEEP_SLOWEST or seconds > slowest[-1].seconds:
            slowest.append(SlotTiming(what, seconds, time.monotonic()))
            slowest.sort(key=lambda timing: -timing.seconds)
            del slowest[self.KEEP_SLOWEST:]

    def of_kind(self, *kinds: str) -> List[Problem]:
        return [p for p in self.problems if not kinds or p.kind in kinds]

    def clear(self) -> None:
        self.problems.clear()
        self.slowest_slots.clear()
        self.slot_calls = 0

    def report(self, kinds: Optional[tuple] = None) -> str:
        chosen = self.problems if kinds is None else self.of_kind(*kinds)
        return "\n".join(str(p) for p in chosen) or "(none)"


DIAGNOSTICS = Diagnostics()


class GuardedObserver:
    """A VTK observer callback that records an exception it raises as an ``observer-error`` (VTK prints it
    and goes on, as the host then does); equal to, and hashed as, the callback it guards, so
    ``VTKObservationMixin.removeObserver(obj, event, method)`` still finds it."""

    def __init__(self, method) -> None:
        self.method = method
        if hasattr(method, "CallDataType"):
            self.CallDataType = method.CallDataType

    def __call__(self, *args):
        try:
            return self.method(*args)
        except Exception as error:  # noqa: BLE001 - VTK would print it and go on
            function = getattr(self.method, "__func__", self.method)
            DIAGNOSTICS.add_exception("observer-error", f"VTK observer {getattr(function, '__qualname__', self.method)}", error)
            return None

    def __eq__(self, other) -> bool:
        return self.method == (other.method if isinstance(other, GuardedObserver) else other)

    def __hash__(self) -> int:
        return hash(self.method)


def guard_vtk_observation_mixin() -> None:
    """Make ``slicer.util.VTKObservationMixin.addObserver`` register guarded callbacks (once)."""
    from slicer.util import VTKObservationMixin

    if getattr(VTKObservationMixin.addObserver, "_slicerhost_guarded", False):
        return
    original = VTKObservationMixin.addObserver

    def addObserver(self, obj, event, method, group="none", priority=0.0):  # noqa: N802 - Slicer's name
        return original(self, obj, event, GuardedObserver(method), group, priority)

    addObserver._slicerhost_guarded = True
    addObserver.__doc__ = original.__doc__
    VTKObservationMixin.addObserver = addObserver
