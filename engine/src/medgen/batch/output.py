"""The output folder of a batch run: its layout, the lock that keeps a second driver out, and the
leftovers of an interrupted run.

    DIR/rows/<id>/          one published row, as `medgen inpaint` writes it
    DIR/rows/.<id>.partial-* a row being written (removed when a run starts and ends)
    DIR/index.jsonl         one line per finished row and variant (index.py)
    DIR/index.parquet       the same, when pyarrow is importable
    DIR/failed.jsonl        one line per failed row of the last run
    DIR/.batch.lock         held by the running driver
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from pathlib import Path

from medgen.batch.index import FAILED_JSONL, INDEX_JSONL, INDEX_PARQUET, ROWS_DIR
from medgen.errors import OutputError

LOCK_NAME = ".batch.lock"
SET_ASIDE_DIR = ".replaced"


class BatchOutput:
    """The folder of one batch run; a context manager that holds the lock while the driver runs."""

    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir).absolute()
        self.rows_dir = self.dir / ROWS_DIR
        self.index_path = self.dir / INDEX_JSONL
        self.parquet_path = self.dir / INDEX_PARQUET
        self.failed_path = self.dir / FAILED_JSONL
        self._lock = None

    def __enter__(self) -> "BatchOutput":
        if self.dir.exists() and not self.dir.is_dir():
            raise OutputError(self.dir, "exists and is not a folder; choose another --out")
        if self.dir.is_dir() and any(self.dir.iterdir()) and not (self.dir / LOCK_NAME).exists():
            raise OutputError(self.dir, "is not empty and holds no batch run; choose a new --out folder")
        try:
            self.rows_dir.mkdir(parents=True, exist_ok=True)
            self._lock = (self.dir / LOCK_NAME).open("a+")
        except OSError as error:
            raise OutputError(self.dir, f"cannot write here: {error.strerror}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "another process"
            self._lock.close()
            raise OutputError(self.dir, f"another medgen batch ({holder}) is writing here; wait for it or stop it") from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"pid {os.getpid()}\n")
        self._lock.flush()
        return self

    def __exit__(self, *exc) -> bool:
        if self._lock is not None:
            self._lock.close()  # releases the lock
            self._lock = None
        return False

    def row_dir(self, row_id: str) -> Path:
        return self.rows_dir / row_id

    def published_ids(self) -> set[str]:
        """Rows whose folder was published (staging folders start with a dot and are not rows)."""
        return {p.name for p in self.rows_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}

    def remove_leftovers(self) -> list[Path]:
        """Staging folders of attempts that died, and replaced rows set aside; call only while no
        worker of this run is writing."""
        leftovers = [p for p in self.rows_dir.iterdir() if p.name.startswith(".")]
        leftovers += [self.dir / SET_ASIDE_DIR] if (self.dir / SET_ASIDE_DIR).exists() else []
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        return leftovers

    def set_aside(self, row_id: str) -> None:
        """Move a finished row out of rows/ so it can be made again (--force); deleted at the end."""
        aside = self.dir / SET_ASIDE_DIR
        aside.mkdir(exist_ok=True)
        os.replace(self.row_dir(row_id), aside / f"{row_id}-{uuid.uuid4().hex[:8]}")
