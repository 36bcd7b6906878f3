"""Errors a user can act on: each names the file (or option) and the problem in one line."""

from __future__ import annotations

from pathlib import Path


class MedgenError(Exception):
    """Base of every error the CLI turns into a one-line message and exit code 2."""


class InputError(MedgenError):
    """Bad input: a file that cannot be read, a mask that does not fit, an option out of range."""

    def __init__(self, source: str | Path | None, problem: str):
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)


class OutputError(MedgenError):
    """The output could not be written (for example an unwritable directory)."""

    def __init__(self, target: str | Path, problem: str):
        self.target = str(target)
        self.problem = problem
        super().__init__(f"{self.target}: {problem}")
