"""Prompt sets and native prompt formats.

Native prompting (docs/definitions.md): the IT model sees its chat template, the PT model the
raw prompt. A chat template that writes the BOS token is tokenized without adding special
tokens again, so there is never a double BOS.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from hooklab.architectures import model_device
from hooklab.errors import HooklabError
from hooklab.prompt_files import (
    PromptColumns,
    check_unicode,
    read_rows,
    row_field,
    row_text,
    source_sha256,
)
from hooklab.types import Bridge

__all__ = [
    "Prompt",
    "load_prompts",
    "NAMED_PROMPT_SETS",
    "prompt_source_path",
    "prompt_source_sha256",
    "prompt_set_hash",
    "raw_prompt_ids",
    "chat_prompt_ids",
    "stop_token_ids",
    "end_of_turn_ids",
    "ends_turn",
    "greedy_continuations",
    "check_own_greedy",
]

#: End-of-turn markers of the six families' chat templates (used as extra stop tokens).
END_OF_TURN_TOKENS = (
    "<end_of_turn>",
    "<|eot_id|>",
    "<|im_end|>",
    "<|endoftext|>",
    "</s>",
    "<|end_of_text|>",
    "<｜end▁of▁sentence｜>",
)


#: Prompt sets shipped with hooklab, by name (files under ``data/``).
NAMED_PROMPT_SETS = {
    "builtin": "prompts.jsonl",
    "builtin-large": "prompts_large.jsonl",
    "behaviour": "behaviour/all.jsonl",
    "behaviour-tiny": "behaviour/tiny.jsonl",
}


@dataclass(frozen=True)
class Prompt:
    """One prompt: a stable id, the user's text, and an optional category."""

    id: str
    text: str
    category: str = ""


def named_prompt_set_path(name: str) -> Path:
    """The file of a built-in prompt set (:data:`NAMED_PROMPT_SETS`)."""
    entry = resources.files("hooklab.data")
    for part in NAMED_PROMPT_SETS[name].split("/"):
        entry = entry.joinpath(part)
    return Path(str(entry))


def prompt_source_path(source: str | Path | None) -> Path:
    """The file or folder a prompt source names: a built-in set's file, or the path itself."""
    name = str(source or "builtin")
    return named_prompt_set_path(name) if name in NAMED_PROMPT_SETS else Path(name)


def load_prompts(
    source: str | Path | None = None,
    *,
    columns: PromptColumns | None = None,
    format: str = "auto",
) -> list[Prompt]:
    """Prompts from a built-in set, or from a local JSONL, CSV, Parquet or Arrow file or a
    folder of them (:mod:`hooklab.prompt_files`).

    ``None`` or ``"builtin"`` gives hooklab's built-in set of 40 (``data/prompts.jsonl``),
    ``"builtin-large"`` its 240-prompt superset (``data/prompts_large.jsonl``);
    ``"behaviour"`` and ``"behaviour-tiny"`` the behaviour sets, whose ``expected`` /
    ``instructions`` fields :func:`hooklab.behaviour.load_behaviour_prompts` reads.

    ``columns`` maps the file's columns to the prompt's text, id and category (default
    ``text`` (or ``prompt``), ``id``, ``category``; other columns are ignored). A text column
    may hold a chat (a list of role / content messages): its first user message is the prompt.
    Rows without an id get ``line-N`` (JSONL) or ``row-N``; ids must be unique.
    """
    columns = columns or PromptColumns()
    path = prompt_source_path(source)
    origin = str(source or "builtin")
    prompts: list[Prompt] = []
    for where, row in read_rows(path, columns, format):
        body = row_text(row, columns)
        if not isinstance(body, str) or not body.strip():
            shown = json.dumps(row, ensure_ascii=False, default=str)[:80]
            raise HooklabError(
                f"{origin}, {where.replace('-', ' ')}: expected a non-empty {columns.text!r} "
                f"string (or a chat with a user message), got {shown!r}."
            )
        at = f"{origin}, {where.replace('-', ' ')}"
        prompts.append(
            Prompt(
                check_unicode(row_field(row, columns.id) or where, f"{at}, id"),
                check_unicode(body, f"{at}, {columns.text!r}"),
                check_unicode(row_field(row, columns.category) or "", f"{at}, category"),
            )
        )
    duplicates = sorted(i for i, n in Counter(p.id for p in prompts).items() if n > 1)
    if duplicates:
        raise HooklabError(
            f"{origin}: prompt ids must be unique; repeated: {duplicates[:5]}. Map "
            "prompts.id_column to a unique column, or leave it out for row numbers."
        )
    if not prompts:
        raise HooklabError(f"{origin}: no prompts in the file.")
    return prompts


def prompt_source_sha256(source: str | Path | None, format: str = "auto") -> str:
    """SHA-256 of the bytes of a prompt source's file(s) (:func:`prompt_files.source_sha256`)."""
    return source_sha256(prompt_source_path(source), format)


def prompt_set_hash(prompts: Sequence[Prompt]) -> str:
    """SHA-256 of the prompt set (ids, texts, categories), recorded in manifests."""
    payload = json.dumps([[p.id, p.text, p.category] for p in prompts], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def raw_prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """The PT model's native input: the raw prompt, with BOS when the tokenizer adds one."""
    return list(tokenizer(text)["input_ids"])


def chat_prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """The IT model's native input: the chat template with a generation prompt, one BOS."""
    if not getattr(tokenizer, "chat_template", None):
        raise HooklabError(
            "the IT tokenizer has no chat template, so native prompting cannot format the IT "
            "prompt; use an instruction-tuned checkpoint's tokenizer."
        )
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )
    ids = list(tokenizer(chat, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer("x")["input_ids"][:1] == [bos]
    if adds_bos and ids[:1] != [bos]:  # the template did not write BOS but the model expects it
        ids = [bos, *ids]
    return ids


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """The ids that end an assistant turn: the chat template's end-of-turn markers, or EOS for
    a vocabulary that has none (a plain document end is not an end of turn when there is one)."""
    vocab = tokenizer.get_vocab()
    ids = sorted({vocab[token] for token in END_OF_TURN_TOKENS if token in vocab})
    if not ids and tokenizer.eos_token_id is not None:
        ids = [int(tokenizer.eos_token_id)]
    return ids


def ends_turn(token_ids: Sequence[int], tokenizer: Any) -> bool:
    """Whether a generation ended its turn: its last token is one of :func:`end_of_turn_ids`.

    The one meaning of ``end_of_turn`` (``Generation.ended_with_eot``) in ``behave`` and
    ``steer``: a plain end-of-sequence token (PT's document end, ``<eos>``) is not an end of
    turn when the vocabulary has an end-of-turn marker.
    """
    return bool(token_ids) and int(token_ids[-1]) in set(end_of_turn_ids(tokenizer))


def stop_token_ids(tokenizer: Any) -> list[int]:
    """EOS plus whichever end-of-turn markers the vocabulary has."""
    vocab = tokenizer.get_vocab()
    ids = {vocab[token] for token in END_OF_TURN_TOKENS if token in vocab}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def greedy_continuations(
    model: Bridge,
    prompts_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    progress: bool = True,
    desc: str = "greedy",
) -> list[list[int]]:
    """The model's greedy continuation of each prompt, up to and including the first stop token.

    Deterministic (no sampling); at least one token per prompt.
    """
    if max_new_tokens < 1:
        raise HooklabError(f"max_new_tokens={max_new_tokens} must be at least 1.")
    hf_model: Any = model.original_model
    device = model_device(model)
    pad = stop_ids[0] if stop_ids else 0
    out: list[list[int]] = []
    for ids in tqdm(prompts_ids, desc=desc, disable=not progress, unit="prompt"):
        input_ids = torch.tensor([list(ids)], device=device)
        with torch.no_grad():
            generated = hf_model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=list(stop_ids) or None,
                pad_token_id=pad,
            )
        new = generated[0, input_ids.shape[1] :].tolist()
        for i, token in enumerate(new):
            if token in stop_ids:
                new = new[: i + 1]
                break
        check_own_greedy(model, list(ids), new)
        out.append(new)
    return out


def check_own_greedy(model: Bridge, prompt_ids: Sequence[int], response: Sequence[int]) -> None:
    """Refuse a response that is not the model's own greedy continuation of the prompt.

    One uncached forward pass of prompt + response: every response token must be the top
    token at the position before it (its teacher rank 0 at the last layer), up to the float
    rounding of its dtype (:func:`~hooklab.parity.tolerance_for`, as a margin below the top
    logit). Costs one pass per history, against one per generated token for the generation.

    Raises:
        GenerationCheckError: naming the first position where it is not, and the versions.
    """
    from hooklab.errors import GenerationCheckError
    from hooklab.parity import tolerance_for
    from hooklab.versions import stack_versions

    if not response:
        return
    tokens = torch.tensor([[*prompt_ids, *response]], device=model_device(model))
    with torch.no_grad():
        logits = model(tokens, use_cache=False)[0, len(prompt_ids) - 1 : -1].float()
    chosen = logits.gather(-1, torch.tensor(list(response), device=logits.device)[:, None])[:, 0]
    shortfall = logits.max(dim=-1).values - chosen
    limit = tolerance_for(str(model.cfg.dtype).removeprefix("torch."), float(logits.abs().max()))
    bad = (shortfall > limit).nonzero()
    if len(bad):
        step = int(bad[0])
        raise GenerationCheckError(
            f"a generated history is not the model's own greedy decoding: response token "
            f"{step} ({response[step]}) is {float(shortfall[step]):.3g} below the top logit "
            f"(limit {limit:.3g}) when the prompt and response are read again without the "
            f"KV cache ({stack_versions()}). Stopping before any result is computed on it; "
            "install the tested versions (docs/dependencies.md)."
        )
