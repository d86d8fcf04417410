"""Hostile text in files hooklab reads: line separators inside JSONL strings, lone
surrogates, truncated Arrow files (issue 21, items 5, 6 and 13)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from hooklab import load_prompts
from hooklab.errors import HooklabError

#: Characters str.splitlines() breaks at but JSON leaves unescaped with ensure_ascii=False.
SEPARATORS = ("\u2028", "\u2029", "\x85", "\x0c", "\x0b", "\x1c", "\x1d", "\x1e")
TEXT = "before" + "".join(SEPARATORS) + "after"


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
    return path


def test_jsonl_lines_split_on_newline_only():
    from hooklab.jsonl import jsonl_lines, parse_jsonl

    text = json.dumps({"t": TEXT}, ensure_ascii=False) + "\r\n\n  \n" + '{"t": 2}'
    assert [n for n, _ in jsonl_lines(text)] == [1, 4]
    assert [v for _, v in parse_jsonl(text, "x")] == [{"t": TEXT}, {"t": 2}]
    with pytest.raises(HooklabError, match=r"^x, line 2: not valid JSON"):
        parse_jsonl('{"a": 1}\n{"a"', "x")


def test_prompt_file_with_line_separators_in_a_text(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"id": "a", "text": TEXT}, {"id": "b", "text": "x"}])
    assert [(p.id, p.text) for p in load_prompts(path)] == [("a", TEXT), ("b", "x")]


def test_behaviour_prompts_with_line_separators(tmp_path):
    from hooklab.behaviour.prompts import load_behaviour_prompts

    record = {"id": "a", "category": "factual", "text": TEXT, "expected": "x"}
    path = _jsonl(tmp_path / "b.jsonl", [record])
    assert [p.text for p in load_behaviour_prompts(path)] == [TEXT]


def test_behave_reads_back_generations_with_line_separators(tmp_path):
    from hooklab.experiments.behave import GENERATIONS_DIR, read_generations

    folder = tmp_path / GENERATIONS_DIR
    folder.mkdir()
    records = [{"prompt_id": "a", "arm": "it", "text": TEXT}, {"prompt_id": "b", "text": "y"}]
    _jsonl(folder / "part-00000.jsonl", records)
    assert read_generations(tmp_path) == records


def test_train_lens_corpus_with_line_separators(tmp_path):
    from hooklab.cli import _read_corpus

    path = _jsonl(tmp_path / "c.jsonl", [{"text": TEXT}, {"text": "two"}])
    assert _read_corpus(path) == [TEXT, "two"]
    plain = tmp_path / "c.txt"
    plain.write_text(f"{TEXT}\nsecond\n\n", encoding="utf-8")
    assert _read_corpus(plain) == [TEXT, "second"]


@pytest.mark.parametrize("line", ['{"txt": "a"}', "[1]", "{bad"])
def test_train_lens_corpus_refuses_bad_lines_by_name(tmp_path, line, capsys):
    from hooklab.cli import main

    path = tmp_path / "c.jsonl"
    path.write_text(f'{{"text": "ok"}}\n{line}\n')
    args = ["train-lens", "--out", str(tmp_path / "lens"), "--corpus", str(path)]
    assert main([*args, "--pair", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and str(path) in err and "Traceback" not in err
    assert not (tmp_path / "lens").exists()


def test_every_jsonl_reader_uses_the_one_helper():
    root = Path(__file__).resolve().parents[1] / "hooklab"
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if ".splitlines()" in p.read_text()
        and "json.loads" in p.read_text()
        and p.name not in {"jsonl.py", "loading.py", "tuned.py", "checkpoints.py"}
    ]
    assert offenders == []


# ---------------------------------------------------------------- lone surrogates


@pytest.mark.parametrize("field", ["text", "id", "category"])
def test_a_lone_surrogate_is_refused_when_prompts_load(tmp_path, field):
    record = {"id": "a", "text": "hello", "category": "c"}
    record[field] = "bad \ud800 here"
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(record) + "\n")  # ASCII escapes: "\ud800" in the file
    with pytest.raises(HooklabError, match=r"p.jsonl, line 1.*lone surrogate '\\ud800'"):
        load_prompts(path)


def test_a_lone_surrogate_fails_the_dry_run_not_the_run(tmp_path, capsys, tiny_pair):
    from hooklab.cli import main

    tiny = tiny_pair("llama")
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "text": "x \\udc80 y"}\n')
    args = ["readout", "--pt", str(tiny.pt), "--it", str(tiny.it), "--device", "cpu"]
    status = main([*args, "--prompts", str(path), "--out", str(tmp_path / "o"), "--dry-run"])
    err = capsys.readouterr().err
    assert status == 2 and "lone surrogate" in err and "Traceback" not in err


def test_behaviour_prompt_with_a_lone_surrogate_is_refused(tmp_path):
    from hooklab.behaviour.prompts import load_behaviour_prompts

    path = tmp_path / "b.jsonl"
    path.write_text('{"id": "a", "category": "factual", "text": "\\ud800", "expected": "x"}\n')
    with pytest.raises(HooklabError, match=r"line 1, field 'text'.*lone surrogate"):
        load_behaviour_prompts(path)


# ---------------------------------------------------------------- truncated Arrow


@pytest.mark.parametrize("form", ["stream", "file"])
def test_a_truncated_arrow_prompt_file_names_the_file(tmp_path, form):
    table = pa.table({"text": [f"prompt {i}" for i in range(200)]})
    path = tmp_path / "data-00000-of-00001.arrow"
    with pa.OSFile(str(path), "wb") as sink:
        new = pa.ipc.new_stream if form == "stream" else pa.ipc.new_file
        with new(sink, table.schema) as writer:
            writer.write_table(table)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(HooklabError, match=r"data-00000-of-00001.arrow: not a readable Arrow"):
        load_prompts(path)
