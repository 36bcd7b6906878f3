"""Keep pydicom's and highdicom's own warnings and logged tracebacks off the user's screen.

pydicom logs a full traceback for every decoder plugin that fails before raising its own error,
and warns about each odd value it meets; ITK, niftilib and Rust decoders write to the process's
stderr themselves. The engine's error already says what went wrong in one
line; these messages are gathered instead, and the first of them can be added to that line.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_LIBRARY_LOGGERS = ("pydicom", "highdicom")


class _Collector(logging.Handler):
    def __init__(self, messages: list[str]):
        super().__init__(level=logging.DEBUG)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.messages.append(" ".join(record.getMessage().split()))


@contextmanager
def captured_library_messages() -> Iterator[list[str]]:
    """Collect the libraries' warnings and logged errors as one-line strings instead of printing them."""
    messages: list[str] = []
    collector = _Collector(messages)
    saved = []
    for name in _LIBRARY_LOGGERS:
        library_logger = logging.getLogger(name)
        saved.append((library_logger, library_logger.propagate, list(library_logger.handlers)))
        library_logger.handlers = [collector]
        library_logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
        messages.extend(" ".join(str(w.message).split()) for w in caught)
    finally:
        for library_logger, propagate, handlers in saved:
            library_logger.handlers = handlers
            library_logger.propagate = propagate


def first_line(error: BaseException) -> str:
    """An exception's message as one short line (libraries put whole reports in theirs)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


NATIVE_LOGGER = logging.getLogger("medgen.native")

# One capture of the process's stderr at a time: file descriptor 2 is shared by every thread
_NATIVE_LOCK = threading.RLock()


@contextmanager
def captured_native_stderr() -> Iterator[list[str]]:
    """Collect what native code (ITK's warnings, niftilib's "** ERROR" lines, a Rust decoder's panic
    message) writes straight to file descriptor 2, as one-line strings, instead of letting it reach
    the terminal ahead of the engine's own one-line error. Wrap only the library call itself: while
    it runs, anything else the process writes to stderr is collected too; so every collected line is
    logged afterwards at INFO on ``medgen.native`` (shown by ``--verbose``, and always by the server,
    whose other threads may have written in that window), and nothing is lost."""
    messages: list[str] = []
    with _NATIVE_LOCK, tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield messages
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            messages.extend(" ".join(line.split()) for line in text.splitlines() if line.strip())
            for message in messages:
                NATIVE_LOGGER.info("stderr while a library ran: %s", message)
