"""Prompt files: encoding errors name the line; the duplicate-id check scales linearly."""

from __future__ import annotations

import json
import time

import pytest

from hooklab.errors import HooklabError
from hooklab.prompts import load_prompts


def test_non_utf8_prompt_file_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    lines = [json.dumps({"id": "a", "text": "fine"}), json.dumps({"id": "b", "text": "also"})]
    path.write_bytes(
        ("\n".join(lines) + "\n").encode() + '{"id": "c", "text": "café"}\n'.encode("latin-1")
    )
    with pytest.raises(
        HooklabError, match=r"latin1\.jsonl, line 3: not UTF-8 .*save the prompt file as UTF-8"
    ):
        load_prompts(path)


def test_duplicate_ids_are_found_in_linear_time(tmp_path):
    n = 30_000
    path = tmp_path / "many.jsonl"
    records = [{"id": f"p{i}", "text": f"prompt {i}"} for i in range(n)]
    path.write_text("\n".join(map(json.dumps, records)) + "\n")
    start = time.perf_counter()
    assert len(load_prompts(path)) == n
    # Linear: under a second on a quiet machine; the quadratic check took 16 s (more when
    # loaded). The bound leaves room for a busy shared CPU, and still fails a quadratic check.
    assert time.perf_counter() - start < 4.0
    path.write_text("\n".join(map(json.dumps, [*records, {"id": "p7", "text": "again"}])) + "\n")
    with pytest.raises(HooklabError, match=r"repeated: \['p7'\]"):
        load_prompts(path)
