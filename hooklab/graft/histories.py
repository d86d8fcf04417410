"""Shared token histories for matched-prefix grafts: IT's greedy response under its template.

The same ids are fed to every host, and are saved with a run so that a graft run can be
repeated on exactly the same tokens.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hooklab.atomic import atomic_write_text
from hooklab.conditions import ReadSequence, build_sequences
from hooklab.errors import HooklabError
from hooklab.jsonl import jsonl_lines
from hooklab.prompts import Prompt

__all__ = [
    "History",
    "make_histories",
    "save_histories",
    "load_histories",
    "check_histories",
    "check_history_prompts",
    "prompt_digests",
    "save_sequences",
]

HISTORIES_FILE = "histories.jsonl"
SEQUENCES_DIR = "sequences"
#: conditions whose IT sequence is the shared history (IT template + IT greedy response)
HISTORY_CONDITIONS = ("same_history", "native")


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
    pair: Any,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 32,
    truncate_long_prompts: bool = False,
    progress: bool = True,
) -> list[History]:
    """IT's greedy continuation of each prompt under its chat template (teacher-forced later)."""
    sequences = build_sequences(
        pair,
        prompts,
        ["same_history"],
        max_new_tokens=max_new_tokens,
        truncate_long_prompts=truncate_long_prompts,
        progress=progress,
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


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise HooklabError(f"histories: cannot read {path} ({error}).") from None
    for number, line in jsonl_lines(text):
        try:
            record = json.loads(line)
            records.append(
                {
                    "prompt_id": str(record["prompt_id"]),
                    "tokens": tuple(int(t) for t in record["tokens"]),
                    "read_from": int(record["read_from"]),
                    "read_to": int(record["read_to"]),
                    "model": record.get("model", "it"),
                    "condition": record.get("condition", "same_history"),
                }
            )
        except (ValueError, KeyError, TypeError) as error:
            raise HooklabError(
                f"histories: {path} line {number} is not a saved history ({error!r}); "
                "pass the histories folder of a finished hooklab run, or regenerate them."
            ) from None
    return records


def load_histories(folder: str | Path) -> list[History]:
    """Histories saved by a run: ``histories.jsonl``, a graft run's ``part-*.jsonl`` files,
    or a readout run's saved sequences (IT's same-history or native sequences, which are
    the same tokens: IT's chat template and its greedy response); or one such JSONL file."""
    folder = Path(folder)
    if folder.is_file():
        paths = [folder]
    elif (folder / HISTORIES_FILE).is_file():
        paths = [folder / HISTORIES_FILE]
    elif (folder / "histories").is_dir():
        paths = sorted((folder / "histories").glob("part-*.jsonl"))
    elif (folder / SEQUENCES_DIR).is_dir():
        paths = sorted((folder / SEQUENCES_DIR).glob("part-*.jsonl"))
    else:
        paths = sorted(folder.glob("part-*.jsonl"))
    if not paths:
        raise HooklabError(
            f"histories={str(folder)!r}: no {HISTORIES_FILE}, histories/ or {SEQUENCES_DIR}/ "
            "there; pass the folder of an earlier graft or readout run."
        )
    chosen: dict[str, History] = {}
    for path in paths:
        for record in _read_jsonl(path):
            if record["model"] != "it" or record["condition"] not in HISTORY_CONDITIONS:
                continue
            history = History(
                record["prompt_id"], record["tokens"], record["read_from"], record["read_to"]
            )
            if record["condition"] == "same_history" or history.prompt_id not in chosen:
                chosen[history.prompt_id] = history
    return list(chosen.values())


def check_histories(
    histories: Sequence[History], prompt_ids: Sequence[str], *, vocab_size: int | None
) -> dict[str, History]:
    """Every prompt's history, checked (ids in the vocabulary, a non-empty read span).

    Raises:
        HooklabError: naming the prompts without a history, or the first bad history.
    """
    by_id = {h.prompt_id: h for h in histories}
    missing = [p for p in prompt_ids if p not in by_id]
    if missing:
        raise HooklabError(
            f"histories: {len(missing)} of {len(prompt_ids)} prompts have no saved history "
            f"({', '.join(missing[:5])}{'…' if len(missing) > 5 else ''}); use the histories "
            "of a run over the same prompts, or leave histories out to generate them."
        )
    for prompt_id in prompt_ids:
        history = by_id[prompt_id]
        n = len(history.tokens)
        if not 0 <= history.read_from < history.read_to <= n:
            raise HooklabError(
                f"histories: prompt {prompt_id!r} reads positions {history.read_from}.."
                f"{history.read_to} of a {n}-token history: the file is damaged; regenerate it."
            )
        if vocab_size is not None and any(not 0 <= t < vocab_size for t in history.tokens):
            bad = next(t for t in history.tokens if not 0 <= t < vocab_size)
            raise HooklabError(
                f"histories: prompt {prompt_id!r} has token id {bad}, outside this pair's "
                f"vocabulary of {vocab_size}: these histories come from another model."
            )
    return by_id


def prompt_digests(prompts: Sequence[Prompt]) -> dict[str, str]:
    """Each prompt's id -> the SHA-256 of its text (a run folder records them in run.json)."""
    return {p.id: hashlib.sha256(p.text.encode("utf-8")).hexdigest() for p in prompts}


def check_history_prompts(folder: str | Path, prompts: Sequence[Prompt]) -> None:
    """Refuse histories made from other texts under the same prompt ids.

    The run folder's ``run.json`` records each prompt's text digest (folders written before
    it did are not checked).

    Raises:
        HooklabError: naming the prompts whose text differs from the histories' prompts.
    """
    path = Path(folder) / "run.json"  # hooklab.runs.execute.RUN_FILE
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("prompt_digests")
    except (OSError, ValueError, AttributeError):
        return
    if not isinstance(recorded, dict):
        return
    ours = prompt_digests(prompts)
    changed = [i for i, digest in ours.items() if i in recorded and recorded[i] != digest]
    if changed:
        raise HooklabError(
            f"histories={str(folder)!r}: {len(changed)} prompt(s) have the same id but another "
            f"text than the run those histories came from ({', '.join(changed[:5])}"
            f"{'…' if len(changed) > 5 else ''}); pass that run's prompts, or leave histories "
            "out to generate them for these texts."
        )


def save_sequences(sequences: Sequence[ReadSequence], folder: str | Path, name: str) -> Path:
    """Write a readout's full token sequences (every condition and side) as JSONL, so that
    every row of its table can be re-derived and its IT responses reused as histories."""
    lines = [
        json.dumps(
            {
                "prompt_id": s.prompt_id,
                "condition": s.condition,
                "model": s.model,
                "tokens": list(s.tokens),
                "read_from": s.read_from,
                "read_to": s.read_to,
            }
        )
        for s in sequences
    ]
    return atomic_write_text(Path(folder) / name, "\n".join(lines) + "\n")
