"""The README's first two commands are a new user's whole set-up; CI must run the second."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_first_command_installs_and_runs_the_main_job():
    first = _bash_blocks()[0].strip()
    assert "pip install" in first and "torch==2.13.0" in first
    assert first.endswith("hooklab demo")


def test_ci_runs_the_readme_test_command_verbatim():
    second = _bash_blocks()[1].strip()
    assert "pytest" in second and "pip install" in second
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert second in ci_lines
