"""What a study found: accuracy with a 95% interval, AUC from the confidences, realism, easiest cases."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from medgen.qa.review.store import Answer, Study

Z95 = 1.959963984540054
EASIEST_SHOWN = 5


@dataclass
class AccuracyRow:
    reader: str  # a reader's name, or "pooled"
    answers: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    auc: float | None  # None when only one truth was answered
    realism_real: float | None
    realism_synthetic: float | None


@dataclass
class CaseRow:
    key: str
    origin: str
    readers: int
    called_synthetic: int
    mean_score: float  # mean of +confidence (synthetic) / -confidence (real)


def wilson_interval(correct: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: stays inside [0, 1] and sane for small n."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denominator = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def auc_from_scores(answers: list[Answer]) -> float | None:
    """P(a synthetic case scores higher than a real one), ties counting half (Mann-Whitney U / n1 n0)."""
    synthetic = [a.synthetic_score for a in answers if a.truth == "synthetic"]
    real = [a.synthetic_score for a in answers if a.truth == "real"]
    if not synthetic or not real:
        return None
    wins = sum((s > r) + 0.5 * (s == r) for s in synthetic for r in real)
    return wins / (len(synthetic) * len(real))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def accuracy_row(name: str, answers: list[Answer]) -> AccuracyRow:
    correct = sum(a.correct for a in answers)
    low, high = wilson_interval(correct, len(answers))
    return AccuracyRow(
        reader=name, answers=len(answers), correct=correct,
        accuracy=correct / len(answers) if answers else float("nan"), ci_low=low, ci_high=high,
        auc=auc_from_scores(answers),
        realism_real=_mean([a.realism for a in answers if a.truth == "real"]),
        realism_synthetic=_mean([a.realism for a in answers if a.truth == "synthetic"]),
    )


def summarize(answers: list[Answer]) -> tuple[list[AccuracyRow], list[CaseRow]]:
    readers = list(dict.fromkeys(a.reader for a in answers))
    rows = [accuracy_row(r, [a for a in answers if a.reader == r]) for r in readers]
    rows.append(accuracy_row("pooled", answers))
    cases: dict[str, list[Answer]] = {}
    for a in answers:
        if a.truth == "synthetic":
            cases.setdefault(a.case_key, []).append(a)
    easiest = sorted(
        (CaseRow(key, group[0].origin, len(group), sum(a.answer == "synthetic" for a in group),
                 sum(a.synthetic_score for a in group) / len(group)) for key, group in cases.items()),
        key=lambda c: (c.called_synthetic / c.readers, c.mean_score), reverse=True,
    )
    return rows, easiest


def _fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)


def summary_html(study: Study) -> str:
    answers = study.answers()
    rows, easiest = summarize(answers)
    counts = study.case_counts()
    table = ["<tr><th>reader</th><th>answers</th><th>correct</th><th>accuracy (95% CI)</th><th>AUC</th>"
             "<th>realism of real</th><th>realism of synthetic</th></tr>"]
    for r in rows:
        table.append(
            f"<tr><td>{html.escape(r.reader)}</td><td>{r.answers}</td><td>{r.correct}</td>"
            f"<td>{_fmt(r.accuracy, '{:.1%}')} ({_fmt(r.ci_low, '{:.1%}')} to {_fmt(r.ci_high, '{:.1%}')})</td>"
            f"<td>{_fmt(r.auc)}</td><td>{_fmt(r.realism_real)}</td><td>{_fmt(r.realism_synthetic)}</td></tr>")
    cases = []
    for c in easiest[:EASIEST_SHOWN]:
        crop = base64.b64encode(study.case_image(c.key, "crop")).decode("ascii")
        cases.append(
            f'<div class="case"><img src="data:image/png;base64,{crop}" alt="synthetic case"><br>'
            f"{c.called_synthetic} of {c.readers} reader(s) called it synthetic, mean score {c.mean_score:+.1f}<br>"
            f"<small>{html.escape(c.origin)}</small></div>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>Reader study summary</title>
<style>body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; }}
table {{ border-collapse: collapse; }} th, td {{ border: 1px solid #bbb; padding: 3px 8px; text-align: left; }}
.cases {{ display: flex; flex-wrap: wrap; gap: 14px; }} .case img {{ width: 192px; height: 192px; }}</style>
</head><body>
<h1>Reader study summary</h1>
<p>{counts['real']} real and {counts['synthetic']} synthetic case(s); {len(answers)} answer(s). Accuracy: share of
cases called right (50% is chance), with its 95% Wilson interval. AUC: from each answer scored +confidence when
called synthetic and -confidence when called real (0.5: readers cannot tell). Realism: mean score 1-5.</p>
<table>{''.join(table)}</table>
<h2>Synthetic cases easiest to call synthetic</h2>
<div class="cases">{''.join(cases) or '<p>no synthetic case answered yet</p>'}</div>
</body></html>
"""


def summary_json(study: Study) -> dict:
    rows, easiest = summarize(study.answers())
    return {"case_counts": study.case_counts(), "readers": [asdict(r) for r in rows],
            "easiest_synthetic": [asdict(c) for c in easiest[:EASIEST_SHOWN]]}


def answers_csv(study: Study) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["reader", "case", "truth", "origin", "answer", "confidence", "realism", "correct", "answered_utc"])
    for a in study.answers():
        writer.writerow([a.reader, a.case_key, a.truth, a.origin, a.answer, a.confidence, a.realism,
                         int(a.correct), a.answered_utc])
    return buffer.getvalue()


def write_summary(study: Study, out: Path) -> list[Path]:
    """summary.html, summary.json and answers.csv into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "summary.html": summary_html(study),
        "summary.json": json.dumps(summary_json(study), indent=2) + "\n",
        "answers.csv": answers_csv(study),
    }
    written = []
    for name, text in files.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
        written.append(out / name)
    return written
