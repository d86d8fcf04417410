"""The benchmarks run, at their smallest sizes, and their own agreement checks hold.

Timings are never asserted here (benchmarks print ratios measured in interleaved rounds); what
is checked is that each script still runs against the current API and that the fast and the
reference ways give the same numbers.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        cwd=BENCHMARKS.parent,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_lens_readout_benchmark_prints_ratios_from_interleaved_rounds():
    out = _run(
        "lens_readout.py",
        *("--d-model", "64", "--d-vocab", "1024", "--d-mlp", "64", "--layer-counts", "2,3"),
        *("--tokens", "32", "--seq-len", "16", "--rounds", "2", "--skip-memory"),
    )
    assert "round 2/2" in out
    rows = [line.split() for line in out.splitlines() if re.match(r"^\s+[23] ", line)]
    assert [row[0] for row in rows] == ["2", "3"]


def test_graft_sweep_benchmark_tables_agree():
    out = _run(
        "graft_sweep.py",
        *("--layers", "4", "--d-model", "64", "--d-vocab", "256", "--prompts", "2"),
        *("--max-new-tokens", "4", "--windows", "late,mid", "--rounds", "1"),
    )
    difference = float(re.search(r"max \|difference\| (\S+)", out).group(1))
    assert difference <= 1e-5


@pytest.mark.parametrize("mode", ["module", "splice"])
def test_study_pair_benchmark_agrees_with_transformer_lens(mode):
    out = _run(
        "study_pair.py",
        *("--layers", "4", "--d-model", "64", "--d-vocab", "256", "--prompts", "2"),
        *("--max-new-tokens", "4", "--rounds", "1", "--mode", mode, "--skip-memory"),
    )
    assert "CHECK FAILED" not in out
    difference = float(re.search(r"kl_to_final (\S+),", out).group(1))
    assert difference <= 1e-5


def test_gpu_suite_smoke_runs_every_part_on_the_cpu(tmp_path):
    """benchmarks/gpu_suite.py --smoke: the device script's every part at toy shapes, so that
    the one command a GPU machine gets cannot rot between loans."""
    import json

    _run("gpu_suite.py", "--smoke", "--out", str(tmp_path))
    results = json.loads((tmp_path / "gpu_suite.json").read_text())
    parts = [results[shape][part] for shape in ("gemma3-4b", "deepseek-v2-lite")
             for part in ("build", "readout", "graft", "behave")] + [results["study"]]  # fmt: skip
    assert not [part for part in parts if "error" in part or "skipped" in part], parts
    for shape in ("gemma3-4b", "deepseek-v2-lite"):
        assert max(results[shape]["readout"]["max_difference"].values()) <= 1e-4
        assert results[shape]["graft"]["max_difference"] <= 1e-5
    assert {run["experiment"] for run in results["study"]["runs"]} == {"readout", "graft"}
    table = (tmp_path / "gpu_suite.md").read_text()
    assert "| gemma3-4b | readout | fused |" in table and "| study | graft |" in table
