"""Every hostile input is refused before anything is written or any model loads.

Each refusal is checked through the CLI with ``--dry-run`` and without (``--dry-run`` refuses
exactly what the run would), for exit code 2, a message naming the argument, and an out folder
that was not created. Then: the corrected command works in the same folder, a folder holding
another run says what differs, folders that are not runs are left alone, relative paths in a
spec file are the file's, saved histories are checked up front, and TOML type errors and a
damaged ``run.json`` are user errors, not tracebacks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from hooklab.cli import main
from hooklab.errors import HooklabError
from hooklab.prompts import load_prompts
from hooklab.runs import load_spec, plan_run

TINY_VOCAB = 512  # the tiny llama shape's vocabulary


@pytest.fixture(scope="module")
def tiny(tiny_pair):
    return tiny_pair("llama")


@pytest.fixture
def no_models(monkeypatch):
    """Any attempt to load weights fails the test."""

    def no_boot(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("hooklab.pair.boot_bridge", no_boot)


def _cli(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def _readout_args(tiny, out: Path, *extra) -> list:
    return [
        "readout",
        "--pt",
        tiny.pt,
        "--it",
        tiny.it,
        "--device",
        "cpu",
        "--limit",
        2,
        "--max-new-tokens",
        2,
        "--condition",
        "same_history",
        "--out",
        out,
        *extra,  # later options win: each case overrides one of the above
    ]


def _bad_options(tiny_pair, tiny_checkpoint) -> dict[str, tuple[list, str]]:
    narrow = tiny_checkpoint("llama", "llama-hidden_size32", hidden_size=32)
    return {
        "dtype": (["--dtype", "float8"], r"dtype='float8' is not a model dtype"),
        "device": (["--device", "tpu"], r"device='tpu' is not a device name"),
        "lens": (["--lens", "tuned:/nope"], r"lens='tuned:/nope': no tuned lens in /nope/pt"),
        "family": (
            ["--it", tiny_pair("qwen3").it],
            r"cannot be compared as a pair:\n  architecture: pt='llama",
        ),
        "d_model": (["--it", narrow], r"d_model: pt=64  it=32"),
        "max_new_tokens": (["--max-new-tokens", 0], r"max_new_tokens=0 must be at least 1"),
        "limit0": (["--limit", 0], r"prompts.limit=0: use a number of prompts >= 1"),
        "limit-1": (["--limit", -1], r"prompts.limit=-1: use a number of prompts >= 1"),
        "part_size": (["--part-size", 0], r"execution.part_size .*must be at least 1"),
    }


CASES = ["dtype", "device", "lens", "family", "d_model", "max_new_tokens", "limit0", "limit-1"]


@pytest.mark.parametrize("case", [*CASES, "part_size"])
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_bad_options_are_refused_before_anything_is_written(
    tiny,
    tiny_pair,
    tiny_checkpoint,
    tmp_path,
    capsys,
    no_models,  # noqa: ARG001
    case,
    dry_run,  # noqa: ARG001
):
    edit, message = _bad_options(tiny_pair, tiny_checkpoint)[case]
    out = tmp_path / "out"
    args = _readout_args(tiny, out, *edit, *(["--dry-run"] if dry_run else []))
    code, err = _cli(capsys, *args)
    assert code == 2, err
    assert err.startswith("hooklab: error: ") and "Traceback" not in err
    assert re.search(message, err), err
    assert not out.exists()


def test_a_refusal_leaves_an_existing_folder_as_it_was(tiny, tmp_path, capsys, no_models):  # noqa: ARG001
    out = tmp_path / "out"
    out.mkdir()
    code, err = _cli(capsys, *_readout_args(tiny, out, "--dtype", "float8"))
    assert code == 2 and "dtype='float8'" in err
    assert list(out.iterdir()) == []


def test_corrected_command_works_and_another_run_says_what_differs(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = _cli(capsys, *_readout_args(tiny, out, "--max-new-tokens", 0))
    assert code == 2 and not out.exists()
    code, err = _cli(capsys, *_readout_args(tiny, out))  # the corrected command
    assert code == 0, err
    assert (out / "readout.parquet").is_file()
    before = sorted(p.name for p in out.rglob("*"))
    code, err = _cli(capsys, *_readout_args(tiny, out, "--max-new-tokens", 3))
    assert code == 2
    assert "already holds a different run (config.max_new_tokens: 2 there, 3 now)" in err
    code, err = _cli(capsys, *_readout_args(tiny, out, "--max-new-tokens", 3, "--limit", 3))
    assert code == 2 and "prompts.limit: 2 there, 3 now" in err and "max_new_tokens" in err
    assert sorted(p.name for p in out.rglob("*")) == before


# ---------------------------------------------------------------- out folders and spec files


def _spec_text(tiny, out: str, **sections) -> str:
    body = {
        "pair": {"pt": str(tiny.pt), "it": str(tiny.it), "device": "cpu"},
        "prompts": {"limit": 2},
        "readout": {"conditions": ["same_history"], "max_new_tokens": 2},
        "execution": {"part_size": 1},
    }
    for name, values in sections.items():
        body.setdefault(name, {}).update(values)
    lines = ['experiment = "readout"', f"out = {json.dumps(out)}"]
    for name, values in body.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("out", ["", "   "])
def test_an_empty_out_is_refused(tiny, tmp_path, out):
    path = tmp_path / "spec.toml"
    path.write_text(_spec_text(tiny, out))
    with pytest.raises(HooklabError, match="out is empty: name the run's own folder"):
        load_spec(path)


def test_a_folder_that_is_not_a_run_is_refused_and_left_untouched(
    tiny,
    tmp_path,
    capsys,
    no_models,  # noqa: ARG001
):
    out = tmp_path / "mine"
    out.mkdir()
    mine = '{"my": "own manifest"}\n'
    (out / "manifest.json").write_text(mine)
    (out / "notes.txt").write_text("keep me")
    spec = tmp_path / "spec.toml"
    spec.write_text(_spec_text(tiny, str(out)))
    for args in (["run", spec], ["run", spec, "--dry-run"], ["merge", out], ["info", out]):
        code, err = _cli(capsys, *args)
        assert code == 2 and "Traceback" not in err, (args, err)
    code, err = _cli(capsys, "run", spec)
    assert "is not empty and holds no hooklab run (" in err and "choose a new or empty" in err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "notes.txt"]
    assert (out / "manifest.json").read_text() == mine


def test_relative_paths_in_a_spec_file_are_the_files(tiny, tmp_path, monkeypatch):
    sub = tmp_path / "sub"
    sub.mkdir()
    prompts = load_prompts()[:3]
    (sub / "prompts.jsonl").write_text(
        "".join(
            json.dumps({"id": p.id, "text": p.text, "category": p.category}) + "\n" for p in prompts
        )
    )
    (sub / "spec.toml").write_text(_spec_text(tiny, "run", prompts={"source": "prompts.jsonl"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = load_spec(Path("..") / "sub" / "spec.toml")
    assert Path(spec.out) == (sub / "run").resolve()
    assert Path(spec.prompts.source) == (sub / "prompts.jsonl").resolve()
    assert [p.id for p in spec.prompts.load()] == [p.id for p in prompts][:2]
    # an --out given on the command line is the caller's, relative to the working directory
    assert Path(load_spec(sub / "spec.toml", out="mine").out) == (elsewhere / "mine").resolve()


# ---------------------------------------------------------------- saved histories


def _graft_args(tiny, out: Path, histories: Path, *extra) -> list:
    return [
        "graft",
        "--pt",
        tiny.pt,
        "--it",
        tiny.it,
        "--device",
        "cpu",
        "--limit",
        2,
        "--max-new-tokens",
        2,
        "--windows",
        "late",
        "--mode",
        "module",
        "--direction",
        "it-to-pt",
        "--histories",
        histories,
        "--out",
        out,
        *extra,
    ]


def _history_line(prompt_id: str, tokens=(1, 5, 6, 7)) -> str:
    record = {"prompt_id": prompt_id, "tokens": list(tokens), "read_from": 1, "read_to": 3}
    return json.dumps(record) + "\n"


def _histories_cases(folder: Path) -> dict[str, tuple[Path, str]]:
    first, second = (p.id for p in load_prompts()[:2])
    cases = {}
    missing = folder / "missing"
    missing.mkdir()
    (missing / "histories.jsonl").write_text(_history_line(first))
    cases["missing"] = (missing, f"1 of 2 prompts have no saved history \\({second}\\)")
    empty = folder / "empty"
    empty.mkdir()
    cases["empty"] = (empty, r"no histories.jsonl, histories/ or sequences/ there")
    corrupt = folder / "corrupt"
    corrupt.mkdir()
    (corrupt / "histories.jsonl").write_text(_history_line(first) + '{"prompt_id": "x", "tok\n')
    cases["corrupt"] = (corrupt, f"{corrupt / 'histories.jsonl'} line 2 is not a saved history")
    foreign = folder / "foreign"
    foreign.mkdir()
    (foreign / "histories.jsonl").write_text(
        _history_line(first) + _history_line(second, (1, 5, TINY_VOCAB, 7))
    )
    cases["foreign"] = (
        foreign,
        f"prompt '{second}' has token id {TINY_VOCAB}, outside this pair's vocabulary of "
        f"{TINY_VOCAB}",
    )
    return cases


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "foreign"])
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_bad_histories_are_refused_before_any_work(
    tiny,
    tmp_path,
    capsys,
    no_models,  # noqa: ARG001
    case,
    dry_run,  # noqa: ARG001
):
    histories, message = _histories_cases(tmp_path)[case]
    out = tmp_path / "out"
    args = _graft_args(tiny, out, histories, *(["--dry-run"] if dry_run else []))
    code, err = _cli(capsys, *args)
    assert code == 2 and "Traceback" not in err, err
    assert re.search(message, err), err
    assert not out.exists()


def test_a_graft_reuses_a_readout_runs_folder_as_histories(tiny, tmp_path, capsys):
    """The readout saves its sequences; a graft on them equals one that makes its own."""
    readout = tmp_path / "readout"
    code, err = _cli(capsys, *_readout_args(tiny, readout))
    assert code == 0, err
    assert sorted(p.name for p in (readout / "sequences").iterdir()) == ["part-00000.jsonl"]
    reused, fresh = tmp_path / "reused", tmp_path / "fresh"
    code, err = _cli(capsys, *_graft_args(tiny, reused, readout))
    assert code == 0, err
    code, err = _cli(capsys, *_graft_args(tiny, fresh, readout)[:-4], "--out", fresh)
    assert code == 0, err
    assert not (reused / "histories").exists() and (fresh / "histories").is_dir()
    a, b = (pd.read_parquet(folder / "graft.parquet") for folder in (reused, fresh))
    assert len(a) > 0
    pd.testing.assert_frame_equal(a, b)


# ---------------------------------------------------------------- TOML types, damaged run.json


def test_toml_type_errors_are_refused_naming_the_key(tiny, tmp_path, capsys, no_models):  # noqa: ARG001
    path = tmp_path / "spec.toml"
    path.write_text(_spec_text(tiny, "out", execution={"part_size": "2"}))
    with pytest.raises(HooklabError, match=r"execution.part_size='2': expected an integer"):
        load_spec(path)
    code, err = _cli(capsys, "run", path, "--dry-run")
    assert code == 2 and "execution.part_size='2'" in err
    path.write_text(_spec_text(tiny, "out", prompts={"limit": 1.5}))
    with pytest.raises(HooklabError, match=r"prompts.limit=1.5: expected int"):
        load_spec(path)
    assert not (tmp_path / "out").exists()


def test_one_direction_as_a_string_is_one_direction(tiny, tmp_path, no_models):  # noqa: ARG001
    path = tmp_path / "spec.toml"
    path.write_text(
        'experiment = "graft"\nout = "out"\n'
        f'[pair]\npt = "{tiny.pt}"\nit = "{tiny.it}"\ndevice = "cpu"\n'
        '[graft]\ndirections = "it-to-pt"\nmodes = "module"\n'
    )
    spec = load_spec(path)
    assert spec.config.directions == ("it-to-pt",) and spec.config.modes == ("module",)
    assert plan_run(spec).n_prompts == 40
    path.write_text(path.read_text().replace('"it-to-pt"', '"itopt"'))
    with pytest.raises(HooklabError, match=r"graft.directions='itopt': accepted values are"):
        load_spec(path)


def test_a_damaged_run_json_is_a_user_error(tiny, tmp_path, capsys, no_models):  # noqa: ARG001
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text('{"run": {"experiment": "readout", "pair"')  # truncated
    spec = tmp_path / "spec.toml"
    spec.write_text(_spec_text(tiny, str(out)))
    for args in (["run", spec], ["merge", out], ["info", out]):
        code, err = _cli(capsys, *args)
        assert code == 2, (args, err)
        assert f"{out / 'run.json'} is damaged" in err and "Traceback" not in err
