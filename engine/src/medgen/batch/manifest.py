"""Dataset manifests: CSV or JSONL files of inpainting requests, one row per request, every row checked
before any work starts.

Columns are named like `medgen inpaint`'s options (``input``, ``mask``, ``prompt``, ``segment``,
``label``, ``slice``, ``variants``, ``seed``, ``steps``, ``adapter``, ...; ``-`` and ``_`` alike), plus
an optional ``id``. Relative paths are relative to the manifest's folder. Options that hold for the
whole run (``--model``, ``--device``, ...) are options of `medgen batch`, not columns.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from medgen.errors import InputError, MedgenError

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")
ROW_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_LISTED_PROBLEMS = 50


@dataclass(frozen=True)
class Column:
    """One manifest column: the InpaintRequest field it fills and how its text is read."""

    field: str
    kind: str  # text, int, float, bool, ints, path, path_spec, path_specs, variations


SPECIAL_COLUMNS: dict[str, Column] = {
    "input": Column("input", "path"),
    "mask": Column("mask", "path"),
    "slice": Column("slices", "ints"),
    "variants": Column("num_variants", "int"),
    "steps": Column("num_inference_steps", "int"),
    "guidance": Column("guidance_scale", "float"),
    "mask-dilate": Column("mask_dilate_mm", "float"),
    "mask-blur": Column("mask_blur_px", "float"),
    "crop-padding": Column("crop_padding_px", "int"),
    "seg": Column("write_seg", "bool"),
    "dicom": Column("write_dicom", "bool"),
    "adapter": Column("adapters", "path_specs"),
    "controlnet": Column("controlnet", "path_spec"),
    "prompt-variations": Column("prompt_variations", "variations"),
    "modality": Column("source_modality", "text"),
}
"""Columns whose name is the `medgen inpaint` option rather than the request field, or whose value
is a path (made absolute from the manifest's folder) or a list."""
KINDS_BY_TYPE = {"bool": "bool", "int": "int", "float": "float", "str": "text"}


@functools.lru_cache(maxsize=1)
def columns() -> dict[str, Column]:
    """Every column a row may have: the special ones, and every other InpaintRequest field of a plain
    type under its own name with '-' (``negative-prompt``, ``window-center``, ``allow-unchanged``)."""
    from medgen.api import InpaintRequest

    special_fields = {column.field for column in SPECIAL_COLUMNS.values()}
    table = {}
    for request_field in fields(InpaintRequest):
        kind = KINDS_BY_TYPE.get(str(request_field.type).replace(" | None", ""))
        if request_field.name != "out" and request_field.name not in special_fields and kind:
            table[request_field.name.replace("_", "-")] = Column(request_field.name, kind)
    return {**table, **SPECIAL_COLUMNS}


COLUMN_ALIASES = {"slices": "slice", "adapters": "adapter"}
RUN_OPTIONS = ("model", "model-config", "out", "device", "dtype", "scheduler")
"""Set once per run on the command line: a column with one of these names is refused, never ignored."""
REQUIRED = ("input", "mask", "prompt")
LIST_SEPARATOR = ";"
"""Separates the items of a list in a CSV cell (``adapter``: ``a.safetensors:0.8;b.safetensors``)."""


@dataclass(frozen=True)
class BatchRow:
    """One checked manifest row: its id, where it is in the file, and its InpaintRequest fields."""

    id: str
    line: int
    options: dict[str, Any]

    def request(self, out: Path):
        """The row's InpaintRequest, writing into ``out``."""
        from medgen.api import InpaintRequest

        return InpaintRequest(out=out, **self.options)


@dataclass(frozen=True)
class RowProblem:
    """Why a row cannot run, with its line number (1-based, the header of a CSV being line 1)."""

    line: int
    reason: str
    row_id: str | None = None

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class Manifest:
    """A read manifest: its valid rows in file order and the problems of the others."""

    path: Path
    rows: list[BatchRow]
    problems: list[RowProblem] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.rows) + len(self.problems)


class RowsError(MedgenError):
    """Rows of a manifest cannot run. One line per row, ``MANIFEST:LINE: reason`` (as compilers list
    errors), under a first line that says what to do."""

    def __init__(self, path: Path, headline: str, problems: list[RowProblem]):
        self.path = path
        self.problems = problems
        listed = [f"{path}:{p.line}: {p.reason}" for p in problems[:MAX_LISTED_PROBLEMS]]
        if len(problems) > MAX_LISTED_PROBLEMS:
            listed.append(f"{path}: ... and {len(problems) - MAX_LISTED_PROBLEMS} more")
        super().__init__("\n".join([f"{path}: {headline}", *listed]))


class ManifestError(RowsError):
    """Rows of the manifest are bad (refused before any work)."""

    def __init__(self, path: Path, problems: list[RowProblem], total: int):
        super().__init__(
            path, f"{len(problems)} of {total} rows are bad (fix them, or pass --skip-bad-rows to run the rest):", problems
        )


def read_manifest(path: str | Path) -> Manifest:
    """Read and check every row. A problem of the file itself (missing, unknown format or column)
    raises InputError; a bad row is listed in ``problems`` and left out of ``rows``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such manifest file")
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise InputError(path, f"a manifest is a {', '.join(MANIFEST_SUFFIXES)} file, got {suffix or 'no suffix'!r}")
    try:
        raw_rows = list(_read_csv(path) if suffix == ".csv" else _read_jsonl(path))
    except UnicodeDecodeError as error:
        raise InputError(path, f"not UTF-8 text: {error}") from None
    base = path.resolve().parent
    rows, problems = [], []
    for line, values in raw_rows:
        if isinstance(values, RowProblem):
            problems.append(values)
            continue
        row, reasons = _parse_row(values, line, base)
        if reasons:
            problems.append(RowProblem(line, "; ".join(reasons), row.id if row else None))
        else:
            rows.append(row)
    rows, duplicates = _drop_duplicate_ids(rows)
    problems = sorted(problems + duplicates, key=lambda p: p.line)
    return Manifest(path=path, rows=rows, problems=problems)


def column_name(request_field: str) -> str:
    """The column that fills an InpaintRequest field (num_inference_steps -> steps)."""
    return next((name for name, column in columns().items() if column.field == request_field), request_field)


def canonical_column(name: str) -> str:
    """'negative_prompt', '--negative-prompt' and 'Negative-Prompt' all name the column negative-prompt."""
    name = name.strip().lower().lstrip("-").replace("_", "-")
    return COLUMN_ALIASES.get(name, name)


def _check_column(name: str) -> str | None:
    """None when the column is known, else why it is refused."""
    if name == "id" or name in columns():
        return None
    if name in RUN_OPTIONS:
        return f"column {name!r} is set for the whole run (medgen batch --{name}), not per row"
    return f"unknown column {name!r} (known: id, {', '.join(sorted(columns()))})"


def _read_csv(path: Path):
    """(line, {column: text}) per data row; a header problem is an error of the whole file."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise InputError(path, "empty manifest: the first line must name the columns")
        names = [canonical_column(name) for name in header]
        for name in names:
            reason = _check_column(name)
            if reason:
                raise InputError(path, f"line 1: {reason}")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise InputError(path, f"line 1: column {repeated[0]!r} appears twice")
        line = reader.line_num + 1
        for cells in reader:
            if any(cell.strip() for cell in cells):
                if len(cells) > len(names):
                    yield line, RowProblem(line, f"{len(cells)} values for {len(names)} columns")
                else:
                    yield line, dict(zip(names, cells))
            line = reader.line_num + 1


def _read_jsonl(path: Path):
    """(line, {column: value}) per non-blank line; each line must be one JSON object."""
    with path.open(encoding="utf-8-sig") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                values = json.loads(text)
            except json.JSONDecodeError as error:
                yield line, RowProblem(line, f"not JSON: {error.msg} at column {error.colno}")
                continue
            if not isinstance(values, dict):
                yield line, RowProblem(line, f"a row is a JSON object, got {type(values).__name__}")
                continue
            yield line, values


def _parse_row(values: dict[str, Any], line: int, base: Path) -> tuple[BatchRow | None, list[str]]:
    """The row, or the reasons it is bad (all of them, so one pass over the file finds every typo)."""
    reasons: list[str] = []
    given: dict[str, Any] = {}
    for name, value in values.items():
        name = canonical_column(str(name))
        reason = _check_column(name)
        if reason:
            reasons.append(reason)
        elif name in given:
            reasons.append(f"column {name!r} appears twice")
        elif not _is_empty(value):
            given[name] = value
    # 1. The row id: given, or a hash of what the row says
    row_id = given.pop("id", None)
    if row_id is None:
        row_id = hashlib.sha256(json.dumps(given, sort_keys=True, default=str).encode()).hexdigest()[:16]
    else:
        row_id = str(row_id).strip()
        if not ROW_ID_PATTERN.fullmatch(row_id):
            reasons.append(
                f"id {row_id!r} must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
    # 2. Each value read as its column's type
    options: dict[str, Any] = {}
    for name in REQUIRED:
        if name not in given:
            reasons.append(f"{name!r} is required")
    for name, value in given.items():
        column = columns()[name]
        try:
            options[column.field] = _read_value(column.kind, value, base)
        except (ValueError, MedgenError) as error:
            reasons.append(f"{name}: {error}")
    if reasons:
        return BatchRow(row_id, line, {}), reasons
    # 3. A seed for every row, so a re-run (here or on a cluster) makes the same images
    options.setdefault("seed", derived_seed(row_id))
    row = BatchRow(row_id, line, options)
    # 4. The engine's own checks of the request (ranges, exclusive options, adapter files)
    from medgen.api import check_request

    try:
        check_request(row.request(Path("unused")))
    except MedgenError as error:
        return row, [str(error)]
    return row, []


def derived_seed(row_id: str) -> int:
    """The seed of a row that gives none: fixed by its id, in [0, 2**31)."""
    digest = hashlib.sha256(f"medgen-batch-seed:{row_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or value == []


def _read_value(kind: str, value: Any, base: Path) -> Any:
    if kind == "text":
        if not isinstance(value, str):
            raise ValueError(f"expected text, got {value!r}")
        return value.strip()
    if kind == "int":
        return _read_int(value)
    if kind == "float":
        return _read_float(value)
    if kind == "bool":
        return _read_bool(value)
    if kind == "ints":
        items = value if isinstance(value, list) else re.split(r"[\s,;]+", str(value).strip(" []"))
        return [_read_int(item) for item in items if str(item).strip()]
    if kind == "path":
        path = _resolve(str(value), base)
        if not path.exists():
            raise ValueError(f"no such file or folder: {path}")
        return path
    if kind == "path_spec":
        return _resolve_spec(str(value), base)
    if kind == "path_specs":
        items = value if isinstance(value, list) else str(value).split(LIST_SEPARATOR)
        return [_resolve_spec(str(item), base) for item in items if str(item).strip()]
    if kind == "variations":
        if isinstance(value, list):
            return [str(item) for item in value]
        from medgen.generate.prompt_variations import read_prompt_variations

        text = str(value).strip()
        path = _resolve(text, base)
        return read_prompt_variations(str(path) if path.is_file() else text)
    raise AssertionError(f"unknown column kind {kind!r}")


def _read_int(value: Any) -> int:
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        raise ValueError(f"expected an integer, got {value!r}")
    try:
        return int(value) if not isinstance(value, str) else int(value.strip())
    except (TypeError, ValueError):
        raise ValueError(f"expected an integer, got {value!r}") from None


def _read_float(value: Any) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


def _read_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y"):
        return True
    if text in ("0", "false", "no", "n"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _resolve(text: str, base: Path) -> Path:
    path = Path(text.strip()).expanduser()
    return path if path.is_absolute() else base / path


def _resolve_spec(text: str, base: Path) -> str:
    """``PATH[:NUMBER]`` with PATH made absolute; the number kept as written."""
    from medgen.generate.path_spec import split_path_number

    text = text.strip()
    path, _ = split_path_number(text, number_label="weight")
    if path == Path(text):  # no number given
        return str(_resolve(text, base))
    head, _, number = text.rpartition(":")
    return f"{_resolve(head, base)}:{number}"


def _drop_duplicate_ids(rows: list[BatchRow]) -> tuple[list[BatchRow], list[RowProblem]]:
    """A row id names one output folder, so every row sharing an id with another is refused."""
    first_line: dict[str, int] = {}
    repeated: set[str] = set()
    for row in rows:
        if row.id in first_line:
            repeated.add(row.id)
        else:
            first_line[row.id] = row.line
    kept = [row for row in rows if row.id not in repeated]
    problems = []
    for row in rows:
        if row.id in repeated:
            lines = [r.line for r in rows if r.id == row.id and r.line != row.line]
            problems.append(RowProblem(row.line, f"row id {row.id!r} is also on line(s) {lines}", row.id))
    return kept, problems
