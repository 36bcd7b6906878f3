"""`--threads N` and MEDGEN_THREADS set torch's intra-op threads once at start-up, for every command and
the server; `medgen batch --ray` workers default to one thread each (they share the node's cores)."""

import os
import subprocess
import sys

import pytest

from medgen.threads import THREADS_ENV, threads_wanted

# The real entry point, then the thread count the process was left with.
PROBE = "import sys, torch; from medgen.cli import main; code = main(sys.argv[1:]); print('THREADS', torch.get_num_threads(), code)"


def run_medgen(args, *, omp: str, medgen_threads: str | None = None) -> subprocess.CompletedProcess:
    """`medgen ARGS` in a fresh process whose torch default is OMP_NUM_THREADS=omp."""
    env = {k: v for k, v in os.environ.items() if k != THREADS_ENV}
    env["OMP_NUM_THREADS"] = omp
    if medgen_threads is not None:
        env[THREADS_ENV] = medgen_threads
    return subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300)


def threads_of(result: subprocess.CompletedProcess) -> int:
    line = next((l for l in result.stdout.splitlines() if l.startswith("THREADS ")), None)
    assert line is not None, result.stderr
    _, threads, code = line.split()
    assert code == "0", result.stderr
    return int(threads)


def test_threads_option_sets_torch_threads_before_or_after_the_command(tmp_path):
    if threads_of(run_medgen(["model", "create-tiny", tmp_path / "a"], omp="2")) != 2:  # torch's default here
        pytest.skip("torch takes fewer than 2 threads on this machine")
    assert threads_of(run_medgen(["--threads", "1", "model", "create-tiny", tmp_path / "b"], omp="2")) == 1
    assert threads_of(run_medgen(["model", "create-tiny", tmp_path / "c", "--threads", "1"], omp="2")) == 1


def test_medgen_threads_environment_variable_sets_torch_threads(tmp_path):
    assert threads_of(run_medgen(["model", "create-tiny", tmp_path / "a"], omp="1", medgen_threads="2")) == 2
    # the option wins over the variable
    assert threads_of(run_medgen(["--threads", "1", "model", "create-tiny", tmp_path / "b"], omp="3",
                                 medgen_threads="2")) == 1


def test_a_bad_medgen_threads_is_a_one_line_error(tmp_path):
    result = run_medgen(["model", "create-tiny", tmp_path / "a"], omp="1", medgen_threads="many")
    assert "THREADS 1 2" in result.stdout
    assert f"medgen: error: {THREADS_ENV} must be a whole number >= 1, got 'many'" in result.stderr
    assert not (tmp_path / "a").exists()


def test_server_takes_threads_and_keeps_cpu_threads_as_an_alias():
    from medgen.server.main import build_parser

    parser = build_parser()
    assert parser.parse_args(["--threads", "2"]).threads == 2
    assert parser.parse_args(["--cpu-threads", "3"]).threads == 3


def test_ray_workers_default_to_one_thread_unless_told(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert threads_wanted(None, shared=True) == 1
    assert threads_wanted(None) is None  # a lone process keeps torch's default
    assert threads_wanted(4, shared=True) == 4
    monkeypatch.setenv(THREADS_ENV, "2")
    assert threads_wanted(None, shared=True) == 2
