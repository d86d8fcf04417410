"""The command line tried as a new user would (issue 21, items 17 and 18): specs written
where one stands and read from anywhere, help that says what it means, progress bars that
say what they count, a finished run kept in so many words."""

from __future__ import annotations

import re

import pytest

from hooklab.cli import main

RUN = ["readout", "--pair", "tiny", "--device", "cpu", "--limit", "1", "--max-new-tokens", "1"]


def test_a_spec_written_with_relative_paths_runs_from_anywhere(tmp_path, monkeypatch, capsys):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    (work / "p.jsonl").write_text('{"id": "a", "text": "hello there"}\n')
    assert main([*RUN, "--prompts", "p.jsonl", "--out", "runs/r"]) == 0
    spec = work / "runs" / "r" / "spec.toml"
    text = spec.read_text()
    assert f'out = "{work / "runs" / "r"}"' in text and str(work / "p.jsonl") in text
    capsys.readouterr()
    monkeypatch.chdir(elsewhere)
    for command in (["run", str(spec), "--dry-run"], ["run", str(spec)]):
        assert main(command) == 0
    assert not (work / "runs" / "r" / "runs").exists() and not list(elsewhere.iterdir())
    printed = capsys.readouterr().out
    assert str(work / "runs" / "r") in printed


def test_the_demos_spec_files_run_from_where_they_lie(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--limit", "1"]) == 0  # out = hooklab-demo, relative
    capsys.readouterr()
    monkeypatch.chdir(tmp_path / "hooklab-demo")  # anywhere else
    for run in ("readout", "graft"):
        spec = tmp_path / "hooklab-demo" / run / "spec.toml"
        assert main(["run", str(spec)]) == 0
        assert capsys.readouterr().out.startswith(f"kept {tmp_path / 'hooklab-demo' / run}")
    assert not (tmp_path / "hooklab-demo" / "hooklab-demo").exists()


def test_write_spec_writes_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "specs").mkdir()
    (tmp_path / "p.jsonl").write_text('{"id": "a", "text": "hi"}\n')
    args = [*RUN, "--prompts", "p.jsonl", "--out", "runs/r", "--write-spec", "specs/s.toml"]
    assert main(args) == 0
    text = (tmp_path / "specs" / "s.toml").read_text()
    assert str(tmp_path / "runs" / "r") in text and str(tmp_path / "p.jsonl") in text


def test_a_second_run_of_a_finished_spec_says_it_kept_the_run(tmp_path, capsys):
    out = tmp_path / "r"
    assert main([*RUN, "--out", str(out)]) == 0
    table = out / "readout.parquet"
    before = table.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["run", str(out / "spec.toml")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"kept {out}") and "wrote" not in printed
    assert table.stat().st_mtime_ns == before


# ---------------------------------------------------------------- help texts and labels


def _help(*command: str, capsys) -> str:
    assert main([*command, "--help"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["plan", "run", "report"])
def test_study_help_names_the_study_table(capsys, command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    text = _help("study", command, capsys=capsys)
    assert "TOML with a [study] table" in text


def test_help_shows_no_value_for_flags_and_the_demo_device_default_once(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    demo = _help("demo", capsys=capsys)
    assert "cuda if any" not in demo and "[default: cpu]" in demo
    for command in (("demo",), ("readout",), ("study", "plan")):
        text = _help(*command, capsys=capsys)
        assert "<bool>" not in text
        assert re.search(r"--help\s+Show this message", text)


def test_weight_change_offers_no_prompt_options(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    text = _help("weight-change", capsys=capsys)
    assert "--prompts" not in text and "--limit" not in text


def test_one_behaviour_set_has_one_name_for_prompts_and_prompt_set():
    from hooklab import load_behaviour_prompts, load_prompts

    for name in ("behaviour-tiny", "behaviour"):
        assert [p.id for p in load_behaviour_prompts(name)] == [p.id for p in load_prompts(name)]


def test_progress_bars_say_which_experiment_and_side(tmp_path, monkeypatch):
    import hooklab.lens.training
    import hooklab.runs.execute

    labels = []

    def recording(tqdm):
        def make(*args, **kwargs):
            labels.append(kwargs.get("desc"))
            return tqdm(*args, **kwargs)

        return make

    monkeypatch.setattr(hooklab.runs.execute, "tqdm", recording(hooklab.runs.execute.tqdm))
    monkeypatch.setattr(hooklab.lens.training, "tqdm", recording(hooklab.lens.training.tqdm))
    assert main([*RUN, "--out", str(tmp_path / "native")]) == 0
    assert labels == ["readout native, shard 0/1"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the cat sat on mat {i}" for i in range(40)))
    args = ["train-lens", "--pair", "tiny", "--device", "cpu", "--out", str(tmp_path / "lens")]
    args += ["--corpus", str(corpus), "--token-budget", "32", "--seq-len", "8"]
    assert main([*args, "--batch-size", "2"]) == 0
    assert labels[1:] == ["tuned lens, pt", "tuned lens, it"]
