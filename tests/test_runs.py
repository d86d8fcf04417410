"""Batch runs: spec validation, resume after SIGKILL, shards, corrupt parts, Ray, OOM, info."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from hooklab.cli import main
from hooklab.errors import HooklabError
from hooklab.runs import PartStore, load_spec, merge_run, plan_run, run_info, run_spec
from hooklab.runs.storage import PromptPart

KEYS = ["prompt_id", "condition", "model", "position", "layer"]


def _write_spec(path: Path, tiny, out: Path, **extra) -> Path:
    sections = {
        "pair": {"pt": str(tiny.pt), "it": str(tiny.it), "device": "cpu"},
        "prompts": {"source": "builtin", "limit": 6},
        "readout": {
            "conditions": ["same_history", "template_replay"],
            "max_new_tokens": 4,
            "batch_size": 2,
        },
        "execution": {"part_size": 2},
    }
    for key, value in extra.items():
        sections.setdefault(key, {}).update(value)
    lines = ['experiment = "readout"', f'out = "{out}"', "seed = 3"]
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny(tiny_pair):
    return tiny_pair("llama")


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """One uninterrupted run, in this process."""
    root = tmp_path_factory.mktemp("reference")
    spec = load_spec(_write_spec(root / "spec.toml", tiny, root / "out"))
    path = run_spec(spec, progress=False)
    return pd.read_parquet(path)


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    a = a.sort_values(KEYS).reset_index(drop=True)
    b = b.sort_values(KEYS).reset_index(drop=True)
    assert len(a) == len(b) and not b.duplicated(KEYS).any()
    pd.testing.assert_frame_equal(a, b, check_categorical=False)


def _parts_done(out: Path) -> int:
    return len(list((out / "parts").glob("part-*.json"))) if (out / "parts").is_dir() else 0


def _start(spec: Path) -> subprocess.Popen:
    code = "import sys; from hooklab.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, "run", str(spec)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _kill_when(process: subprocess.Popen, condition, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if condition():
            break
        time.sleep(0.02)
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait()


def test_sigkill_at_several_points_then_resume_gives_the_uninterrupted_table(
    tiny, reference, tmp_path
):
    spec = _write_spec(tmp_path / "spec.toml", tiny, tmp_path / "out")
    out = tmp_path / "out"
    # 1. killed while loading or on the first part (no part finished yet)
    _kill_when(_start(spec), lambda: (out / "run.json").is_file())
    # 2. killed right after the first part's marker appears (mid-run)
    _kill_when(_start(spec), lambda: _parts_done(out) >= 1)
    # 3. killed as soon as a second part appears (possibly mid-write of the third)
    _kill_when(_start(spec), lambda: _parts_done(out) >= 2)
    assert not (out / "readout.parquet").exists() or _parts_done(out) == 3
    finished = _start(spec)
    assert finished.wait(timeout=300) == 0
    _same(reference, pd.read_parquet(out / "readout.parquet"))
    markers = [json.loads(p.read_text()) for p in sorted((out / "parts").glob("*.json"))]
    assert [m["index"] for m in markers] == [0, 1, 2]


def test_resume_after_a_kill_between_the_run_files(tiny, reference, tmp_path):
    # Killed after run.json but before spec.toml (the order of an earlier version): resumable.
    spec = load_spec(_write_spec(tmp_path / "spec.toml", tiny, tmp_path / "out"))
    run_spec(spec, shard=(0, 3), progress=False)
    (tmp_path / "out" / "spec.toml").unlink()
    _same(reference, pd.read_parquet(run_spec(spec, progress=False)))


def test_two_shards_merge_to_one_run(tiny, reference, tmp_path):
    spec = load_spec(_write_spec(tmp_path / "spec.toml", tiny, tmp_path / "out"))
    assert run_spec(spec, shard=(1, 2), progress=False) is None  # shard 1 alone: not complete
    with pytest.raises(HooklabError, match="2 of 3 parts are missing"):
        merge_run(tmp_path / "out")
    path = run_spec(spec, shard=(0, 2), progress=False)  # completes the run, merges
    _same(reference, pd.read_parquet(path))


def test_corrupt_or_half_written_parts_are_redone(tiny, reference, tmp_path):
    spec = load_spec(_write_spec(tmp_path / "spec.toml", tiny, tmp_path / "out"))
    run_spec(spec, progress=False)
    parts = tmp_path / "out" / "parts"
    table = parts / "part-00001.parquet"
    table.write_bytes(table.read_bytes()[:100])  # truncated
    (parts / ".part-00002.parquet.x.tmp").write_bytes(b"half")  # a killed writer's file
    store = PartStore(tmp_path / "out")
    assert not store.is_done(PromptPart(1, ("instruction-02", "instruction-03")))
    with pytest.raises(HooklabError, match="missing or damaged"):
        merge_run(tmp_path / "out")
    path = run_spec(spec, progress=False)
    assert not list(parts.glob(".*.tmp"))
    _same(reference, pd.read_parquet(path))


def test_ray_executor_on_a_local_cpu_cluster(tiny, reference, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'hooklab[ray]'")
    spec = load_spec(
        _write_spec(
            tmp_path / "spec.toml",
            tiny,
            tmp_path / "out",
            execution={"executor": "ray", "shards": 2, "num_gpus": 0},
        )
    )
    try:
        path = run_spec(spec, progress=False)
    finally:
        ray.shutdown()
    _same(reference, pd.read_parquet(path))
    shards = {
        json.loads(p.read_text())["shard"] for p in (tmp_path / "out" / "parts").glob("*.json")
    }
    assert shards == {"0/2", "1/2"}


def test_out_of_memory_halves_the_batch_and_retries(tiny, reference, tmp_path, monkeypatch):
    import hooklab.experiments.readout

    real = hooklab.experiments.readout.run_readout

    def tight(pair, prompts, config, **kwargs):
        if config.batch_size > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(pair, prompts, config, **kwargs)

    monkeypatch.setattr(hooklab.experiments.readout, "run_readout", tight)
    spec = load_spec(_write_spec(tmp_path / "spec.toml", tiny, tmp_path / "out"))
    path = run_spec(spec, progress=False)
    marker = json.loads((tmp_path / "out" / "parts" / "part-00000.json").read_text())
    assert marker["batch_size"] == 1
    got = pd.read_parquet(path).sort_values(KEYS).reset_index(drop=True)
    expected = reference.sort_values(KEYS).reset_index(drop=True)
    assert torch.allclose(
        torch.tensor(got.kl_to_final.to_numpy()),
        torch.tensor(expected.kl_to_final.to_numpy()),
        atol=1e-5,
        equal_nan=True,
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"execution": {"executer": "ray"}}, "unknown key.*execution.executer.*accepts"),
        ({"readout": {"conditions": ["natve"]}}, "conditions=.natve.: accepted values are native"),
        ({"pair": {"pt": "/no/such/model"}}, "pair.pt='/no/such/model': no such folder"),
    ],
)
def test_bad_specs_are_refused_before_any_model_loads(tiny, tmp_path, monkeypatch, edit, message):
    def no_boot(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("hooklab.pair.boot_bridge", no_boot)
    path = _write_spec(tmp_path / "spec.toml", tiny, tmp_path / "out", **edit)
    with pytest.raises(HooklabError, match=message):
        run_spec(load_spec(path), progress=False)


def test_unknown_pair_and_window_outside_the_model(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr("hooklab.pair.boot_bridge", lambda *a, **k: 1 / 0)
    spec = tmp_path / "graft.toml"
    spec.write_text('experiment = "graft"\nout = "x"\n[pair]\nname = "gpt-9"\n')
    with pytest.raises(HooklabError, match="pair='gpt-9' is not a known pair name"):
        plan_run(load_spec(spec))
    spec.write_text(
        f'experiment = "graft"\nout = "x"\n[pair]\npt = "{tiny.pt}"\nit = "{tiny.it}"'
        '\n[graft]\nwindows = "late,2:9"\n'
    )
    with pytest.raises(HooklabError, match="graft.windows: window '2:9': outside the model.*0..3"):
        plan_run(load_spec(spec))
    spec.write_text('experiment = "readot"\nout = "x"\n[pair]\nname = "gemma3-4b"\n')
    with pytest.raises(HooklabError, match="experiment='readot'"):
        load_spec(spec)
    spec.write_text('experiment = "readout"\nout = "x"\nseeed = 1\n[pair]\nname = "gemma3-4b"\n')
    with pytest.raises(HooklabError, match="unknown key.*seeed"):
        load_spec(spec)


def test_another_spec_in_the_same_folder_is_refused(tiny, tmp_path):
    run_spec(load_spec(_write_spec(tmp_path / "a.toml", tiny, tmp_path / "out")), progress=False)
    other = _write_spec(tmp_path / "b.toml", tiny, tmp_path / "out", prompts={"limit": 4})
    with pytest.raises(HooklabError, match="already holds a different run"):
        run_spec(load_spec(other), progress=False)


def test_cli_write_spec_dry_run_run_and_info(tiny, tmp_path, capsys):
    args = [
        "--pt",
        str(tiny.pt),
        "--it",
        str(tiny.it),
        "--device",
        "cpu",
        "--limit",
        "4",
        "--max-new-tokens",
        "3",
        "--windows",
        "late",
        "--mode",
        "module",
    ]
    out = tmp_path / "graft"
    assert main(["graft", "--out", str(out), *args, "--write-spec", str(tmp_path / "g.toml")]) == 0
    spec = load_spec(tmp_path / "g.toml")
    assert spec.experiment == "graft" and spec.config.windows == "late"
    capsys.readouterr()
    assert main(["run", str(tmp_path / "g.toml"), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "4 prompts in 1 parts" in plan and "forward passes" in plan and "MB" in plan
    assert not out.exists()
    assert main(["run", str(tmp_path / "g.toml")]) == 0
    assert (out / "graft.parquet").is_file() and (out / "effects.csv").is_file()
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "graft run" in text and "transformer-lens" in text and "parts: 1" in text
    assert "(cpu)" in text  # the parts' hosts and devices
    assert "rows in graft.parquet" in run_info(out) and "not merged" not in run_info(out)
