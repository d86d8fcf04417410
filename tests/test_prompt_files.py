"""Prompt sets from JSONL / CSV / Parquet / Arrow files with a column mapping."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hooklab import load_prompts
from hooklab.errors import HooklabError
from hooklab.prompt_files import PromptColumns
from hooklab.prompts import prompt_set_hash, prompt_source_sha256
from hooklab.runs.spec import PromptSpec

ROWS = pd.DataFrame(
    {
        "instruction": ["Say hello.", "Count to three.", "Name a colour."],
        "uid": [101, 102, 103],
        "kind": ["greeting", None, "colour"],
        "unused": [1.5, 2.5, 3.5],
    }
)
MAPPING = PromptColumns(text="instruction", id="uid", category="kind")
EXPECTED = [
    ("101", "Say hello.", "greeting"),
    ("102", "Count to three.", ""),
    ("103", "Name a colour.", "colour"),
]


def _write(tmp_path, fmt):
    if fmt == "csv":
        path = tmp_path / "p.csv"
        ROWS.to_csv(path, index=False)
    elif fmt == "parquet":
        path = tmp_path / "p.parquet"
        ROWS.to_parquet(path)
    elif fmt == "jsonl":
        path = tmp_path / "p.jsonl"
        path.write_text(ROWS.to_json(orient="records", lines=True))
    else:  # a Hugging Face Dataset.save_to_disk folder: Arrow IPC stream + metadata files
        path = tmp_path / "saved"
        path.mkdir()
        table = pa.Table.from_pandas(ROWS, preserve_index=False)
        with pa.OSFile(str(path / "data-00000-of-00001.arrow"), "wb") as sink:
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
        (path / "state.json").write_text("{}")
        (path / "dataset_info.json").write_text("{}")
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "arrow"])
def test_every_format_gives_the_same_prompts_through_the_mapping(tmp_path, fmt):
    prompts = load_prompts(_write(tmp_path, fmt), columns=MAPPING)
    assert [(p.id, p.text, p.category) for p in prompts] == EXPECTED


def test_a_folder_of_parquet_shards_is_read_in_path_order(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    pq.write_table(pa.Table.from_pandas(ROWS.iloc[2:], preserve_index=False), folder / "b.parquet")
    pq.write_table(pa.Table.from_pandas(ROWS.iloc[:2], preserve_index=False), folder / "a.parquet")
    prompts = load_prompts(folder, columns=MAPPING)
    assert [(p.id, p.text, p.category) for p in prompts] == EXPECTED


def test_chat_column_gives_the_first_user_message(tmp_path):
    chats = pd.DataFrame(
        {
            "messages": [
                [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
                [{"role": "user", "content": "First."}, {"role": "assistant", "content": "x"}],
            ]
        }
    )
    chats.to_parquet(tmp_path / "c.parquet")
    prompts = load_prompts(tmp_path / "c.parquet", columns=PromptColumns(text="messages"))
    assert [(p.id, p.text) for p in prompts] == [("row-0", "Hi?"), ("row-1", "First.")]


def test_default_jsonl_columns_still_accept_prompt_and_line_ids(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"id": "x", "text": "b", "category": "c"}\n')
    prompts = load_prompts(path)
    assert [(p.id, p.text, p.category) for p in prompts] == [("line-1", "a", ""), ("x", "b", "c")]


def test_missing_text_column_names_the_columns_and_the_option(tmp_path):
    path = _write(tmp_path, "csv")
    with pytest.raises(HooklabError, match=r"no column 'text'.*instruction.*text_column"):
        load_prompts(path)
    with pytest.raises(HooklabError, match=r"no column 'nope'.*id_column"):
        load_prompts(path, columns=PromptColumns(text="instruction", id="nope"))


def test_empty_text_row_and_duplicate_ids_are_named(tmp_path):
    rows = ROWS.assign(instruction=["ok", "", "ok too"])
    rows.to_parquet(tmp_path / "p.parquet")
    with pytest.raises(HooklabError, match=r"row 1: expected a non-empty 'instruction'"):
        load_prompts(tmp_path / "p.parquet", columns=MAPPING)
    ROWS.assign(uid=[1, 1, 2]).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(HooklabError, match=r"unique; repeated: \['1'\]"):
        load_prompts(tmp_path / "d.csv", columns=MAPPING)


def test_unknown_suffix_mixed_folder_and_corrupt_parquet_are_refused(tmp_path):
    (tmp_path / "p.txt").write_text("hello")
    with pytest.raises(HooklabError, match=r"suffix '\.txt'.*prompts\.format"):
        load_prompts(tmp_path / "p.txt")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    ROWS.to_csv(mixed / "a.csv", index=False)
    ROWS.to_parquet(mixed / "b.parquet")
    with pytest.raises(HooklabError, match="mixes formats"):
        load_prompts(mixed, columns=MAPPING)
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(HooklabError, match="not a readable Parquet file"):
        load_prompts(tmp_path / "bad.parquet")
    with pytest.raises(HooklabError, match="no such file or folder"):
        load_prompts(tmp_path / "absent.parquet")


def test_source_hash_follows_the_bytes_and_prompt_hash_the_prompts(tmp_path):
    path = _write(tmp_path, "csv")
    before_file, before_set = (
        prompt_source_sha256(path),
        prompt_set_hash(load_prompts(path, columns=MAPPING)),
    )
    ROWS.assign(unused=[9.0, 9.0, 9.0]).to_csv(path, index=False)  # other column changed
    assert prompt_source_sha256(path) != before_file
    assert prompt_set_hash(load_prompts(path, columns=MAPPING)) == before_set


def test_prompt_spec_shuffle_is_seeded_and_limit_takes_a_sample():
    spec = PromptSpec(source="builtin-large", shuffle_seed=3, limit=20)
    first, again = spec.load(), spec.load()
    assert [p.id for p in first] == [p.id for p in again]
    assert [p.id for p in first] != [p.id for p in PromptSpec("builtin-large", limit=20).load()]
    assert len(first) == 20
    provenance = spec.provenance()
    assert provenance["path"].endswith("prompts_large.jsonl") and len(provenance["sha256"]) == 64


def test_builtin_large_is_a_240_prompt_superset_of_builtin():
    small, large = load_prompts("builtin"), load_prompts("builtin-large")
    assert len(large) >= 200
    counts = Counter(p.category for p in large)
    assert set(counts) == {p.category for p in small} and min(counts.values()) >= 40
    by_id = {p.id: p for p in large}
    assert all(by_id[p.id] == p for p in small)
    assert len({p.text for p in large}) == len(large)


def test_run_manifest_records_the_source_hash(tmp_path):
    from hooklab import ReadoutConfig
    from hooklab.runs import ExecutionSpec, PairSpec, RunSpec, run_spec

    path = tmp_path / "p.csv"
    ROWS.to_csv(path, index=False)
    spec = RunSpec(
        experiment="readout",
        out=str(tmp_path / "run"),
        pair=PairSpec(name="tiny"),
        prompts=PromptSpec(source=str(path), text_column="instruction", id_column="uid", limit=2),
        execution=ExecutionSpec(part_size=2),
        config=ReadoutConfig(conditions=("template_replay",)),
    )
    run_spec(spec, progress=False)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["prompt_source"] == {
        "path": str(path.resolve()),
        "sha256": prompt_source_sha256(path),
    }
    assert manifest["n_prompts"] == 2
