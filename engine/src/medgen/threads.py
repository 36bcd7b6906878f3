"""torch's intra-op threads for the whole engine: ``--threads N``, else ``MEDGEN_THREADS``, set once at
start-up, for every command, the server and batch workers.

On shared cores torch processes that each run a thread per core spin against each other (two threads on
two shared cores ran 30-80x slower than one), so a process that knows it shares the cores with its
siblings (a worker of ``medgen batch --ray``) takes one thread unless told otherwise; any other process
keeps torch's default (which honours ``OMP_NUM_THREADS``).
"""

from __future__ import annotations

import os

from medgen.errors import InputError

THREADS_ENV = "MEDGEN_THREADS"


def threads_wanted(given: int | None = None, *, shared: bool = False) -> int | None:
    """The thread count asked for: ``given`` (``--threads``), else ``MEDGEN_THREADS``, else 1 for a
    process that shares the cores with its siblings (``shared``), else None (torch's default)."""
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, int) or given < 1:
            raise InputError(None, f"--threads must be a whole number >= 1, got {given!r}")
        return given
    text = os.environ.get(THREADS_ENV, "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise InputError(None, f"{THREADS_ENV} must be a whole number >= 1, got {text!r}")
        return int(text)
    return 1 if shared else None


def set_threads(count: int | None) -> None:
    """Set torch's intra-op threads (None: leave torch's default). Also kept in ``MEDGEN_THREADS``, so
    processes this one starts (local Ray workers, the server started by ``medgen serve``) agree."""
    if count is None:
        return
    import torch

    os.environ[THREADS_ENV] = str(count)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
