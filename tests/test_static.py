"""Static checks in the suite: ruff (lint, complexity, unused arguments) and the type checker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_ruff_passes():
    """Run as ``python -m ruff`` (a venv need not be activated); missing ruff fails."""
    result = _run(sys.executable, "-m", "ruff", "check", "hooklab", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_passes():
    """Run as ``python -m mypy``; missing mypy fails (it is in the test extra)."""
    result = _run(sys.executable, "-m", "mypy", "--config-file", "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
