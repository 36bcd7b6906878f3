"""Run dicom3tools' dciodvfy and compare its findings for an output with those for its source.

dciodvfy exits 0 even when it finds errors, so its output is the result. Real scans often carry a
few errors of their own; what matters is that our writing adds none (DESIGN.md).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

DCIODVFY = "dciodvfy"
# The dicom3tools build in Debian/Ubuntu predates Synthetic Data (0008,001C), so it reports that
# tag as unknown (an Error for an even group, plus Warnings). Every synthetic instance has it.
EXPECTED_TAG_MARKERS = ("(0x0008,0x001c)",)

_ERROR = re.compile(r"(?:^|\s-\s)Error\s-\s")
_WARNING = re.compile(r"(?:^|\s-\s)Warning\s-\s")
# Values that legitimately differ between a source and its derived output.
_UID = re.compile(r"\b\d+(?:\.\d+){2,}\b")
# "attribute <X> = <value>" (spaced "="), not "Element=<Keyword>", which names the attribute
_QUOTED_VALUE = re.compile(r"\s=\s*<[^>]*>")
_LENGTH = re.compile(r"(?i)\b(length|offset)\b\s*=?\s*<?\s*(?:0x)?[0-9a-f]+\s*>?")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class DciodvfyReport:
    """What dciodvfy said about one file, split into errors, warnings and expected lines."""

    path: Path
    iod: str | None  # the IOD dciodvfy recognised, e.g. "CTImage"
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)  # known, harmless (Synthetic Data unknown to it)
    output: str = ""


def is_available() -> bool:
    return shutil.which(DCIODVFY) is not None


def parse_output(path: str | Path, output: str) -> DciodvfyReport:
    """Classify dciodvfy's lines; the first line that is neither error nor warning names the IOD."""
    errors: list[str] = []
    warnings: list[str] = []
    expected: list[str] = []
    iod = None
    for raw in output.splitlines():
        line = raw.strip()
        if not line:
            continue
        if any(marker in line.lower() for marker in EXPECTED_TAG_MARKERS):
            expected.append(line)
        elif _ERROR.search(line):
            errors.append(line)
        elif _WARNING.search(line):
            warnings.append(line)
        elif iod is None and re.fullmatch(r"[A-Za-z0-9]+", line):
            iod = line
    return DciodvfyReport(Path(path), iod, errors, warnings, expected, output)


def run_dciodvfy(path: str | Path, *, timeout: float = 120.0) -> DciodvfyReport:
    """Validate one file against its IOD. Raises FileNotFoundError when dciodvfy is not installed."""
    exe = shutil.which(DCIODVFY)
    if exe is None:
        raise FileNotFoundError("dciodvfy not found: install the Debian/Ubuntu package 'dicom3tools'")
    proc = subprocess.run(
        [exe, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        check=False,
    )
    return parse_output(path, proc.stdout.decode("utf-8", errors="replace"))


def normalise(message: str) -> str:
    """A message with the values that differ between source and output (UIDs, lengths) removed."""
    message = _UID.sub("<UID>", message)
    message = _QUOTED_VALUE.sub(" = <>", message)
    message = _LENGTH.sub(r"\1 <N>", message)
    return _SPACES.sub(" ", message).strip()


def new_errors(output_report: DciodvfyReport, source_report: DciodvfyReport) -> list[str]:
    """Errors in the output that the source did not already have (compared as a multiset)."""
    remaining = Counter(normalise(e) for e in source_report.errors)
    added = []
    for error in output_report.errors:
        key = normalise(error)
        if remaining[key] > 0:
            remaining[key] -= 1
        else:
            added.append(error)
    return added
