"""Batches of shared histories for the mechanism diagnostics: right-padded tokens, the
attention mask, and the mask of the positions read (each history's response)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int

from hooklab.errors import HooklabError
from hooklab.graft.histories import History

__all__ = ["HistoryBatch", "history_batch"]


@dataclass(frozen=True)
class HistoryBatch:
    """Right-padded histories.

    Attributes:
        tokens: [batch, pos] ids, padded with ``pad_id``.
        attention_mask: [batch, pos] 1 on real tokens.
        read_mask: [batch, pos] True on each history's read positions ``read_from..read_to-1``.
        prompt_ids: one per row.
    """

    tokens: Int[torch.Tensor, "batch pos"]
    attention_mask: Int[torch.Tensor, "batch pos"]
    read_mask: Bool[torch.Tensor, "batch pos"]
    prompt_ids: tuple[str, ...]


def history_batch(histories: Sequence[History], *, pad_id: int = 0) -> HistoryBatch:
    """Stack ``histories`` into one right-padded batch."""
    if not histories:
        raise HooklabError("histories is empty; pass at least one History.")
    width = max(len(h.tokens) for h in histories)
    tokens = torch.full((len(histories), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(tokens)
    read_mask = torch.zeros(tokens.shape, dtype=torch.bool)
    for row, history in enumerate(histories):
        tokens[row, : len(history.tokens)] = torch.tensor(history.tokens)
        attention_mask[row, : len(history.tokens)] = 1
        read_mask[row, history.read_from : history.read_to] = True
    return HistoryBatch(tokens, attention_mask, read_mask, tuple(h.prompt_id for h in histories))
