"""`medgen batch MANIFEST --out DIR`: the options and the summary printed at the end."""

from __future__ import annotations

import argparse
from pathlib import Path

from medgen.batch.local import DEFAULT_BATCH_SIZE
from medgen.phantom.model import DEMO_MODEL_HELP

EXIT_ROWS_FAILED = 1


def build_parser(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Inpaint every row of a dataset manifest into DIR/rows/<id>/ and list the results in DIR/index.jsonl. "
        "Re-running the same command resumes: finished rows are kept, unfinished ones are made."
    )
    p.add_argument(
        "manifest", type=Path, metavar="MANIFEST",
        help="CSV (first line names the columns) or JSONL (one object per line): one request per row, columns "
        "named like `medgen inpaint`'s options (input, mask, prompt, segment, label, slice, variants, seed, steps, "
        "adapter, ...) and an optional id; relative paths are relative to the manifest's folder",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output folder: new, or one that an earlier run of this command wrote (to resume)")
    p.add_argument("--model", help=DEMO_MODEL_HELP)
    p.add_argument(
        "--ray", metavar="auto|ADDRESS",
        help="run on a Ray cluster (pip install 'medgen[ray]'): 'auto' joins the running one or starts a local "
        "one (2 CPU slots and this machine's GPUs, loopback only), else the cluster's address, e.g. 10.0.0.5:6379; "
        "DIR must be on a path every node shares (default: run in this process)",
    )
    p.add_argument(
        "--gpus-per-task", type=float, default=1.0, metavar="F",
        help="GPUs each Ray worker takes, in GPUs (0.5 puts two workers on one GPU); on a cluster without GPUs "
        "each worker takes one CPU slot instead",
    )
    p.add_argument(
        "--max-retries", type=int, default=2, metavar="N",
        help="times a row is tried again after an unexpected error or a lost worker, in attempts "
        "(bad input fails at once)",
    )
    p.add_argument(
        "--batch-size", type=int, metavar="N",
        help=f"rows whose crops go through the model together in a run in this process, in rows; rows share a "
        f"call when their steps, guidance, strength, negative prompt and adapters match; the images are the same "
        f"for every N within float rounding (a stored value may differ by one; --batch-invariant for the same "
        f"bytes) (default: {DEFAULT_BATCH_SIZE}; 1: each row alone; Ray workers take one row at a time)",
    )
    p.add_argument(
        "--batch-invariant", action="store_true",
        help="make every row's files the same bytes whatever its batch size and wherever it runs (this process "
        "or a Ray worker): the model's convolutions, linear layers and group norms run crop by crop inside "
        "each shared call, and on the CPU on one torch thread. Costs most of batching's gain: on a 2-core "
        "AVX2 CPU with the demo model (`medgen bench batch`), 8 rows per call gave 1.26-1.34x the rows per "
        "minute of one row per call with layers batched and 1.10-1.12x with this option; on a GPU, where "
        "batching is most of the speed, per-crop layers lose more (default: layers run batched, the same "
        "images within float rounding)",
    )
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="run the valid rows and list the bad ones in DIR/failed.jsonl (default: refuse the manifest)")
    p.add_argument("--force", action="store_true",
                   help="make again the finished rows whose manifest row changed (default: stop with an error)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the model runs; auto takes CUDA when there is one")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"],
                   help="weights and activations (default: bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--scheduler", choices=["ddim", "dpm++", "euler", "unipc"],
                   help="sampler of every row (default: the model's own)")


def run_batch_command(args: argparse.Namespace) -> int:
    from medgen.batch.run import run_batch

    summary = run_batch(
        args.manifest,
        args.out,
        model=args.model,
        ray=args.ray,
        gpus_per_task=args.gpus_per_task,
        max_retries=args.max_retries,
        batch_size=args.batch_size,
        skip_bad_rows=args.skip_bad_rows,
        force=args.force,
        device=args.device,
        dtype=args.dtype,
        scheduler=args.scheduler,
        threads=args.threads,
        batch_invariant=args.batch_invariant,
    )
    out = summary.out_dir
    print(
        f"batch: {summary.rows} rows: {summary.done} made by this run, {summary.finished_before} finished before, "
        f"{summary.failed} failed" + (f", {summary.bad_rows} bad rows skipped" if summary.bad_rows else "")
    )
    print(f"  workers: {summary.workers}")
    print(f"  index: {out / 'index.jsonl'}" + (f" and {out / 'index.parquet'}" if summary.parquet else ""))
    if not summary.ok:
        print(f"  failures: {out / 'failed.jsonl'}")
        return EXIT_ROWS_FAILED
    return 0
