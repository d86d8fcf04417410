"""The token sequences each condition reads (docs/definitions.md, "Conditions").

* ``native``: each model on its own prompt format (IT: chat template; PT: raw prompt) and its
  own greedy continuation; read at the positions that predict the continuation.
* ``same_history``: one fixed sequence for both models, the IT chat template plus IT's greedy
  response; read at the positions that predict the response.
* ``template_replay``: the IT chat-templated prompt alone, replayed through both models; read
  at every position after the first token.

Every read position has a target: the next token of the sequence (-1 at the very last one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from hooklab.errors import HooklabError
from hooklab.prompts import (
    Prompt,
    chat_prompt_ids,
    greedy_continuations,
    raw_prompt_ids,
    stop_token_ids,
)

__all__ = ["CONDITIONS", "ReadSequence", "build_sequences", "check_conditions", "pad_batch"]

CONDITIONS = ("native", "same_history", "template_replay")


@dataclass(frozen=True)
class ReadSequence:
    """One model's input for one prompt and condition, and which positions to read.

    Attributes:
        prompt_id: the prompt's id.
        condition: one of :data:`CONDITIONS`.
        model: ``"pt"`` or ``"it"``.
        tokens: the full token sequence.
        read_from: first position read.
        read_to: one past the last position read.
    """

    prompt_id: str
    condition: str
    model: str
    tokens: tuple[int, ...]
    read_from: int
    read_to: int

    def target(self, position: int) -> int:
        """The next token after ``position``, or -1 at the end."""
        return self.tokens[position + 1] if position + 1 < len(self.tokens) else -1


def check_conditions(conditions: Sequence[str]) -> list[str]:
    """Validate condition names (error names the accepted ones)."""
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown or not conditions:
        raise HooklabError(
            f"condition={','.join(conditions) or '(none)'!s}: accepted conditions are "
            f"{', '.join(CONDITIONS)} (comma-separated for several)."
        )
    return list(dict.fromkeys(conditions))


def build_sequences(
    pair,
    prompts: Sequence[Prompt],
    conditions: Sequence[str],
    *,
    max_new_tokens: int = 32,
    progress: bool = True,
) -> list[ReadSequence]:
    """Token sequences of every (prompt, condition, model), generating continuations once."""
    conditions = check_conditions(conditions)
    tokenizer = pair.tokenizer
    stops = stop_token_ids(tokenizer)
    chat = [chat_prompt_ids(tokenizer, p.text) for p in prompts]
    need_it_response = "native" in conditions or "same_history" in conditions
    it_response = (
        greedy_continuations(
            pair.it,
            chat,
            max_new_tokens=max_new_tokens,
            stop_ids=stops,
            progress=progress,
            desc="IT responses",
        )
        if need_it_response
        else None
    )
    out: list[ReadSequence] = []
    for condition in conditions:
        if condition == "native":
            raw = [raw_prompt_ids(tokenizer, p.text) for p in prompts]
            pt_continuation = greedy_continuations(
                pair.pt,
                raw,
                max_new_tokens=max_new_tokens,
                stop_ids=stops,
                progress=progress,
                desc="PT continuations",
            )
            for i, prompt in enumerate(prompts):
                for model, head, tail in (
                    ("pt", raw[i], pt_continuation[i]),
                    ("it", chat[i], it_response[i]),
                ):
                    tokens = (*head, *tail)
                    out.append(
                        ReadSequence(
                            prompt.id, condition, model, tokens, len(head) - 1, len(tokens) - 1
                        )
                    )
        elif condition == "same_history":
            for i, prompt in enumerate(prompts):
                tokens = (*chat[i], *it_response[i])
                for model in ("pt", "it"):
                    out.append(
                        ReadSequence(
                            prompt.id, condition, model, tokens, len(chat[i]) - 1, len(tokens) - 1
                        )
                    )
        else:  # template_replay
            for i, prompt in enumerate(prompts):
                tokens = tuple(chat[i])
                for model in ("pt", "it"):
                    out.append(ReadSequence(prompt.id, condition, model, tokens, 1, len(tokens)))
    return out


class _Readable(Protocol):
    tokens: tuple[int, ...]
    read_from: int
    read_to: int


def pad_batch(
    batch: Sequence[_Readable], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad sequences into ``(tokens, attention_mask, read_mask, targets)``, each
    [batch, pos]; targets are the next token (-1 where there is none)."""
    length = max(len(s.tokens) for s in batch)
    tokens = torch.full((len(batch), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    read = torch.zeros((len(batch), length), dtype=torch.bool)
    targets = torch.full((len(batch), length), -1, dtype=torch.long)
    for i, seq in enumerate(batch):
        n = len(seq.tokens)
        tokens[i, :n] = torch.tensor(seq.tokens)
        mask[i, :n] = 1
        read[i, seq.read_from : seq.read_to] = True
        targets[i, : n - 1] = torch.tensor(seq.tokens[1:])
    return tokens, mask, read, targets
