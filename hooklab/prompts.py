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
from hooklab.types import Bridge

__all__ = [
    "Prompt",
    "load_prompts",
    "prompt_set_hash",
    "raw_prompt_ids",
    "chat_prompt_ids",
    "stop_token_ids",
    "greedy_continuations",
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
_NAMED = {
    "builtin": "prompts.jsonl",
    "behaviour": "behaviour/all.jsonl",
    "behaviour-tiny": "behaviour/tiny.jsonl",
}


@dataclass(frozen=True)
class Prompt:
    """One prompt: a stable id, the user's text, and an optional category."""

    id: str
    text: str
    category: str = ""


def load_prompts(source: str | Path | None = None) -> list[Prompt]:
    """Prompts from a JSONL file (``id``, ``text`` or ``prompt``, optional ``category``; other
    fields are ignored).

    ``None`` or ``"builtin"`` gives hooklab's built-in set (``data/prompts.jsonl``);
    ``"behaviour"`` and ``"behaviour-tiny"`` the behaviour sets (``data/behaviour/all.jsonl``
    and ``tiny.jsonl``, whose ``expected`` / ``instructions`` fields
    :func:`hooklab.behaviour.load_behaviour_prompts` reads). Lines without an ``id`` get
    ``line-{n}``.
    """
    if source is None or str(source) in _NAMED:
        entry = resources.files("hooklab.data")
        for name in _NAMED[str(source or "builtin")].split("/"):
            entry = entry.joinpath(name)
        text = entry.read_text()
        origin = str(source or "builtin")
    else:
        path = Path(source)
        if not path.is_file():
            raise HooklabError(
                f"prompts={str(source)!r}: no such file. Pass a JSONL file with one "
                '{"id": ..., "text": ...} object per line, or one of "builtin", "behaviour", '
                '"behaviour-tiny".'
            )
        text, origin = _read_utf8(path), str(path)
    prompts: list[Prompt] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise HooklabError(f"{origin}, line {number}: not valid JSON ({error.msg}).") from None
        body = record.get("text", record.get("prompt")) if isinstance(record, dict) else None
        if not isinstance(body, str) or not body.strip():
            raise HooklabError(
                f'{origin}, line {number}: expected an object with a non-empty "text" (or '
                f'"prompt") string, got {line[:60]!r}.'
            )
        prompts.append(
            Prompt(str(record.get("id", f"line-{number}")), body, str(record.get("category", "")))
        )
    duplicates = sorted(i for i, n in Counter(p.id for p in prompts).items() if n > 1)
    if duplicates:
        raise HooklabError(f"{origin}: prompt ids must be unique; repeated: {duplicates[:5]}.")
    if not prompts:
        raise HooklabError(f"{origin}: no prompts in the file.")
    return prompts


def _read_utf8(path: Path) -> str:
    """The file's text, or a HooklabError naming the first line that is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise HooklabError(
            f"{path}, line {line}: not UTF-8 text (byte {data[error.start]:#04x}); save the "
            "prompt file as UTF-8."
        ) from None


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
        out.append(new)
    return out
