"""Resume: which manifest rows are finished, which are still to do, and which finished rows were made
from another version of their row (an error unless --force).

A row is finished when its folder is published; what it was made from is read back from the
provenance.json in that folder, so the check needs nothing beyond the folder itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medgen.batch.manifest import BatchRow, RowProblem, RowsError, column_name
from medgen.batch.output import BatchOutput

@dataclass
class ResumePlan:
    finished: list[BatchRow] = field(default_factory=list)
    todo: list[BatchRow] = field(default_factory=list)
    changed: dict[str, list[str]] = field(default_factory=dict)  # row id -> what differs


def plan_resume(rows: list[BatchRow], output: BatchOutput, model_sha256: str) -> ResumePlan:
    plan = ResumePlan()
    published = output.published_ids()
    for row in rows:
        if row.id not in published:
            plan.todo.append(row)
            continue
        differences = row_differences(row, output.row_dir(row.id), model_sha256)
        if differences:
            plan.changed[row.id] = differences
        plan.finished.append(row)
    return plan


def row_differences(row: BatchRow, row_dir: Path, model_sha256: str) -> list[str]:
    """What the row asks for now that its published folder was not made with ('name: made -> now').

    Only values the row sets are compared: a value left unset is the engine's choice (the model's
    recommended steps, the window it picked), so dropping a value from a row is not seen as a change.
    """
    try:
        provenance = json.loads((row_dir / "provenance.json").read_text(encoding="utf-8"))
        made = provenance["parameters"]
        made_model = provenance["model"]["sha256"]
    except (OSError, ValueError, KeyError) as error:
        return [f"its folder {row_dir} has no readable provenance.json ({error})"]
    differences = []
    for name, value in asdict(row.request(row_dir)).items():
        if name == "out" or value is None:  # unset: the engine chose, and what it chose stands
            continue
        now = json.loads(json.dumps(value, default=str))
        if now != made.get(name):
            differences.append(f"{column_name(name)}: {made.get(name)!r} -> {now!r}")
    if made_model != model_sha256:
        differences.append(f"model sha256: {made_model[:12]}... -> {model_sha256[:12]}...")
    return differences


def changed_rows_error(manifest_path: Path, rows: list[BatchRow], changed: dict[str, list[str]]) -> RowsError:
    problems = [
        RowProblem(row.line, f"id {row.id}: " + "; ".join(changed[row.id]), row.id) for row in rows if row.id in changed
    ]
    return RowsError(
        manifest_path,
        f"{len(changed)} finished row(s) differ from the rows that made them (same id, other content); "
        "pass --force to make them again:",
        problems,
    )
