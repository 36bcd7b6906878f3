"""The study database: one SQLite file, every answer committed (and synced) before the page hears back."""

from __future__ import annotations

import datetime as dt
import random
import secrets
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from medgen.errors import InputError

STUDY_FILENAME = "study.sqlite"
TRUTHS = ("real", "synthetic")
CONFIDENCES = {1: "guess", 2: "probably", 3: "certain"}
REALISM_RANGE = (1, 5)

SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,            -- random, shown to readers; says nothing about the case
    truth TEXT NOT NULL CHECK (truth IN ('real', 'synthetic')),
    origin TEXT NOT NULL,                -- file, slice, variant: for the summary only
    crop BLOB NOT NULL,                  -- PNG of the lesion-centred crop
    full BLOB NOT NULL,                  -- PNG of the whole slice
    added_utc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS readers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token TEXT NOT NULL UNIQUE,
    created_utc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    reader_id INTEGER NOT NULL REFERENCES readers(id),
    position INTEGER NOT NULL,
    case_id INTEGER NOT NULL REFERENCES cases(id),
    PRIMARY KEY (reader_id, position),
    UNIQUE (reader_id, case_id)
);
CREATE TABLE IF NOT EXISTS answers (
    reader_id INTEGER NOT NULL REFERENCES readers(id),
    case_id INTEGER NOT NULL REFERENCES cases(id),
    answer TEXT NOT NULL CHECK (answer IN ('real', 'synthetic')),
    confidence INTEGER NOT NULL CHECK (confidence BETWEEN 1 AND 3),
    realism INTEGER NOT NULL CHECK (realism BETWEEN 1 AND 5),
    answered_utc TEXT NOT NULL,
    PRIMARY KEY (reader_id, case_id)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Reader:
    id: int
    name: str
    token: str


@dataclass(frozen=True)
class Answer:
    reader: str
    case_key: str
    truth: str
    origin: str
    answer: str
    confidence: int
    realism: int
    answered_utc: str

    @property
    def correct(self) -> bool:
        return self.answer == self.truth

    @property
    def synthetic_score(self) -> int:
        """How strongly the reader called it synthetic: +confidence for synthetic, -confidence for real."""
        return self.confidence if self.answer == "synthetic" else -self.confidence


class Study:
    """A study folder's database. Each call opens its own connection, so server threads share nothing."""

    def __init__(self, folder: str | Path, *, create: bool = False):
        self.folder = Path(folder)
        self.path = self.folder / STUDY_FILENAME
        if not self.path.is_file():
            if not create:
                raise InputError(self.folder, f"no {STUDY_FILENAME}: not a study folder (add cases with "
                                 "`medgen review add-real` / `add-run` first)")
            self.folder.mkdir(parents=True, exist_ok=True)
        with self.connect() as db:
            db.executescript(SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('admin_token', ?)", (secrets.token_urlsafe(16),))

    @contextmanager
    def connect(self):
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # an answer acknowledged is an answer on disk
            db.execute("PRAGMA foreign_keys=ON")
            yield db
        finally:
            db.close()

    # --- cases -------------------------------------------------------------------------------

    def add_case(self, *, truth: str, origin: str, crop_png: bytes, full_png: bytes) -> str:
        if truth not in TRUTHS:
            raise ValueError(f"truth must be one of {TRUTHS}, got {truth!r}")
        key = secrets.token_hex(8)
        with self.connect() as db:
            db.execute("INSERT INTO cases (key, truth, origin, crop, full, added_utc) VALUES (?, ?, ?, ?, ?, ?)",
                       (key, truth, origin, crop_png, full_png, _now()))
        return key

    def case_counts(self) -> dict[str, int]:
        with self.connect() as db:
            rows = db.execute("SELECT truth, COUNT(*) FROM cases GROUP BY truth").fetchall()
        return {truth: dict(rows).get(truth, 0) for truth in TRUTHS}

    def case_image(self, key: str, which: str) -> bytes | None:
        column = {"crop": "crop", "full": "full"}[which]
        with self.connect() as db:
            row = db.execute(f"SELECT {column} FROM cases WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def case_info(self) -> dict[str, tuple[str, str]]:
        """key -> (truth, origin)."""
        with self.connect() as db:
            return {k: (t, o) for k, t, o in db.execute("SELECT key, truth, origin FROM cases")}

    # --- readers -----------------------------------------------------------------------------

    def admin_token(self) -> str:
        with self.connect() as db:
            return db.execute("SELECT value FROM meta WHERE key = 'admin_token'").fetchone()[0]

    def readers(self) -> list[Reader]:
        with self.connect() as db:
            return [Reader(*row) for row in db.execute("SELECT id, name, token FROM readers ORDER BY id")]

    def reader_by_token(self, token: str) -> Reader | None:
        with self.connect() as db:
            row = db.execute("SELECT id, name, token FROM readers WHERE token = ?", (token,)).fetchone()
        return Reader(*row) if row else None

    def add_reader(self, name: str) -> Reader:
        """A reader with a new token and a fixed order: as many real as synthetic cases, shuffled."""
        name = name.strip()
        if not name:
            raise InputError(None, "a reader's name must not be empty")
        rng = random.SystemRandom()
        with self.connect() as db:
            if db.execute("SELECT 1 FROM readers WHERE name = ?", (name,)).fetchone():
                raise InputError(None, f"reader {name!r} exists already")
            by_truth = {t: [r[0] for r in db.execute("SELECT id FROM cases WHERE truth = ?", (t,))] for t in TRUTHS}
            per_truth = min(len(ids) for ids in by_truth.values())
            if per_truth == 0:
                raise InputError(self.folder, f"a study needs real and synthetic cases; it has {self.case_counts()}")
            chosen = rng.sample(by_truth["real"], per_truth) + rng.sample(by_truth["synthetic"], per_truth)
            rng.shuffle(chosen)
            token = secrets.token_urlsafe(16)
            db.execute("BEGIN IMMEDIATE")
            cursor = db.execute("INSERT INTO readers (name, token, created_utc) VALUES (?, ?, ?)", (name, token, _now()))
            db.executemany("INSERT INTO assignments VALUES (?, ?, ?)",
                           [(cursor.lastrowid, position, case_id) for position, case_id in enumerate(chosen)])
            db.execute("COMMIT")
            return Reader(cursor.lastrowid, name, token)

    # --- a reader's session ------------------------------------------------------------------

    def progress(self, reader: Reader) -> tuple[str | None, int, int]:
        """(key of the first unanswered case in the reader's order or None, answered, total)."""
        with self.connect() as db:
            total = db.execute("SELECT COUNT(*) FROM assignments WHERE reader_id = ?", (reader.id,)).fetchone()[0]
            answered = db.execute("SELECT COUNT(*) FROM answers WHERE reader_id = ?", (reader.id,)).fetchone()[0]
            row = db.execute(
                "SELECT c.key FROM assignments a JOIN cases c ON c.id = a.case_id WHERE a.reader_id = ? AND "
                "NOT EXISTS (SELECT 1 FROM answers s WHERE s.reader_id = a.reader_id AND s.case_id = a.case_id) "
                "ORDER BY a.position LIMIT 1", (reader.id,)).fetchone()
        return (row[0] if row else None), answered, total

    def is_assigned(self, reader: Reader, key: str) -> bool:
        with self.connect() as db:
            return db.execute("SELECT 1 FROM assignments a JOIN cases c ON c.id = a.case_id WHERE a.reader_id = ? "
                              "AND c.key = ?", (reader.id, key)).fetchone() is not None

    def record_answer(self, reader: Reader, key: str, answer: str, confidence: int, realism: int) -> bool:
        """Store one answer; False when this reader answered this case already (the first answer stays)."""
        if answer not in TRUTHS:
            raise InputError(None, f"answer must be 'real' or 'synthetic', got {answer!r}")
        if confidence not in CONFIDENCES:
            raise InputError(None, f"confidence must be 1, 2 or 3, got {confidence!r}")
        if not REALISM_RANGE[0] <= realism <= REALISM_RANGE[1]:
            raise InputError(None, f"realism must be 1 to 5, got {realism!r}")
        with self.connect() as db:
            row = db.execute("SELECT c.id FROM assignments a JOIN cases c ON c.id = a.case_id WHERE a.reader_id = ? "
                             "AND c.key = ?", (reader.id, key)).fetchone()
            if row is None:
                raise InputError(None, "this case is not in the reader's list")
            cursor = db.execute("INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?)",
                                (reader.id, row[0], answer, int(confidence), int(realism), _now()))
            return cursor.rowcount == 1

    def answers(self) -> list[Answer]:
        with self.connect() as db:
            rows = db.execute(
                "SELECT r.name, c.key, c.truth, c.origin, s.answer, s.confidence, s.realism, s.answered_utc "
                "FROM answers s JOIN readers r ON r.id = s.reader_id JOIN cases c ON c.id = s.case_id "
                "ORDER BY r.id, s.answered_utc").fetchall()
        return [Answer(*row) for row in rows]
