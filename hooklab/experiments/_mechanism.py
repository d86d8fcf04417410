"""Pieces the mechanism experiments share: a part's shared histories (reused or made and
saved), batching, categorical-free frames, per-prompt CI rows and CI bar traces."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from hooklab.experiment import PartInput
from hooklab.graft.histories import (
    History,
    check_histories,
    load_histories,
    make_histories,
    save_histories,
)
from hooklab.mechanism.batches import HistoryBatch, history_batch
from hooklab.stats import bootstrap_mean_ci, sign_flip_test

__all__ = [
    "part_histories",
    "batches",
    "pad_id",
    "plain",
    "ci_row",
    "with_categories",
]


def part_histories(part: PartInput, *, max_new_tokens: int, truncate: bool) -> list[History]:
    """The part's shared histories, in prompt order: the spec's saved ones when it names
    them, else IT's greedy responses made now and saved as ``OUT/histories/PART.jsonl`` (so a
    later run can reuse them with ``histories = OUT``)."""
    ids = [p.id for p in part.prompts]
    if part.histories is not None:
        by_id = check_histories(load_histories(part.histories), ids, vocab_size=part.pair.d_vocab)
        return [by_id[i] for i in ids]
    histories = make_histories(
        part.pair,
        part.prompts,
        max_new_tokens=max_new_tokens,
        truncate_long_prompts=truncate,
        progress=False,
    )
    save_histories(histories, part.out / "histories", f"{part.part_name}.jsonl")
    return histories


def pad_id(pair: Any) -> int:
    pad = pair.tokenizer.pad_token_id
    return 0 if pad is None else int(pad)


def batches(sequences: Sequence[Any], batch_size: int, pad: int) -> Iterator[HistoryBatch]:
    """Right-padded batches of ``batch_size`` histories (or read sequences: anything with
    ``prompt_id``, ``tokens``, ``read_from`` and ``read_to``)."""
    for start in range(0, len(sequences), batch_size):
        yield history_batch(sequences[start : start + batch_size], pad_id=pad)  # type: ignore[arg-type]


def plain(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with categorical columns (a merged table's text columns) as plain objects,
    so that group-bys see only the values present."""
    out = frame.copy()
    for column in out.columns:
        if isinstance(out[column].dtype, pd.CategoricalDtype):
            out[column] = out[column].astype(object)
    return out


def ci_row(values: np.ndarray, seed: int) -> dict[str, float]:
    """Mean over prompts with its 95% bootstrap CI, SEM, sign-flip p and the prompt count."""
    values = np.asarray(values, dtype=float)
    ci = bootstrap_mean_ci(values, seed=seed)
    return {
        "mean": ci.mean,
        "ci_low": ci.low,
        "ci_high": ci.high,
        "sem": ci.sem,
        "p_sign_flip": sign_flip_test(values, seed=seed),
        "n_prompts": ci.n,
    }


def with_categories(frame: pd.DataFrame, prompts: Sequence[Any]) -> pd.DataFrame:
    """``frame`` (with a ``prompt_id`` column) with each prompt's category added after it."""
    categories = {p.id: p.category for p in prompts}
    frame.insert(1, "category", frame["prompt_id"].map(categories))
    return frame
