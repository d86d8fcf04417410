"""GGUF sources: what counts as one, and named errors for the ones that cannot be read."""

from __future__ import annotations

import pytest

from hooklab.errors import CheckpointUnavailableError
from hooklab.gguf import find_gguf
from hooklab.loading import resolve_source


def test_a_gguf_file_or_a_folder_holding_exactly_one_is_a_gguf_source(tmp_path):
    file = tmp_path / "one" / "model.Q4_0.gguf"
    file.parent.mkdir()
    file.write_bytes(b"GGUF")
    assert find_gguf(file, argument="it") == file
    assert find_gguf(file.parent, argument="it") == file
    (tmp_path / "one" / "config.json").write_text("{}")  # a checkpoint folder is not one
    assert find_gguf(file.parent, argument="it") is None
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.gguf").write_bytes(b"GGUF")
    (two / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(CheckpointUnavailableError, match="holds 2 GGUF files"):
        find_gguf(two, argument="it")
    assert find_gguf(tmp_path / "nothing.txt", argument="it") is None


def test_an_unreadable_gguf_file_is_a_named_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOKLAB_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(CheckpointUnavailableError, match=r"it=.*broken\.gguf.*could not be read"):
        resolve_source(bad, None, argument="it")
    # nothing half-converted is left in the cache
    assert not any((tmp_path / "cache" / "gguf").glob("*/hooklab-gguf.json"))
    assert [p.name for p in (tmp_path / "cache" / "gguf").iterdir()] == []


def test_a_file_that_is_neither_a_folder_nor_gguf_is_refused(tmp_path):
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(CheckpointUnavailableError, match="or a GGUF file"):
        resolve_source(other, None, argument="pt")
