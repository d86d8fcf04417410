"""Hostile and careless study and run inputs: a study out folder that is not a study, prompt
files edited between runs, dropped experiments, seeds no generator takes (issue 21, 1-4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import hooklab.viz.report
from hooklab.cli import main
from hooklab.errors import HooklabError
from hooklab.study import load_study, run_study, write_study_outputs

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

STUDY = """
[study]
name = "hostile"
out = "{out}"

[[study.pairs]]
name = "tiny"
device = "cpu"

[study.experiments.readout]
conditions = ["same_history"]
max_new_tokens = 2
{graft}
[study.prompts]
source = "prompts.jsonl"
limit = 2

[study.execution]
part_size = 2
"""
GRAFT = """
[study.experiments.graft]
windows = "late"
max_new_tokens = 2
"""


def _prompts(folder: Path, texts: list[str]) -> None:
    lines = [json.dumps({"id": f"p{i}", "text": t}) for i, t in enumerate(texts)]
    (folder / "prompts.jsonl").write_text("\n".join(lines) + "\n")


def _study(folder: Path, out: str = "out", graft: bool = True) -> Path:
    path = folder / "study.toml"
    path.write_text(STUDY.format(out=out, graft=GRAFT if graft else ""))
    return path


@pytest.fixture(autouse=True)
def _no_pair_pngs(monkeypatch):
    monkeypatch.setattr(hooklab.viz.report, "find_browser", lambda: None)


@pytest.fixture()
def finished(tmp_path):
    """A finished readout + graft study over two prompts, in ``tmp_path / "study"``."""
    folder = tmp_path / "study"
    folder.mkdir()
    _prompts(folder, ["the cat sat", "a dog ran"])
    path = _study(folder)
    run_study(load_study(path), study_file=path, progress=False)
    return folder


# ---------------------------------------------------------------- 1: a folder not a study's


def test_study_run_refuses_a_folder_that_is_not_a_study(tmp_path, capsys):
    _prompts(tmp_path, ["the cat sat"])
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("report.html", "claims.csv", "study.txt"):
        (mine / name).write_text(f"my own {name}")
    path = _study(tmp_path, out="mine")
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "holds no hooklab study" in err and "mine" in err and "Traceback" not in err
    assert sorted(p.name for p in mine.iterdir()) == ["claims.csv", "report.html", "study.txt"]
    assert (mine / "report.html").read_text() == "my own report.html"
    assert main(["study", "report", str(path)]) == 2  # report refuses it too
    assert (mine / "report.html").read_text() == "my own report.html"


def test_study_run_accepts_its_own_folder(finished):
    folder = finished
    study = load_study(folder / "study.toml")
    runs = run_study(study, study_file=folder / "study.toml", progress=False)
    assert all(r.skipped for r in runs)  # its own folder: kept


# ---------------------------------------------------------------- 2: prompts edited in place


def test_a_study_refuses_to_keep_runs_whose_prompt_file_changed(finished):
    folder = finished
    _prompts(folder, ["the cat sat", "an entirely new text"])  # same path, same ids
    study = load_study(folder / "study.toml")
    with pytest.raises(HooklabError, match="prompt file .* changed since"):
        run_study(study, study_file=folder / "study.toml", progress=False)


def test_graft_refuses_histories_of_other_texts_under_the_same_ids(finished, tmp_path, capsys):
    _prompts(tmp_path, ["the cat sat", "an entirely new text"])
    readout = finished / "out" / "tiny" / "readout"
    args = ["graft", "--pair", "tiny", "--device", "cpu", "--windows", "late"]
    args += ["--histories", str(readout), "--prompts", str(tmp_path / "prompts.jsonl")]
    assert main([*args, "--out", str(tmp_path / "g"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "another text" in err and "p1" in err and "Traceback" not in err
    _prompts(tmp_path, ["the cat sat", "a dog ran"])  # the histories' own texts: accepted
    assert main([*args, "--out", str(tmp_path / "g"), "--dry-run"]) == 0


# ---------------------------------------------------------------- 3: a dropped experiment


def test_study_report_removes_the_outputs_of_a_dropped_experiment(finished):
    folder = finished
    assert (folder / "out" / "tables" / "effects.csv").is_file()
    assert (folder / "out" / "figures" / "figure2_grafts.html").is_file()
    mine = folder / "out" / "figures" / "my_notes.html"
    mine.write_text("mine")
    _study(folder, graft=False)
    write_study_outputs(load_study(folder / "study.toml"))
    out = folder / "out"
    assert not (out / "tables" / "effects.csv").exists()
    assert not (out / "tables" / "graft_prompt_effects.csv").exists()
    assert not (out / "figures" / "figure2_grafts.html").exists()
    assert (out / "tables" / "convergence_gap.csv").is_file()  # readout's stay
    assert mine.read_text() == "mine"  # only names the study writes are removed


# ---------------------------------------------------------------- 4: seeds


@pytest.mark.parametrize("seed", ["-1", str(2**63)])
def test_a_bad_seed_is_refused_before_any_work_and_locks_nothing(tmp_path, capsys, seed):
    out = tmp_path / "run"
    args = ["readout", "--pair", "tiny", "--device", "cpu", "--limit", "1"]
    args += ["--max-new-tokens", "1", "--condition", "same_history", "--out", str(out)]
    assert main([*args, "--seed", seed]) == 2
    err = capsys.readouterr().err
    assert f"seed={seed}" in err and "Traceback" not in err
    assert not out.exists()
    assert main([*args, "--seed", "0", "--dry-run"]) == 0


def test_a_bad_seed_in_a_spec_file_is_refused(tmp_path):
    from hooklab.runs import load_spec

    path = tmp_path / "spec.toml"
    path.write_text('experiment = "readout"\nout = "o"\nseed = -3\n[pair]\nname = "tiny"\n')
    with pytest.raises(HooklabError, match="seed=-3"):
        load_spec(path)
