"""Shared token histories for matched-prefix grafts: IT's greedy response under its template.

The same ids are fed to every host, and are saved with a run so that a graft run can be
repeated on exactly the same tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hooklab.atomic import atomic_write_text
from hooklab.conditions import build_sequences
from hooklab.errors import HooklabError
from hooklab.prompts import Prompt

__all__ = ["History", "make_histories", "save_histories", "load_histories"]

HISTORIES_FILE = "histories.jsonl"


@dataclass(frozen=True)
class History:
    """One prompt's shared history: the IT chat template plus IT's greedy response.

    Attributes:
        prompt_id: the prompt's id.
        tokens: the whole sequence.
        read_from: first position read (the last template token, predicting the response).
        read_to: one past the last position read.
    """

    prompt_id: str
    tokens: tuple[int, ...]
    read_from: int
    read_to: int


def make_histories(
    pair: Any, prompts: Sequence[Prompt], *, max_new_tokens: int = 32, progress: bool = True
) -> list[History]:
    """IT's greedy continuation of each prompt under its chat template (teacher-forced later)."""
    sequences = build_sequences(
        pair, prompts, ["same_history"], max_new_tokens=max_new_tokens, progress=progress
    )
    return [
        History(s.prompt_id, s.tokens, s.read_from, s.read_to) for s in sequences if s.model == "it"
    ]


def save_histories(
    histories: Sequence[History], folder: str | Path, name: str = HISTORIES_FILE
) -> Path:
    """Write ``name`` (default ``histories.jsonl``, one history per line) to ``folder``."""
    lines = [json.dumps({**asdict(h), "tokens": list(h.tokens)}) for h in histories]
    return atomic_write_text(Path(folder) / name, "\n".join(lines) + "\n")


def load_histories(folder: str | Path) -> list[History]:
    """Histories saved by :func:`save_histories`: ``histories.jsonl``, or a run's per-part
    ``part-*.jsonl`` files in order."""
    folder = Path(folder)
    if (folder / HISTORIES_FILE).is_file():
        paths = [folder / HISTORIES_FILE]
    else:
        paths = sorted(folder.glob("part-*.jsonl"))
    if not paths:
        raise HooklabError(
            f"histories={str(folder)!r}: no {HISTORIES_FILE} there; pass the "
            "histories folder of an earlier graft run."
        )
    out = []
    for path in paths:
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            out.append(
                History(
                    record["prompt_id"],
                    tuple(record["tokens"]),
                    record["read_from"],
                    record["read_to"],
                )
            )
    return out
