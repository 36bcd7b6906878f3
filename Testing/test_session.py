"""The scripted clinician's session (Testing/session.py) against its goals: a small one in the default run,
the 300-slice one marked slow (`pytest -m slow Testing/test_session.py`, about ten minutes here).

Each runs the harness as its own process (real Qt, a real scene, a real engine and Orthanc) and reads
the figures it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the 'slicer' package here is not Slicer's core libraries (slicer-core)", allow_module_level=True)

SESSION = Path(__file__).resolve().parent / "session.py"


def run_session(tmp_path: Path, *arguments: str, timeout: float) -> dict:
    figures = tmp_path / "session.json"
    result = subprocess.run([sys.executable, str(SESSION), *arguments, "--json", str(figures)],
                            capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    summary = "\n".join(line for line in result.stdout.splitlines() if not line.startswith("This plugin"))
    assert figures.exists(), f"no figures (exit {result.returncode}):\n{summary}\n{result.stderr[-3000:]}"
    data = json.loads(figures.read_text())
    data["summary"] = summary
    return data


def check_goals(figures: dict) -> None:
    summary = figures["summary"]
    assert figures["jobs_lost"] == 0 and figures["variants_lost"] == 0, summary
    assert figures["volume_nodes_end"] <= figures["volume_nodes_allowed"], summary
    assert figures["longest_gui_stall_ms"] <= 100.0, summary
    assert figures["rss_growth_ratio"] <= 1.5, summary
    assert figures["accepted_instances"] and all(n > 0 for n in figures["accepted_instances"]), summary
    assert len(figures["events"]) >= 6, summary  # the engine killed, offline, restart, scene closed, 2 accepts


def test_a_short_session_on_a_120_slice_ct_meets_the_goals(tmp_path):
    figures = run_session(tmp_path, "--slices", "120", "--generates", "7", "--offline", "3", "--steps", "4",
                          timeout=900)
    check_goals(figures)


@pytest.mark.slow
def test_the_hour_on_a_300_slice_ct_meets_the_goals(tmp_path):
    figures = run_session(tmp_path, "--slices", "300", timeout=3600)
    check_goals(figures)
    assert figures["generates"] == 20
