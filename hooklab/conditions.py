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

import warnings
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

__all__ = [
    "CONDITIONS",
    "ReadSequence",
    "build_sequences",
    "check_conditions",
    "context_length",
    "fit_prompts",
    "pad_batch",
]

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
        truncated: whether the prompt's text was cut to fit the model's context (see
            :func:`build_sequences`, ``truncate_long_prompts``).
    """

    prompt_id: str
    condition: str
    model: str
    tokens: tuple[int, ...]
    read_from: int
    read_to: int
    truncated: bool = False


def check_conditions(conditions: Sequence[str]) -> list[str]:
    """Validate condition names (error names the accepted ones)."""
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown or not conditions:
        raise HooklabError(
            f"condition={','.join(conditions) or '(none)'!s}: accepted conditions are "
            f"{', '.join(CONDITIONS)} (comma-separated for several)."
        )
    return list(dict.fromkeys(conditions))


def context_length(pair) -> int:
    """The shorter context (``cfg.n_ctx``) of the pair's two models."""
    return min(int(pair.pt.cfg.n_ctx), int(pair.it.cfg.n_ctx))


def _prompt_length(tokenizer, text: str, native: bool) -> int:
    chat = len(chat_prompt_ids(tokenizer, text))
    return max(chat, len(raw_prompt_ids(tokenizer, text))) if native else chat


def _cut_to_fit(tokenizer, prompt: Prompt, budget: int, native: bool) -> str:
    """The longest prefix of the prompt's text (in tokens) whose formatted prompt fits."""
    body = list(tokenizer(prompt.text, add_special_tokens=False)["input_ids"])
    keep = len(body) - (_prompt_length(tokenizer, prompt.text, native) - budget)
    while keep > 0:
        text = tokenizer.decode(body[:keep])
        over = _prompt_length(tokenizer, text, native) - budget
        if over <= 0 and text.strip():
            return text
        keep -= max(over, 1)
    raise HooklabError(
        f"prompt {prompt.id!r}: even without its text the formatted prompt does not fit in "
        f"{budget} tokens; lower max_new_tokens."
    )


def fit_prompts(
    pair,
    prompts: Sequence[Prompt],
    conditions: Sequence[str],
    *,
    max_new_tokens: int,
    truncate_long_prompts: bool = False,
) -> tuple[list[Prompt], set[str]]:
    """Check that every sequence fits in the models' context; optionally cut long prompts.

    A sequence is the formatted prompt (the chat template, and under ``native`` also the raw
    prompt) plus, when a condition generates, ``max_new_tokens``; it must fit in
    :func:`context_length` tokens. A prompt that does not is refused with a
    :class:`HooklabError` naming it, or with ``truncate_long_prompts`` its text is cut to the
    longest token prefix that fits (with a warning).

    Returns:
        ``(prompts, truncated)``: the prompts to use and the ids of those that were cut.
    """
    n_ctx = context_length(pair)
    generates = "native" in conditions or "same_history" in conditions
    budget = n_ctx - (max_new_tokens if generates else 0)
    if budget < 2:
        raise HooklabError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the models' "
            f"context of n_ctx={n_ctx} tokens; use a smaller max_new_tokens."
        )
    native = "native" in conditions
    out, truncated = [], set()
    for prompt in prompts:
        length = _prompt_length(pair.tokenizer, prompt.text, native)
        if length <= budget:
            out.append(prompt)
            continue
        if not truncate_long_prompts:
            needs = f" + max_new_tokens={max_new_tokens}" if generates else ""
            raise HooklabError(
                f"prompt {prompt.id!r} is {length} tokens{needs}, more than the models' context "
                f"n_ctx={n_ctx}; shorten or drop it, or pass truncate_long_prompts=True to cut "
                "long prompts to fit."
            )
        out.append(
            Prompt(prompt.id, _cut_to_fit(pair.tokenizer, prompt, budget, native), prompt.category)
        )
        truncated.add(prompt.id)
    if truncated:
        warnings.warn(
            f"{len(truncated)} prompt(s) longer than the models' context n_ctx={n_ctx} (with "
            f"max_new_tokens={max_new_tokens if generates else 0}) were cut to fit, e.g. "
            f"{sorted(truncated)[:3]}; their sequences have truncated=True.",
            stacklevel=3,
        )
    return out, truncated


def build_sequences(
    pair,
    prompts: Sequence[Prompt],
    conditions: Sequence[str],
    *,
    max_new_tokens: int = 32,
    truncate_long_prompts: bool = False,
    progress: bool = True,
) -> list[ReadSequence]:
    """Token sequences of every (prompt, condition, model), generating continuations once.

    Every sequence must fit in the models' context (``cfg.n_ctx``, see :func:`fit_prompts`): a
    longer prompt is refused with a :class:`HooklabError`, or, with
    ``truncate_long_prompts=True``, cut to fit with a warning; its sequences then have
    ``truncated=True`` (``len({s.prompt_id for s in sequences if s.truncated})`` is the number of
    truncated prompts, for a manifest).
    """
    conditions = check_conditions(conditions)
    prompts, truncated = fit_prompts(
        pair,
        prompts,
        conditions,
        max_new_tokens=max_new_tokens,
        truncate_long_prompts=truncate_long_prompts,
    )
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
    responses: list[list[int]] = it_response or []
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
                    ("it", chat[i], responses[i]),
                ):
                    tokens = (*head, *tail)
                    out.append(
                        ReadSequence(
                            prompt.id,
                            condition,
                            model,
                            tokens,
                            len(head) - 1,
                            len(tokens) - 1,
                            prompt.id in truncated,
                        )
                    )
        elif condition == "same_history":
            for i, prompt in enumerate(prompts):
                tokens = (*chat[i], *responses[i])
                for model in ("pt", "it"):
                    out.append(
                        ReadSequence(
                            prompt.id,
                            condition,
                            model,
                            tokens,
                            len(chat[i]) - 1,
                            len(tokens) - 1,
                            prompt.id in truncated,
                        )
                    )
        else:  # template_replay
            for i, prompt in enumerate(prompts):
                tokens = tuple(chat[i])
                for model in ("pt", "it"):
                    out.append(
                        ReadSequence(
                            prompt.id,
                            condition,
                            model,
                            tokens,
                            1,
                            len(tokens),
                            prompt.id in truncated,
                        )
                    )
    return out


class _Readable(Protocol):
    @property
    def tokens(self) -> tuple[int, ...]: ...
    @property
    def read_from(self) -> int: ...
    @property
    def read_to(self) -> int: ...


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
