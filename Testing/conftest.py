"""Fixtures for the module-side tests: MedGenSlicerLib on the path, and a real engine in a child process.

The library needs only numpy, so these tests can run on Slicer's Python (3.9) while the engine runs
on its own: set MEDGEN_ENGINE_PYTHON to the engine environment's interpreter (default: this one).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "MedGenSlicer"))
ENGINE_PYTHON = os.environ.get("MEDGEN_ENGINE_PYTHON", sys.executable)


def _server_process_class():
    """The engine's stdlib-only process helper, importable even where the engine is not installed."""
    try:
        from medgen.server.process import ServerProcess
    except ImportError:
        sys.path.append(str(REPO / "engine" / "src"))
        from medgen.server.process import ServerProcess
    return ServerProcess


@pytest.fixture(scope="session")
def server_process_class():
    """`medgen.server.process.ServerProcess`, for tests that start an engine with options of their own."""
    return _server_process_class()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random-weight inpainting model, made by the engine's own command."""
    path = tmp_path_factory.mktemp("models") / "tiny-inpaint"
    subprocess.run([ENGINE_PYTHON, "-m", "medgen.cli", "model", "create-tiny", str(path)], check=True,
                   stdout=subprocess.DEVNULL)
    return path


@pytest.fixture(scope="session")
def engine(tmp_path_factory, tiny_model):
    """A running engine (queue of 2, so a full queue is easy to reach); stopped by its own pid."""
    server = _server_process_class()(
        tmp_path_factory.mktemp("engine") / "data", tiny_model, "--cpu-threads", "1", "--max-queue", "2",
        "--max-steps", "200", python=ENGINE_PYTHON,
    )
    server.start()
    yield server
    server.stop()
