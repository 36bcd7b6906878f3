"""`medgen bench batch`: what `medgen batch` costs on top of generation, locally and on Ray.

The rows are slices of a phantom CT (its healthy twin, inpainted under the lesion's mask), so the
benchmark needs nothing but the package. Three timings of the same rows:

1. a plain loop of :class:`medgen.api.Inpainter` calls, model loaded and warm: a row's generation time;
2. `medgen batch` in this process, each row alone (`--batch-size 1`) and N rows per model call
   (`--batch-size N`), with the ratio of their rows per minute (layers batched, or crop by crop with
   `--batch-invariant`);
3. `medgen batch --ray` (one worker per GPU or CPU slot).

For 2 and 3 the overhead per row is the worker time not spent inside Inpainter:
(workers x run time - sum of the rows' generation times) / rows; start-up (connecting, starting
workers, loading the model) is reported on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from medgen.batch.local import DEFAULT_BATCH_SIZE
from medgen.cli_help import new_parser
from medgen.errors import InputError

PROMPTS = ("hypodense liver cyst", "hyperdense liver lesion", "ring-enhancing liver lesion")


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("medgen bench batch", __doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=24, metavar="N", help="rows in the manifest, in rows")
    p.add_argument("--steps", type=int, metavar="N",
                   help="denoising steps per row (default: the model's medgen.json, 20 for the demo model)")
    p.add_argument("--model", help="model folder or file, or 'demo' (default: demo, the shipped phantom model)")
    p.add_argument("--ray", default="auto", metavar="auto|ADDRESS",
                   help="Ray cluster for the Ray run: 'auto' joins a running one or starts a local one (2 CPU slots)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                   help="rows per model call of the batched local run, in rows (default: %(default)s)")
    p.add_argument("--batch-invariant", action="store_true",
                   help="time `medgen batch --batch-invariant` (the same bytes for every batch size; layers run "
                   "crop by crop, on one torch thread on the CPU) instead of batched layers")
    p.add_argument("--no-ray", action="store_true", help="time only the plain loop and the local runner")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the model runs; auto takes CUDA when there is one")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON here (default: none)")
    p.add_argument("--work-dir", type=Path, metavar="DIR",
                   help="folder for the phantom, the manifest and the outputs (default: a temporary one, deleted)")
    return p


def make_manifest(folder: Path, rows: int, steps: int | None) -> Path:
    """A phantom CT's healthy twin and its lesion mask, and a JSONL manifest of ``rows`` rows on its
    middle lesion slice, each with its own seed and one of a few prompts."""
    from medgen.phantom.cases import make_case
    from medgen.phantom.series import write_case

    case = make_case(7, "cyst", case_id="bench-batch", num_slices=4)
    files = write_case(case, folder / "phantom")
    middle = case.lesion_slices[len(case.lesion_slices) // 2]
    manifest = folder / "manifest.jsonl"
    with manifest.open("w", encoding="utf-8") as handle:
        for i in range(rows):
            row = {
                "id": f"row-{i:04d}",
                "input": str(files.healthy_dir),
                "mask": str(files.seg_nrrd),
                "slice": [middle],
                "prompt": PROMPTS[i % len(PROMPTS)],
                "seed": 1000 + i,
                "window": "soft_tissue",
            }
            if steps is not None:
                row["steps"] = steps
            handle.write(json.dumps(row) + "\n")
    return manifest


def plain_loop(manifest: Path, out: Path, model: str | None, device: str) -> dict:
    """Generation time per row: Inpainter calls in a loop, after one warm-up row (not counted)."""
    from medgen.api import Inpainter
    from medgen.batch.manifest import read_manifest

    rows = read_manifest(manifest).rows
    inpainter = Inpainter(model, device=device)
    start = time.perf_counter()
    inpainter.model
    load_s = time.perf_counter() - start
    inpainter(rows[0].request(out / "warm-up"))
    times = []
    for row in rows:
        start = time.perf_counter()
        inpainter(row.request(out / row.id))
        times.append(time.perf_counter() - start)
    return {"load_s": load_s, "generate_s": times, "run_s": sum(times), "workers": 1}


def batch_run(manifest: Path, out: Path, model: str | None, device: str, ray: str | None,
              batch_size: int | None = None, batch_invariant: bool = False) -> dict:
    from medgen.batch.run import run_batch

    with open(os.devnull, "w") as quiet:
        summary = run_batch(manifest, out, model=model, device=device, ray=ray, batch_size=batch_size,
                            batch_invariant=batch_invariant, progress_stream=quiet)
    if not summary.ok or summary.done != summary.rows:
        raise RuntimeError(f"the batch run did not finish every row: {summary}")
    return {
        "load_s": summary.start_s,
        "generate_s": summary.generate_s,
        "run_s": summary.run_s,
        "workers": summary.workers_count,
        "description": summary.workers,
    }


def figures(name: str, timing: dict) -> dict:
    """Rows per minute and the overhead per row (absolute and as a share of generation) of one path."""
    generate = timing["generate_s"]
    rows = len(generate)
    overhead_s = (timing["workers"] * timing["run_s"] - sum(generate)) / rows
    mean_generate = sum(generate) / rows
    return {
        "path": name,
        "workers": timing["workers"],
        "start_s": timing["load_s"],
        "run_s": timing["run_s"],
        "rows_per_min": 60.0 * rows / timing["run_s"],
        "generate_s_per_row_median": statistics.median(generate),
        "generate_s_per_row_mean": mean_generate,
        "overhead_s_per_row": overhead_s,
        "overhead_share": overhead_s / mean_generate,
    }


def format_table(results: list[dict], header: str) -> str:
    lines = [
        header,
        f"{'path':<14} {'workers':>7} {'start s':>8} {'run s':>8} {'rows/min':>9} {'gen s/row':>10} "
        f"{'overhead s/row':>15} {'overhead share':>15}",
    ]
    for r in results:
        share = "-" if r["path"] == "plain loop" else f"{100 * r['overhead_share']:.1f}%"
        overhead = "-" if r["path"] == "plain loop" else f"{r['overhead_s_per_row']:.4f}"
        lines.append(
            f"{r['path']:<14} {r['workers']:>7} {r['start_s']:>8.1f} {r['run_s']:>8.1f} {r['rows_per_min']:>9.1f} "
            f"{r['generate_s_per_row_mean']:>10.3f} {overhead:>15} {share:>15}"
        )
    by_path = {r["path"]: r for r in results}
    ratio = batch_ratio(results)
    if ratio:
        lines.append(
            f"rows per minute: local, batch 1 {ratio['rows_per_min_batch_1']:.1f}; local, batch "
            f"{ratio['batch_size']} {ratio['rows_per_min_batch_n']:.1f}"
        )
        lines.append(f"local, batch {ratio['batch_size']} / local, batch 1 rows per minute: {ratio['ratio']:.2f}")
    if "ray" in by_path and "local, batch 1" in by_path:
        ray_ratio = by_path["ray"]["rows_per_min"] / by_path["local, batch 1"]["rows_per_min"]
        lines.append(f"ray / local, batch 1 rows per minute: {ray_ratio:.2f}")
    lines.append("overhead share = (workers x run s - time in Inpainter) / time in Inpainter; goal < 5%")
    return "\n".join(lines)


def batch_ratio(results: list[dict]) -> dict | None:
    """Rows per minute of the local runs at batch 1 and at the batched size, and their ratio (the gain
    of batching), from run_bench's results; None without both runs."""
    by_path = {r["path"]: r for r in results}
    batched = [r for r in results if r["path"].startswith("local, batch ") and r["path"] != "local, batch 1"]
    if not batched or "local, batch 1" not in by_path:
        return None
    one, many = by_path["local, batch 1"]["rows_per_min"], batched[0]["rows_per_min"]
    return {
        "batch_size": int(batched[0]["path"].rsplit(" ", 1)[1]),
        "rows_per_min_batch_1": one,
        "rows_per_min_batch_n": many,
        "ratio": many / one,
    }


def run_bench(rows: int, *, steps: int | None, model: str | None, ray: str | None, device: str,
              work_dir: Path | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
              batch_invariant: bool = False) -> tuple[list[dict], str]:
    if rows < 2:
        raise InputError(None, f"--rows must be at least 2, got {rows}")
    if batch_size < 2:
        raise InputError(None, f"--batch-size must be at least 2 (it is timed against 1), got {batch_size}")
    with tempfile.TemporaryDirectory(prefix="medgen-bench-batch-") as temporary:
        folder = Path(work_dir or temporary)
        folder.mkdir(parents=True, exist_ok=True)
        manifest = make_manifest(folder, rows, steps)
        results = [figures("plain loop", plain_loop(manifest, folder / "plain", model, device))]
        for size in (1, batch_size):
            timing = batch_run(manifest, folder / f"local-{size}", model, device, None, batch_size=size,
                               batch_invariant=batch_invariant)
            results.append(figures(f"local, batch {size}", timing))
        ray_description = ""
        if ray is not None:
            timing = batch_run(manifest, folder / "ray", model, device, ray, batch_invariant=batch_invariant)
            results.append(figures("ray", timing))
            ray_description = f"; Ray: {timing['description']}"
    import torch

    header = (
        f"medgen bench batch: {rows} rows (one 128x128 phantom CT slice each), model {model or 'demo'}, "
        f"steps {steps or 'from the model'}, torch threads in this process {torch.get_num_threads()}, "
        f"{'batch-invariant (layers crop by crop)' if batch_invariant else 'layers batched'}{ray_description}"
    )
    return results, format_table(results, header)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results, table = run_bench(
        args.rows, steps=args.steps, model=args.model, ray=None if args.no_ray else args.ray, device=args.device,
        work_dir=args.work_dir, batch_size=args.batch_size, batch_invariant=args.batch_invariant,
    )
    print(table)
    if args.json:
        written = {"rows": args.rows, "batch_invariant": args.batch_invariant, **(batch_ratio(results) or {}),
                   "results": results}
        args.json.write_text(json.dumps(written, indent=2) + "\n", encoding="utf-8")
    return 0
