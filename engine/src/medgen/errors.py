"""Errors a user can act on: each names the file (or option) and the problem in one line."""

from __future__ import annotations

from pathlib import Path


class MedgenError(Exception):
    """Base of every error the CLI turns into a one-line message and exit code 2."""


class InputError(MedgenError):
    """Bad input: a file that cannot be read, a mask that does not fit, an option out of range.

    ``reason`` names an entry of ``medgen.imaging.unsupported.UNSUPPORTED`` when the input is refused
    because it is something the engine does not support (as opposed to a mistake in the request).
    """

    def __init__(self, source: str | Path | None, problem: str, *, reason: str | None = None):
        self.source = None if source is None else str(source)
        self.problem = " ".join(str(problem).split())  # one line, whatever a library put in it
        self.reason = reason
        super().__init__(f"{self.source}: {self.problem}" if self.source else self.problem)


class OutputError(MedgenError):
    """The output could not be written (for example an unwritable directory)."""

    def __init__(self, target: str | Path, problem: str):
        self.target = str(target)
        self.problem = problem
        super().__init__(f"{self.target}: {problem}")
