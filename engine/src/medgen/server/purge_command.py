"""`medgen purge`: delete engine data past its retention time by hand, as `medgen serve` does on its own."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medgen.server.config import default_data_dir
from medgen.server.retention import DEFAULT_KEEP_RESULTS_S, RetentionPolicy, format_duration, parse_duration, purge
from medgen.server.storage import format_size

EXIT_BAD_USAGE = 2
_WHAT = {"job": "job (results, upload, database contents)", "inputs": "upload", "leftover": "files of a deleted job",
         "orphan": "folder without a job"}


def build_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=None,
                   help="the engine's data folder (default: $MEDGEN_DATA_DIR, else ~/.local/share/medgen)")
    p.add_argument("--older-than", default=format_duration(DEFAULT_KEEP_RESULTS_S), metavar="DURATION",
                   help="delete jobs that finished longer ago than this: 90s, 30m, 12h, 7d or 0 for every finished "
                        "job (default %(default)s, the server's --keep-results default)")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be removed and remove nothing (default: remove)")


def run_purge(args: argparse.Namespace) -> int:
    from medgen.server.jobs import JobStore

    try:
        older_than = parse_duration(args.older_than, allow_forever=False)
    except ValueError as exc:
        print(f"medgen purge: error: --older-than: {exc}", file=sys.stderr)
        return EXIT_BAD_USAGE
    data_dir = (args.data_dir or default_data_dir()).expanduser().resolve()
    if not (data_dir / "jobs.sqlite3").is_file():
        print(f"medgen purge: error: {data_dir} is not an engine data folder (it has no jobs.sqlite3)", file=sys.stderr)
        return EXIT_BAD_USAGE
    store = JobStore(data_dir, max_queued_jobs=0)
    try:
        report = purge(store, RetentionPolicy(keep_results_s=older_than, keep_inputs_s=None), dry_run=args.dry_run)
    finally:
        store.close()
    verb = "would remove" if args.dry_run else "removed"
    for what, name, size in report.removed:
        print(f"{verb} {_WHAT[what]} {name} ({format_size(size)})")
    print(f"medgen purge: {verb} {len(report.removed)} item(s), {format_size(report.bytes)}, from {data_dir}"
          + ("; the database was compacted (VACUUM)" if report.vacuumed else ""))
    return 0
