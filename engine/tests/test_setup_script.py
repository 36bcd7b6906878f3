"""engine/scripts/setup.sh as a new user meets it: one line per stage, one line of advice on failure,
a launcher that works, and a quick, harmless re-run. A whole fresh set-up on Debian's own (PEP 668)
Python is the slow test at the end."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "engine" / "scripts" / "setup.sh"
VENV = Path(sys.prefix)  # the environment these tests run in, made by setup.sh


def _setup(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SETUP), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env}, stdin=subprocess.DEVNULL)


def test_help_lists_the_options():
    result = _setup("--help", env={})
    assert result.returncode == 0 and "--test" in result.stdout and ".venv" in result.stdout


def test_an_unknown_option_is_refused_in_one_line(tmp_path):
    result = _setup("--tests", env={"MEDGEN_VENV": str(tmp_path / "venv")})
    assert result.returncode == 2
    assert result.stderr.strip() == "setup: unknown option --tests (use --test or nothing)"


def test_a_missing_python_ends_with_what_to_do(tmp_path):
    result = _setup(env={"MEDGEN_VENV": str(tmp_path / "venv"), "MEDGEN_PYTHON": str(tmp_path / "no-python")})
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["setup: [1/4] system packages"]
    assert result.stderr.strip().splitlines()[-1].startswith(f"setup: no {tmp_path / 'no-python'} found: install Python")


def test_an_old_python_is_named_with_the_fix(tmp_path):
    old = tmp_path / "python3.8"
    old.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'Python 3.8.10'\nexit 1\n")
    old.chmod(0o755)
    result = _setup(env={"MEDGEN_VENV": str(tmp_path / "venv"), "MEDGEN_PYTHON": str(old)})
    assert result.returncode == 1
    assert "Python 3.8.10 is too old: the engine needs Python 3.10 or newer" in result.stderr.splitlines()[-1]


@pytest.mark.skipif(not (VENV / "bin" / "medgen").exists(), reason="not running inside the set-up's environment")
def test_rerun_keeps_the_environment_and_writes_a_working_launcher(tmp_path):
    """Re-running on a machine that has everything: four stages, torch kept, a launcher that runs medgen."""
    bin_dir = tmp_path / "bin"
    result = _setup(env={"MEDGEN_VENV": str(VENV), "MEDGEN_BIN": str(bin_dir)})
    assert result.returncode == 0, result.stderr
    stages = [line for line in result.stdout.splitlines() if line.startswith("setup: [")]
    assert stages == ["setup: [1/4] system packages", f"setup: [2/4] Python environment in {VENV}",
                      "setup: [3/4] PyTorch", "setup: [4/4] the engine (medgen)"]
    assert "keeping torch" in result.stdout
    launcher = bin_dir / "medgen"
    assert launcher.is_file() and os.access(launcher, os.X_OK)
    run = subprocess.run([str(launcher), "inpaint", "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "--mask" in run.stdout


DEBIAN_PYTHON = Path("/usr/bin/python3")


def _externally_managed(python: Path) -> bool:
    if not python.exists():
        return False
    stdlib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
                            capture_output=True, text=True).stdout.strip()
    return (Path(stdlib) / "EXTERNALLY-MANAGED").exists()


@pytest.mark.slow
@pytest.mark.skipif(not _externally_managed(DEBIAN_PYTHON), reason="no PEP 668 system Python here")
def test_fresh_setup_on_debians_own_python_then_the_demo(tmp_path):
    """The README's first command on Debian's externally managed Python, in a clean checkout copy."""
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", str(REPO), str(checkout)], check=True)
    env = {**os.environ, "MEDGEN_BIN": str(tmp_path / "bin"), "MEDGEN_PYTHON": str(DEBIAN_PYTHON),
           "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    env.pop("VIRTUAL_ENV", None)
    setup = subprocess.run(["bash", "engine/scripts/setup.sh"], cwd=checkout, env=env, capture_output=True,
                           text=True, timeout=1800)
    assert setup.returncode == 0, setup.stderr
    demo = subprocess.run([shutil.which("medgen", path=env["PATH"]), "demo", "--out", str(tmp_path / "demo")],
                          env=env, capture_output=True, text=True, timeout=900)
    assert demo.returncode == 0, demo.stderr
    assert (tmp_path / "demo" / "synthetic" / "variant-01").is_dir()
