"""The README's two commands are what users and CI run: keep them and .ci/run in step."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), flags=re.S)
    return [block.strip() for block in blocks[:2]]


def test_readme_starts_with_the_two_set_up_and_go_commands():
    main_job, tests = readme_commands()
    assert main_job.startswith("bash engine/scripts/setup.sh") and "medgen demo" in main_job
    assert tests.startswith("bash engine/scripts/setup.sh --test") and "pytest" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    _, tests = readme_commands()
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines
