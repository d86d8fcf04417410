"""Fault injection: interrupts, concurrent writers on one run folder, a full disk during merge.

Every scenario ends by comparing the merged table with one uninterrupted run's, row for row.
The runs are tiny (the tiny llama pair, 4 prompts of 1 per part, 2 new tokens).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from hooklab.atomic import atomic_write
from hooklab.cli import main
from hooklab.runs import load_spec, merge_run, run_info, run_shard, run_spec

KEYS = ["prompt_id", "condition", "model", "position", "layer"]
CODE = "import sys; from hooklab.cli import main; sys.exit(main(sys.argv[1:]))"
SPEC = """experiment = "readout"
out = "{out}"
seed = 3
[pair]
pt = "{pt}"
it = "{it}"
device = "cpu"
[prompts]
limit = 4
[readout]
conditions = ["same_history"]
max_new_tokens = 2
batch_size = 2
[execution]
part_size = 1
"""


def _cli_args(tiny, out: Path) -> list[str]:
    """The CLI command equivalent to SPEC."""
    options = {
        "pt": tiny.pt,
        "it": tiny.it,
        "device": "cpu",
        "limit": 4,
        "condition": "same_history",
        "max-new-tokens": 2,
        "batch-size": 2,
        "part-size": 1,
        "seed": 3,
        "out": out,
    }
    return ["readout", *(str(x) for k, v in options.items() for x in (f"--{k}", v))]


def _write_spec(path: Path, tiny, out: Path) -> Path:
    path.write_text(SPEC.format(out=out, pt=tiny.pt, it=tiny.it))
    return path


@pytest.fixture(scope="module")
def tiny(tiny_pair):
    return tiny_pair("llama")


@pytest.fixture(scope="module")
def parts_only(tiny, tmp_path_factory) -> Path:
    """A run whose four parts are finished, not merged (copy it before use)."""
    root = tmp_path_factory.mktemp("parts-only")
    run_spec(load_spec(_write_spec(root / "spec.toml", tiny, root / "out")), merge=False)
    assert not (root / "out" / "manifest.json").exists()
    return root / "out"


@pytest.fixture(scope="module")
def reference(parts_only, tmp_path_factory) -> Path:
    """The same run merged without faults: the folder every scenario must reproduce."""
    folder = tmp_path_factory.mktemp("reference") / "out"
    shutil.copytree(parts_only, folder)
    merge_run(folder)
    return folder


def _same_table(reference: Path, folder: Path) -> None:
    a, b = (pd.read_parquet(f / "readout.parquet") for f in (reference, folder))
    a = a.sort_values(KEYS).reset_index(drop=True)
    b = b.sort_values(KEYS).reset_index(drop=True)
    assert len(b) > 0 and not b.duplicated(KEYS).any()
    pd.testing.assert_frame_equal(a, b, check_categorical=False)


def _default_sigint() -> None:
    # a shell without job control starts background jobs with SIGINT ignored, which a child
    # inherits and Python then leaves alone: give the run the terminal's default
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CODE, *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=_default_sigint,
        **kwargs,
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.is_file():
        assert process.poll() is None, process.communicate()[1]
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def _markers(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (folder / "parts").glob("part-*.json")}


# ---------------------------------------------------------------- SIGINT


def test_sigint_exits_130_and_the_same_command_resumes(tiny, reference, tmp_path):
    out = tmp_path / "out"
    args = _cli_args(tiny, out)
    process = _start(args)
    _wait_for(out / "parts" / "part-00000.json", process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "hooklab: interrupted; rerun the same command to resume" in err
    assert "Traceback" not in err
    assert not (out / "readout.parquet").exists() and not (out / "manifest.json").exists()
    kept = _markers(out)["part-00000"]
    assert len(_markers(out)) < 4  # interrupted before the end

    again = _start(args)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    _same_table(reference, out)
    markers = _markers(out)
    assert sorted(markers) == [f"part-{i:05d}" for i in range(4)]
    assert markers["part-00000"] == kept  # finished parts are kept, not redone


# ---------------------------------------------------------------- shards at the same time


def test_two_shards_started_together_merge_to_one_run(tiny, reference, tmp_path, capsys):  # noqa: ARG001
    out = tmp_path / "out"
    spec = _write_spec(tmp_path / "spec.toml", tiny, out)
    shards = [_start(["run", spec, "--shard", f"{i}/2"]) for i in range(2)]
    for shard in shards:
        _, err = shard.communicate(timeout=300)
        assert shard.returncode == 0, err
    assert {m["shard"] for m in _markers(out).values()} == {"0/2", "1/2"}
    # the shard that finds every part done merges; `hooklab merge` builds the same again
    (out / "manifest.json").unlink(missing_ok=True)
    assert main(["merge", str(out)]) == 0
    _same_table(reference, out)


class _LiveWriter(threading.Thread):
    """Another shard's ``atomic_write`` of a part, paused half way through."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.writing, self.release = path, threading.Event(), threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        def write(temporary: str) -> None:
            Path(temporary).write_bytes(b"half")
            self.writing.set()
            assert self.release.wait(300)
            Path(temporary).write_bytes(b"whole")

        try:
            atomic_write(self.path, write)
        except BaseException as error:  # noqa: BLE001 - checked by the test
            self.error = error


def test_a_late_shard_leaves_the_running_shards_temporaries_alone(
    tiny, parts_only, reference, tmp_path
):
    out = tmp_path / "out"
    spec = load_spec(_write_spec(tmp_path / "spec.toml", tiny, out))
    parts = out / "parts"
    parts.mkdir(parents=True)
    for name in ("spec.toml", "run.json"):  # shard 0 has started the run (same identity)
        shutil.copy(parts_only / name, out / name)
    # shard 0 (parts 0 and 2) is writing part 0 and was killed once while writing part 2
    writer = _LiveWriter(parts / "part-00000.parquet")
    writer.start()
    assert writer.writing.wait(60)
    (stale_other := parts / ".part-00002.parquet.k1ll3d.tmp").write_text("shard 0's")
    (stale_own := parts / ".part-00001.parquet.k1ll3d.tmp").write_text("shard 1's")
    live = list(parts.glob(".part-00000.parquet.*.tmp"))
    assert len(live) == 1

    assert run_shard(spec, (1, 2), progress=False) == ["part-00001", "part-00003"]
    assert live[0].exists() and stale_other.exists() and not stale_own.exists()
    writer.release.set()
    writer.join(60)
    assert writer.error is None and (parts / "part-00000.parquet").read_bytes() == b"whole"
    # shard 0 starts again: its own stray temporary goes, its damaged part 0 is redone
    assert run_shard(spec, (0, 2), progress=False) == ["part-00000", "part-00002"]
    assert not list(parts.glob(".*.tmp"))
    merge_run(out)
    _same_table(reference, out)


def test_live_temporaries_are_locked(tmp_path):
    """What the test above relies on: a temporary being written holds an exclusive lock."""
    writer = _LiveWriter(tmp_path / "x.parquet")
    writer.start()
    assert writer.writing.wait(60)
    (temporary,) = tmp_path.glob(".x.parquet.*.tmp")
    fd = os.open(temporary, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
        writer.release.set()
        writer.join(60)


# ---------------------------------------------------------------- disk full during merge


class _DiskFull:
    """``os.replace`` into ``folder`` fails with ENOSPC on its ``fail_at``-th call there,
    after truncating the temporary (a write the disk could not hold)."""

    def __init__(self, folder: Path, fail_at: int | None):
        self.folder, self.fail_at, self.calls, self.targets = folder, fail_at, 0, []
        self.replace = os.replace

    def __call__(self, source, target, *args, **kwargs):
        if Path(target).parent == self.folder:
            self.calls += 1
            self.targets.append(Path(target).name)
            if self.calls == self.fail_at:
                with open(source, "rb+") as handle:
                    handle.truncate(7)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        return self.replace(source, target, *args, **kwargs)


def _merge_with_fault(monkeypatch, folder: Path, fail_at: int | None) -> _DiskFull:
    fault = _DiskFull(folder, fail_at)
    monkeypatch.setattr(os, "replace", fault)
    try:
        if fail_at is None:
            merge_run(folder)
        else:
            with pytest.raises(OSError, match="No space left on device"):
                merge_run(folder)
    finally:
        monkeypatch.setattr(os, "replace", fault.replace)
    return fault


def _no_half_files(reference: Path, folder: Path) -> None:
    """Every result file there is whole (byte-equal to the clean merge's); no temporaries."""
    assert not list(folder.glob(".*.tmp"))
    for path in folder.iterdir():
        if path.suffix in (".csv", ".parquet") and path.is_file():
            assert path.read_bytes() == (reference / path.name).read_bytes(), path.name


def test_disk_full_at_every_write_of_a_merge(parts_only, reference, tmp_path, monkeypatch, capsys):
    clean = tmp_path / "clean"
    shutil.copytree(parts_only, clean)
    writes = _merge_with_fault(monkeypatch, clean, None).targets
    assert writes[-1] == "manifest.json" and "readout.parquet" in writes  # the manifest last
    assert len(writes) >= 6  # table, manifest and the summaries, each atomic
    for fail_at in range(1, len(writes) + 1):
        folder = tmp_path / f"fail-{fail_at}"
        shutil.copytree(parts_only, folder)
        _merge_with_fault(monkeypatch, folder, fail_at)
        assert not (folder / "manifest.json").exists(), writes[fail_at - 1]
        _no_half_files(reference, folder)
        assert "not merged yet: 4 of 4 parts done" in run_info(folder)

    # a merged folder merged again: the stale manifest goes first, so a fault leaves none
    _merge_with_fault(monkeypatch, clean, 1)
    assert not (clean / "manifest.json").exists()
    _no_half_files(reference, clean)

    # the CLI: one line, exit 2; once the disk has room, the same merge succeeds
    monkeypatch.setattr(os, "replace", _DiskFull(clean, 2))
    capsys.readouterr()
    assert main(["merge", str(clean)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hooklab: error: No space left on device (") and "Traceback" not in err
    monkeypatch.undo()
    assert main(["merge", str(clean)]) == 0
    assert json.loads((clean / "manifest.json").read_text())["n_rows"] == len(
        pd.read_parquet(reference / "readout.parquet")
    )
    _same_table(reference, clean)
    _no_half_files(reference, clean)


# ---------------------------------------------------------------- the same run twice at once


def test_the_same_run_twice_at_once_on_one_folder(tiny, reference, tmp_path):
    """Two processes running the same spec on the same folder at the same time.

    What happens: both write the same ``spec.toml`` and ``run.json`` (each atomically; a
    process that finds the other's ``spec.toml`` alone takes it as its own run's), both compute
    every part that is not done when they reach it, and a part written twice is written
    atomically each time with its SHA-256 marker: the tables are the same bytes (CPU, same
    spec), so either writer's marker matches either writer's table. Both finish, both merge,
    and the merged table is an uninterrupted run's. The work may be done twice: give
    concurrent processes different shards (``--shard i/n``) instead.
    """
    out = tmp_path / "out"
    spec = _write_spec(tmp_path / "spec.toml", tiny, out)
    processes = [_start(["run", spec]) for _ in range(2)]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    _same_table(reference, out)
    assert sorted(_markers(out)) == [f"part-{i:05d}" for i in range(4)]
    assert not list((out / "parts").glob(".*.tmp")) and not list(out.glob(".*.tmp"))
    assert len(json.loads((out / "manifest.json").read_text())["parts"]) == 4


def test_a_folder_caught_between_spec_and_run_files(tiny, reference, tmp_path, capsys):
    """The window the test above can hit: the other process (or a killed one) has written
    ``spec.toml`` but not yet ``run.json``. This very spec's file is taken as the run's; any
    other ``spec.toml`` is someone else's and the folder is refused, untouched."""
    out = tmp_path / "out"
    spec_path = _write_spec(tmp_path / "spec.toml", tiny, out)
    spec = load_spec(spec_path)
    out.mkdir()
    other = spec.to_toml().replace("max_new_tokens = 2", "max_new_tokens = 3")
    (out / "spec.toml").write_text(other)
    capsys.readouterr()
    assert main(["run", str(spec_path), "--dry-run"]) == 2
    assert "is not empty and holds no hooklab run (spec.toml)" in capsys.readouterr().err
    assert (out / "spec.toml").read_text() == other and len(list(out.iterdir())) == 1
    (out / "spec.toml").write_text(spec.to_toml())
    run_spec(spec, progress=False)
    _same_table(reference, out)


def test_an_interrupt_anywhere_in_a_command_exits_130(tiny, tmp_path, monkeypatch, capsys):
    """In process, fast: typer hands Ctrl-C back as a return value, which must not become 0."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("hooklab.runs.run_spec", interrupted)
    spec = _write_spec(tmp_path / "spec.toml", tiny, tmp_path / "out")
    capsys.readouterr()
    assert main(["run", str(spec)]) == 130
    assert "hooklab: interrupted; rerun the same command to resume" in capsys.readouterr().err
