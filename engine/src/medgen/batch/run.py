"""A whole batch run: check every row, take the output folder, skip what is finished, hand the rest
to the local or the Ray runner, and keep the index and the failure list up to date as rows finish."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from medgen.batch.index import (
    JsonlAppender,
    describe_published_row,
    failure_entry,
    read_index,
    write_jsonl_atomic,
    write_parquet,
)
from medgen.batch.local import DEFAULT_BATCH_SIZE, LocalRunner
from medgen.batch.manifest import BatchRow, Manifest, ManifestError, read_manifest
from medgen.batch.modality import modality_problems
from medgen.batch.output import BatchOutput
from medgen.batch.progress import BatchProgress
from medgen.batch.resume import changed_rows_error, plan_resume
from medgen.batch.worker import RowOutcome
from medgen.errors import InputError

logger = logging.getLogger(__name__)

RowCallback = Callable[[BatchRow, RowOutcome], None]


@dataclass
class BatchSummary:
    """What a run did, with the figures the benchmark reads."""

    out_dir: Path
    rows: int  # valid rows in the manifest
    bad_rows: int  # refused by the check (run only with skip_bad_rows)
    finished_before: int
    done: int  # finished by this run
    failed: int
    workers: str
    workers_count: int
    start_s: float  # connecting, starting workers, loading the model
    run_s: float  # from the first row handed out to the last result
    generate_s: list[float] = field(default_factory=list)  # per row made by this run, inside Inpainter
    row_s: list[float] = field(default_factory=list)  # per row made by this run, as the driver saw it
    parquet: bool = False

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.bad_rows == 0

    @property
    def overhead_share(self) -> float | None:
        """Worker time not spent generating, per unit of generating time: (workers x run time - time
        in Inpainter) / time in Inpainter, over the rows this run made."""
        total = sum(self.generate_s)
        if not total:
            return None
        return (self.workers_count * self.run_s - total) / total


def run_batch(
    manifest: str | Path,
    out: str | Path,
    *,
    model: str | Path | None = None,
    ray: str | None = None,
    gpus_per_task: float = 1.0,
    max_retries: int = 2,
    batch_size: int | None = None,
    skip_bad_rows: bool = False,
    force: bool = False,
    device: str = "auto",
    dtype: str | None = None,
    scheduler: str | None = None,
    threads: int | None = None,
    batch_invariant: bool = False,
    progress_stream: TextIO | None = None,
    progress_every_s: float = 5.0,
    on_row: RowCallback | None = None,
) -> BatchSummary:
    """Run every row of ``manifest`` into ``out`` (see medgen.batch.output for the layout).

    ``model``: a model folder or file, None or "demo" for the shipped demo model. ``ray``: None runs
    in this process; "auto" or a cluster address runs on Ray. ``batch_size``: rows whose crops go
    through the model together in a local run (None: DEFAULT_BATCH_SIZE; 1: each row alone); the
    images are the same within float rounding for every batch size, locally and on Ray.
    ``batch_invariant``: the same bytes instead, for every batch size, locally and on Ray (layers run
    crop by crop, on one torch thread on the CPU: most of batching's gain is lost). ``threads``: torch
    threads of each Ray worker (None: $MEDGEN_THREADS, else 1, as the workers of a node share its
    cores); a local run takes the process's own setting (``medgen --threads``). ``on_row`` is called
    with each finished or failed row's last outcome (after its index lines are written).
    """
    # 1. Check the options, the model and every row before any work
    from medgen.dicom.provenance import sha256_model
    from medgen.phantom.model import resolve_model_path

    if max_retries < 0:
        raise InputError(None, f"--max-retries must be >= 0, got {max_retries}")
    if batch_size is not None and ray is not None and batch_size != 1:
        raise InputError(None, "--batch-size is for runs in this process; Ray workers take one row at a time")
    model_path = resolve_model_path(model)
    if not model_path.exists():
        raise InputError(model_path, "--model: no such model folder or file")
    model_sha256 = sha256_model(model_path)
    checked = _refuse_uncovered_modalities(read_manifest(manifest), model_path)
    if checked.problems and not skip_bad_rows:
        raise ManifestError(checked.path, checked.problems, checked.total)
    if not checked.rows and not checked.problems:
        raise InputError(checked.path, "the manifest has no rows")

    with BatchOutput(out) as output:
        # 2. Resume: leftovers of a killed run go, finished rows stay, changed rows need --force
        output.remove_leftovers()
        plan = plan_resume(checked.rows, output, model_sha256)
        if plan.changed and not force:
            raise changed_rows_error(checked.path, checked.rows, plan.changed)
        for row_id in plan.changed:
            output.set_aside(row_id)
        todo_ids = {row.id for row in plan.todo} | set(plan.changed)
        todo = [row for row in checked.rows if row.id in todo_ids]

        # 3. The index holds every published row once; lines a killed driver never wrote are rebuilt
        lines_by_row = _index_of_published_rows(output, checked.rows)
        _write_index(output, checked.rows, lines_by_row, parquet=False)
        failures = [failure_entry(p.row_id, p.line, "invalid", p.reason, 0) for p in checked.problems]
        write_jsonl_atomic(output.failed_path, failures)

        # 4. Run the rest
        worker_options = {
            "model": model_path, "out_dir": output.dir, "device": device, "dtype": dtype, "scheduler": scheduler,
            "batch_invariant": batch_invariant,
        }
        if ray is None:
            runner = LocalRunner(worker_options, max_retries=max_retries,
                                 batch_size=DEFAULT_BATCH_SIZE if batch_size is None else batch_size)
        else:
            from medgen.batch.ray_runner import RayRunner

            from medgen.threads import threads_wanted

            runner = RayRunner(ray, {**worker_options, "threads": threads_wanted(threads, shared=True)},
                               max_retries=max_retries, gpus_per_task=gpus_per_task)
        summary = BatchSummary(
            out_dir=output.dir, rows=len(checked.rows), bad_rows=len(checked.problems),
            finished_before=len(checked.rows) - len(todo), done=0, failed=0, workers=runner.description,
            workers_count=0, start_s=0.0, run_s=0.0,
        )
        progress = BatchProgress(len(checked.rows), summary.finished_before, stream=progress_stream,
                                 every_s=progress_every_s)
        index_appender = JsonlAppender(output.index_path)
        failed_appender = JsonlAppender(output.failed_path)

        def on_finished(row: BatchRow, outcome: RowOutcome, attempts: int, row_s: float) -> None:
            if outcome.ok:
                timings = {"generate_s": outcome.generate_s, "row_s": row_s}
                lines = [{**line, "timings": timings, "attempts": attempts} for line in outcome.index_lines]
                if row.id not in lines_by_row:  # an attempt that found the row published adds nothing twice
                    index_appender.append(lines)
                    lines_by_row[row.id] = lines
                summary.done += 1
                if outcome.generate_s is not None:
                    summary.generate_s.append(outcome.generate_s)
                    summary.row_s.append(row_s)
                progress.row_done()
            else:
                failed_appender.append([failure_entry(row.id, row.line, outcome.kind, outcome.error, attempts)])
                summary.failed += 1
                progress.row_failed()
                logger.warning("row %s (line %d) failed: %s", row.id, row.line, outcome.error.splitlines()[0])
            if on_row is not None:
                on_row(row, outcome)

        try:
            if todo:
                start = time.perf_counter()
                runner.start()
                summary.workers, summary.workers_count = runner.description, runner.workers
                summary.start_s = time.perf_counter() - start
                start = time.perf_counter()
                runner.run(todo, on_finished)
                summary.run_s = time.perf_counter() - start
        finally:
            runner.stop()
            index_appender.close()
            failed_appender.close()
        progress.finish()

        # 5. The final index in manifest order (and as Parquet); no staging folder is left behind
        summary.parquet = _write_index(output, checked.rows, lines_by_row, parquet=True)
        output.remove_leftovers()
    return summary


def _refuse_uncovered_modalities(checked: Manifest, model_path: Path) -> Manifest:
    """The manifest with rows whose source the model does not cover moved to the bad rows, so they are
    refused (or skipped with --skip-bad-rows) before any work, as `medgen inpaint` refuses them."""
    refused = modality_problems(checked.rows, model_path)
    if not refused:
        return checked
    refused_lines = {problem.line for problem in refused}
    return Manifest(
        path=checked.path,
        rows=[row for row in checked.rows if row.line not in refused_lines],
        problems=sorted(checked.problems + refused, key=lambda problem: problem.line),
    )


def _index_of_published_rows(output: BatchOutput, rows: list[BatchRow]) -> dict[str, list[dict]]:
    """Index lines of every published row: the ones already written, the others made from the folder."""
    written = read_index(output.index_path)
    lines_of = {row.id: row.line for row in rows}
    lines_by_row = {}
    for row_id in sorted(output.published_ids()):
        lines_by_row[row_id] = written.get(row_id) or describe_published_row(
            output.dir, row_id, line=lines_of.get(row_id)
        )
    return lines_by_row


def _write_index(output: BatchOutput, rows: list[BatchRow], lines_by_row: dict[str, list[dict]], *, parquet: bool) -> bool:
    """Rewrite index.jsonl in manifest order (rows of earlier manifests after, by id); True when the
    Parquet copy was written too."""
    order = [row.id for row in rows if row.id in lines_by_row]
    order += sorted(set(lines_by_row) - set(order))
    entries = [line for row_id in order for line in lines_by_row[row_id]]
    write_jsonl_atomic(output.index_path, entries)
    return parquet and write_parquet(entries, output.parquet_path)
