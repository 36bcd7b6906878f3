"""The output index a training script reads: DIR/index.jsonl (and DIR/index.parquet when pyarrow is
importable), one line per finished row and variant; and DIR/failed.jsonl, one line per failed row.

Every path in the index is relative to DIR, so a finished folder can be moved or copied whole. The
lines of a row are made from its published folder (provenance.json and the files beside it), so they
can be rebuilt after a crash from the folder alone; only the timings are lost then (null).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable

logger = logging.getLogger(__name__)

INDEX_JSONL = "index.jsonl"
INDEX_PARQUET = "index.parquet"
FAILED_JSONL = "failed.jsonl"
ROWS_DIR = "rows"
VARIANT_DIR = re.compile(r"variant-(\d+)")


def describe_published_row(out_dir: Path, row_id: str, *, line: int | None) -> list[dict]:
    """The index lines of one published row folder, one per variant, in variant order; the driver
    adds ``timings`` and ``attempts`` (null for a row rebuilt from its folder)."""
    row_dir = out_dir / ROWS_DIR / row_id
    provenance = json.loads((row_dir / "provenance.json").read_text(encoding="utf-8"))
    parameters = provenance.get("parameters", {})
    seeds = {v["index"]: v["seed"] for v in provenance.get("variants", [])}
    prompts = parameters.get("variant_prompts") or []
    labels = provenance.get("label") or []  # per variant: the drawn lesion against the request's mask
    lines = []
    variant_dirs = sorted(
        (p for p in row_dir.iterdir() if p.is_dir() and VARIANT_DIR.fullmatch(p.name)), key=lambda p: p.name
    )
    for variant_dir in variant_dirs:
        v = int(VARIANT_DIR.fullmatch(variant_dir.name).group(1)) - 1
        files = sorted(p for p in variant_dir.rglob("*") if p.is_file())
        seg = variant_dir.parent / f"{variant_dir.name}-seg" / "SEG.dcm"
        series_uid, sop_uids = _dicom_uids([p for p in files if p.suffix.lower() == ".dcm"])
        seg_uid = _dicom_uids([seg])[0] if seg.is_file() else None
        lines.append(
            {
                "row_id": row_id,
                "manifest_line": line,
                "variant": v + 1,
                "seed": seeds.get(v),
                "prompt": prompts[v] if v < len(prompts) else parameters.get("prompt"),
                "input": parameters.get("input"),
                "mask": parameters.get("mask"),
                "series_dir": _relative(variant_dir, out_dir),
                "files": [_relative(p, out_dir) for p in files],
                "series_instance_uid": series_uid,
                "sop_instance_uids": sop_uids,
                "seg_file": _relative(seg, out_dir) if seg.is_file() else None,
                "seg_series_instance_uid": seg_uid,
                "provenance": _relative(row_dir / "provenance.json", out_dir),
                "preview": _relative(row_dir / "preview.png", out_dir),
                "model": provenance.get("model", {}).get("name"),
                "model_sha256": provenance.get("model", {}).get("sha256"),
                "label": labels[v] if v < len(labels) else None,
                "timings": None,
                "attempts": None,
            }
        )
    return lines


def _relative(path: Path, out_dir: Path) -> str:
    return path.relative_to(out_dir).as_posix()


def _dicom_uids(paths: list[Path]) -> tuple[str | None, list[str]]:
    """(Series Instance UID, SOP Instance UIDs in file-name order) of DICOM files; (None, []) for none."""
    if not paths:
        return None, []
    import pydicom

    headers = [
        pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "SOPInstanceUID"])
        for p in sorted(paths)
    ]
    return str(headers[0].SeriesInstanceUID), [str(ds.SOPInstanceUID) for ds in headers]


def read_index(path: Path) -> dict[str, list[dict]]:
    """Index lines by row id. A line cut short by a crash (the last one) is dropped: its row is
    rebuilt from its folder."""
    by_row: dict[str, list[dict]] = {}
    if not path.is_file():
        return by_row
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(text)
        except json.JSONDecodeError:
            logger.info("%s: dropped a line cut short by an interrupted run", path)
            continue
        if isinstance(entry, dict) and "row_id" in entry:
            by_row.setdefault(entry["row_id"], []).append(entry)
    return by_row


def write_jsonl_atomic(path: Path, entries: Iterable[dict]) -> None:
    """Write the whole file beside its place, then rename it over the old one."""
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False)
    try:
        with handle:
            for entry in entries:
                handle.write(json.dumps(entry, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


class JsonlAppender:
    """Appends whole lines, flushed and synced one by one, so a killed driver leaves at most one torn line."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = path.open("a", encoding="utf-8")

    def append(self, entries: Iterable[dict]) -> None:
        self._handle.write("".join(json.dumps(entry, sort_keys=True) + "\n" for entry in entries))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


def write_parquet(jsonl_entries: list[dict], path: Path) -> bool:
    """The index as Parquet (same columns; timings as a struct), when pyarrow is importable."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    staging = path.with_name(f".{path.name}.partial")
    table = pa.Table.from_pylist(jsonl_entries) if jsonl_entries else pa.table({"row_id": pa.array([], pa.string())})
    pq.write_table(table, staging)
    os.replace(staging, path)
    return True


def failure_entry(row_id: str | None, line: int, kind: str, error: str, attempts: int) -> dict[str, Any]:
    """One line of failed.jsonl. kind: invalid (refused by the manifest check), input (the row's
    files or options were refused at work time), error (failed after every retry), lost (its worker
    kept dying)."""
    return {"row_id": row_id, "manifest_line": line, "kind": kind, "error": error, "attempts": attempts}
