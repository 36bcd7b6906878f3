"""How long the engine keeps a job's data, and the purge that enforces it.

Results (and the whole job) are deleted ``keep_results`` after the job finished; uploads are removed
``keep_inputs`` after it finished (0: as it finishes). The server purges at start and periodically;
`medgen purge` does the same by hand. A purge that deleted anything runs SQLite's VACUUM, so deleted
rows do not linger in the database file.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from medgen.server.jobs import JobStore
from medgen.server.storage import data_usage

logger = logging.getLogger(__name__)

DEFAULT_KEEP_RESULTS_S = 7 * 86400.0
ORPHAN_AGE_S = 3600.0  # a job folder without a database row this old is left from an interrupted upload
_UNITS_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_NEVER = ("never", "forever")


def parse_duration(text: str, *, allow_forever: bool = True) -> float | None:
    """``90s``, ``30m``, ``12h``, ``7d``, ``2w``, ``0`` (now) or, where allowed, ``forever`` (None)."""
    value = text.strip().lower()
    if value in _NEVER and allow_forever:
        return None
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([smhdw]?)", value)
    if match is None:
        hint = ", or 'forever'" if allow_forever else ""
        raise ValueError(f"not a duration: {text!r} (write it like 90s, 30m, 12h, 7d or 0{hint})")
    return float(match.group(1)) * _UNITS_S[match.group(2) or "s"]


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "forever"
    for unit in ("d", "h", "m"):
        if seconds >= _UNITS_S[unit] and seconds % _UNITS_S[unit] == 0:
            return f"{seconds / _UNITS_S[unit]:g}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class RetentionPolicy:
    keep_results_s: float | None = DEFAULT_KEEP_RESULTS_S
    """Finished jobs are deleted this long after they finished; None keeps them."""
    keep_inputs_s: float | None = 0.0
    """Uploads are removed this long after the job finished; 0 as it finishes, None with the results."""

    def purge_interval_s(self) -> float:
        """Often enough that nothing outlives its retention by more than a quarter of it (1 s to 10 min)."""
        spans = [s for s in (self.keep_results_s, self.keep_inputs_s) if s]
        return min(600.0, max(1.0, min(spans) / 4)) if spans else 600.0


@dataclass
class PurgeReport:
    removed: list[tuple[str, str, int]] = field(default_factory=list)
    """(what, job id or folder name, bytes): 'job', 'inputs', 'leftover' (a deleted job's files), 'orphan'."""
    vacuumed: bool = False

    @property
    def bytes(self) -> int:
        return sum(size for _, _, size in self.removed)


def purge(store: JobStore, policy: RetentionPolicy, *, dry_run: bool = False, now: float | None = None) -> PurgeReport:
    """Delete what the policy no longer keeps; with ``dry_run`` only report it."""
    now = time.time() if now is None else now
    report = PurgeReport()
    deleted_rows = False
    finished = store.finished_jobs()

    # 1. Whole jobs past keep_results (tombstone, folder, export rows)
    for record in finished:
        if policy.keep_results_s is None or record.finished_at is None:
            continue
        if record.finished_at > now - policy.keep_results_s or store.has_active_export(record.id):
            continue
        size = data_usage(store.files(record.id).root)
        if not dry_run:
            store.request_delete(record.id, deleted_by="retention")
            deleted_rows = True
        report.removed.append(("job", record.id, size))
    gone = {job_id for what, job_id, _ in report.removed}

    # 2. Uploads past keep_inputs
    for record in finished:
        if record.id in gone or policy.keep_inputs_s is None or record.finished_at is None:
            continue
        inputs = store.files(record.id).input_dir
        if record.finished_at > now - policy.keep_inputs_s or not inputs.exists():
            continue
        size = data_usage(inputs)
        if not dry_run:
            store.remove_inputs(record.id)
        report.removed.append(("inputs", record.id, size))

    # 3. Files of deleted jobs a crash left behind, and folders no row knows
    for job_id in store.tombstone_ids():
        root = store.files(job_id).root
        if root.exists():
            report.removed.append(("leftover", job_id, data_usage(root)))
            if not dry_run:
                store.remove_files(job_id)
    known = store.known_ids()
    for folder in sorted(store.jobs_dir.iterdir()) if store.jobs_dir.is_dir() else []:
        if folder.name in known or _age(folder, now) < ORPHAN_AGE_S:
            continue
        report.removed.append(("orphan", folder.name, data_usage(folder)))
        if not dry_run:
            shutil.rmtree(folder, ignore_errors=True)

    if deleted_rows:
        store.vacuum()
        report.vacuumed = True
    return report


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


class Purger:
    """Runs `purge` every `RetentionPolicy.purge_interval_s` on a thread of its own until stopped."""

    def __init__(self, store: JobStore, policy: RetentionPolicy):
        self._store = store
        self._policy = policy
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="medgen-purge", daemon=True)

    def run_once(self) -> PurgeReport | None:
        try:
            report = purge(self._store, self._policy)
        except Exception:  # noqa: BLE001 - a failed purge (a full disk, a busy database) is retried next time
            logger.exception("purge failed; trying again in %.0f s", self._policy.purge_interval_s())
            return None
        if report.removed:
            logger.info("purge: removed %d item(s), %d bytes", len(report.removed), report.bytes)
        return report

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _loop(self) -> None:
        while not self._stopping.wait(self._policy.purge_interval_s()):
            self.run_once()
