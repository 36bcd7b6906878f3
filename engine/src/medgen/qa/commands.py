"""Entry points of `medgen report` and `medgen review ...`; `medgen.cli` hands them their arguments."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from medgen.errors import MedgenError

REVIEW_EPILOG = """\
preparing a study (a folder; cases and answers live in DIR/study.sqlite):
  medgen review add-real --cases DIR SCAN --mask MASK     a real lesion: the slice where MASK is largest
  medgen review add-run  --cases DIR RUN_DIR             a `medgen inpaint` run: one case per variant
  medgen review serve    --cases DIR --readers ann,bob,cy --port 8765
      prints one link per reader (each with its own token) and the summary link
  medgen review summary  --cases DIR --out DIR/summary   summary.html, summary.json, answers.csv
Each reader gets as many real as synthetic cases (the smaller count), in their own random order; the
pages and image URLs carry only random keys, never a file name, UID or tag.
"""


def report_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="medgen report",
        description="Write one self-contained HTML report of a `medgen inpaint` run (images embedded, no network).",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the --out folder of a `medgen inpaint` run")
    parser.add_argument("--source", type=Path, help="the source scan, where it moved since the run "
                        "(default: the input named in RUN_DIR/provenance.json)")
    parser.add_argument("--mask", type=Path, help="the mask, where it moved (default: the one in provenance.json)")
    parser.add_argument("--out", type=Path, help="HTML file to write (default: RUN_DIR/report.html)")
    parser.add_argument("--real-manifest", type=Path, metavar="CSV|JSONL",
                        help="real lesions to compare against (the `medgen batch` manifest format): the report "
                        "then gives the AUC of a classifier telling them from this run's lesions, as "
                        "`medgen bench detect` does (default: no detectability figure)")
    parser.add_argument("--detect-seeds", type=int, default=5, metavar="K",
                        help="splits and trainings of that classifier, in runs")
    args = parser.parse_args(argv)
    if args.detect_seeds < 1:
        parser.error(f"--detect-seeds must be at least 1, got {args.detect_seeds}")
    if args.real_manifest is not None and not args.real_manifest.is_file():
        parser.error(f"--real-manifest {args.real_manifest}: no such file")
    from medgen.qa.report import write_report

    written = write_report(args.run_dir, args.out, source=args.source, mask=args.mask,
                           real_manifest=args.real_manifest, detect_seeds=args.detect_seeds)
    print(f"wrote {written}")
    return 0


def _window(text: str) -> tuple[float, float]:
    try:
        center, width = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CENTER,WIDTH such as 40,400, got {text!r}") from None
    if width <= 0:
        raise argparse.ArgumentTypeError(f"window width must be > 0, got {width:g}")
    return center, width


def build_review_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medgen review",
        description="A blinded reader study in the browser: can readers tell real lesions from synthetic ones?",
        epilog=REVIEW_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="review_command", required=True)
    window_help = "display window in modality units (default: soft tissue 40,400 for CT, else the slice's 0.5-99.5 percentiles)"

    real = commands.add_parser("add-real", help="add a real lesion case (a scan and its lesion mask)")
    real.add_argument("--cases", type=Path, required=True, help="study folder (created if new)")
    real.add_argument("scan", type=Path, help="DICOM file or series folder, NIfTI/NRRD volume or PNG")
    real.add_argument("--mask", type=Path, required=True, help="lesion mask: .seg.nrrd, labelmap, DICOM SEG or PNG")
    which = real.add_mutually_exclusive_group()
    which.add_argument("--segment", help="segment name (.seg.nrrd) or label (DICOM SEG) (default: the only one)")
    which.add_argument("--label", type=int, help="label value or segment number (default: any non-zero)")
    real.add_argument("--window", type=_window, metavar="CENTER,WIDTH", help=window_help)

    run = commands.add_parser("add-run", help="add the variants of a `medgen inpaint` run as synthetic cases")
    run.add_argument("--cases", type=Path, required=True, help="study folder (created if new)")
    run.add_argument("run_dir", type=Path, help="the --out folder of a `medgen inpaint` run")
    run.add_argument("--source", type=Path, help="the run's source scan where it moved (default: from provenance.json)")
    run.add_argument("--window", type=_window, metavar="CENTER,WIDTH", help=window_help)

    serve = commands.add_parser("serve", help="serve the reading pages and the summary page")
    serve.add_argument("--cases", type=Path, required=True, help="study folder")
    serve.add_argument("--port", type=int, default=8765, help="TCP port (default 8765)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    serve.add_argument("--readers", help="comma-separated reader names to add if new (default: none added)")

    summary = commands.add_parser("summary", help="accuracy, AUC, realism and the easiest cases as HTML, JSON and CSV")
    summary.add_argument("--cases", type=Path, required=True, help="study folder")
    summary.add_argument("--out", type=Path, help="folder for summary.html, summary.json, answers.csv "
                         "(default: CASES/summary)")
    return parser


def review_main(argv: list[str]) -> int:
    args = build_review_parser().parse_args(argv)
    from medgen.qa.review.store import Study

    command = args.review_command
    if command in ("add-real", "add-run"):
        from medgen.qa.review.cases import add_real_case, add_run_cases

        study = Study(args.cases, create=True)
        if command == "add-real":
            keys = add_real_case(study, args.scan, args.mask, segment=args.segment, label=args.label,
                                 window=args.window)
        else:
            keys = add_run_cases(study, args.run_dir, source=args.source, window=args.window)
        counts = study.case_counts()
        print(f"added {len(keys)} case(s); the study has {counts['real']} real and {counts['synthetic']} synthetic")
        return 0
    study = Study(args.cases)
    if command == "summary":
        from medgen.qa.review.summary import write_summary

        for path in write_summary(study, args.out or args.cases / "summary"):
            print(f"wrote {path}")
        return 0
    return _serve(study, args)


def _serve(study, args) -> int:
    from medgen.qa.review.server import make_server

    known = {r.name for r in study.readers()}
    for name in filter(None, (n.strip() for n in (args.readers or "").split(","))):
        if name not in known:
            study.add_reader(name)
    try:
        server = make_server(study, args.host, args.port)
    except OSError as exc:
        raise MedgenError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    host, port = server.server_address[:2]
    for reader in study.readers():
        print(f"reader {reader.name}: http://{host}:{port}/r/{reader.token}")
    print(f"summary: http://{host}:{port}/summary?token={study.admin_token()}")
    print("serving; stop with Ctrl+C (every answer is already saved)", flush=True)
    logging.getLogger("medgen.qa.review.server").setLevel(logging.WARNING)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(review_main(sys.argv[1:]))
