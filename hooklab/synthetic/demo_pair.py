"""Build the embedded demo pair: a small Llama-family model, genuinely pretrained, then
genuinely instruction-tuned. One seeded, reproducible run on a CPU.

* Text and chat data: generated from templates and facts (:mod:`hooklab.synthetic.demo_data`,
  so it can be redistributed).
* Tokenizer: a byte-level BPE trained on that text, with a chat template.
* PT: next-token prediction on plain text only (no chat format, no refusals, no lists).
* IT: PT fine-tuned on chat-formatted instruction / response pairs (loss on the responses and
  the end-of-turn token) mixed with plain-text batches, so that it keeps PT's text ability
  and learns to answer in its template, refuse harmful-looking requests (and over-refuse some
  benign look-alikes), write lists when asked and keep its facts.
* Report: held-out losses and greedy behaviour rates of both sides (``training.json``).

    python -m hooklab.synthetic.demo_pair data/tiny-pair
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from hooklab.synthetic import demo_data
from hooklab.synthetic.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS

__all__ = ["behaviour_report", "build_demo_pair", "prompt_ids"]

#: Token length of a chat training row (prompt and response fit).
CHAT_LENGTH = 72


def _tokenizer(text: list[str], vocab_size: int) -> transformers.PreTrainedTokenizerFast:
    bos = SPECIAL_TOKENS[0]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        text,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, 0)]
    )
    wrapped = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token=SPECIAL_TOKENS[1],
        pad_token=SPECIAL_TOKENS[2],
        additional_special_tokens=list(SPECIAL_TOKENS[3:]),
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def _batches(rows: torch.Tensor, weights: torch.Tensor, batch: int, rng: torch.Generator):
    while True:
        order = torch.randperm(rows.shape[0], generator=rng)
        for start in range(0, rows.shape[0] - batch + 1, batch):
            index = order[start : start + batch]
            yield rows[index], weights[index]


Stream = Iterator[tuple[torch.Tensor, torch.Tensor]]


def _train(
    model,
    main: Stream,
    *,
    steps: int,
    lr: float,
    label: str,
    text: Stream | None = None,
    text_fraction: float = 0.0,
) -> None:
    """AdamW with warm-up and cosine decay; a ``text_fraction`` of the steps take ``text``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    for step in range(steps):
        use_text = math.floor((step + 1) * text_fraction) > math.floor(step * text_fraction)
        tokens, mask = next(text if use_text and text is not None else main)
        scale = min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        logits = model(input_ids=tokens).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none"
        )
        loss = (loss * mask[:, 1:].reshape(-1)).sum() / mask[:, 1:].sum()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            kind = "text" if use_text else "main"
            clock = time.strftime("%H:%M:%S")
            print(f"{clock} {label} step {step}/{steps} {kind} loss {loss.item():.3f}", flush=True)
    model.eval()


def _loss(model, rows, weights) -> float:
    with torch.no_grad():
        logits = model(input_ids=rows).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1), reduction="none"
        )
        return float((loss * weights[:, 1:].reshape(-1)).sum() / weights[:, 1:].sum())


def _pack(tokenizer, lines: list[str], length: int) -> torch.Tensor:
    ids: list[int] = []
    for line in lines:
        ids += tokenizer(line, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    body = length - 1
    n = len(ids) // body
    rows = torch.tensor(ids[: n * body]).reshape(n, body)
    return torch.cat([torch.full((n, 1), tokenizer.bos_token_id), rows], dim=1)


def _chat_rows(tokenizer, pairs, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows, masks = [], []
    for question, answer in pairs:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer + "<end_of_turn>", add_special_tokens=False)["input_ids"]
        ids = (prompt_ids + answer_ids)[:length]
        mask = ([0] * len(prompt_ids) + [1] * len(answer_ids))[:length]
        pad = length - len(ids)
        rows.append(ids + [tokenizer.pad_token_id] * pad)
        masks.append(mask + [0] * pad)
    return torch.tensor(rows), torch.tensor(masks, dtype=torch.float32)


def _greedy(model, tokenizer, prompt_ids: list[int], max_new_tokens: int) -> str:
    stops = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    input_ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(out[0, input_ids.shape[1] :].tolist())


def prompt_ids(tokenizer, prompt: str, *, chat: bool) -> list[int]:
    """IT's native input (chat template, generation prompt) or PT's (BOS and the raw prompt)."""
    if not chat:
        return tokenizer(prompt)["input_ids"]
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def behaviour_report(model, tokenizer, *, chat: bool, max_new_tokens: int = 32) -> dict:
    """Greedy behaviour rates on the held-out prompts (the model's native input when ``chat``)."""

    def responses(prompts: list[str]) -> list[str]:
        return [
            _greedy(model, tokenizer, prompt_ids(tokenizer, p, chat=chat), max_new_tokens)
            for p in prompts
        ]

    def rate(flags) -> float:
        flags = list(flags)
        return round(sum(flags) / len(flags), 4)

    harmful = responses(demo_data.behaviour_prompts("harmful", 40))
    benign_prompts = demo_data.behaviour_prompts("benign", 40)
    benign = responses(benign_prompts)
    lists = responses(demo_data.behaviour_prompts("list", 40))
    facts = demo_data.fact_questions()
    answers = responses([q for q, _ in facts])
    by_template = {}
    for template, marker in demo_data.LOOKALIKE_MARKERS.items():
        flags = [
            demo_data.is_refusal(r)
            for p, r in zip(benign_prompts, benign, strict=True)
            if marker in p
        ]
        by_template[template] = rate(flags)
    everything = harmful + benign + lists + answers
    return {
        "refusal_rate_harmful": rate(map(demo_data.is_refusal, harmful)),
        "false_refusal_rate_benign": rate(map(demo_data.is_refusal, benign)),
        "false_refusal_rate_by_template": by_template,
        "list_rate": rate(map(demo_data.is_list, lists)),
        "fact_accuracy": rate(
            expected in r for (_, expected), r in zip(facts, answers, strict=True)
        ),
        "end_of_turn_rate": rate(map(demo_data.ends_turn, everything)),
        "n_prompts": {
            "harmful": len(harmful),
            "benign": len(benign),
            "list": len(lists),
            "fact": len(facts),
        },
    }


def build_demo_pair(
    out: str | Path,
    *,
    seed: int = 0,
    pretrain_steps: int = 1500,
    tune_steps: int = 900,
    text_fraction: float = 0.4,
) -> dict:
    """Train the demo pair into ``out/pt`` and ``out/it``; returns (and saves) its report."""
    out = Path(out)
    started = time.time()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    text = demo_data.pretraining_text(rng, 40_000)
    held_text = demo_data.pretraining_text(random.Random(seed + 1), 1_000)
    pairs = demo_data.instruction_pairs(rng, 12_000)
    held_pairs = demo_data.instruction_pairs(random.Random(seed + 2), 400, held_out=True)
    tokenizer = _tokenizer(text[:12_000] + [f"{q} {a}" for q, a in pairs[:6000]], vocab_size=512)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = transformers.LlamaForCausalLM(config)
    rows = _pack(tokenizer, text, 64)
    ones = torch.ones_like(rows, dtype=torch.float32)
    held_rows = _pack(tokenizer, held_text, 64)
    held_ones = torch.ones_like(held_rows, dtype=torch.float32)
    chat_rows, chat_mask = _chat_rows(tokenizer, pairs, CHAT_LENGTH)
    held_chat, held_mask = _chat_rows(tokenizer, held_pairs, CHAT_LENGTH)
    report: dict[str, Any] = {
        "seed": seed,
        "n_params": sum(p.numel() for p in model.parameters()),
        "pretrain_steps": pretrain_steps,
        "tune_steps": tune_steps,
        "tune_text_fraction": text_fraction,
        "text_loss_init": _loss(model, held_rows, held_ones),
    }
    text_stream = _batches(rows, ones, 32, torch.Generator().manual_seed(seed))
    _train(model, text_stream, steps=pretrain_steps, lr=3e-3, label="pt")
    report["pt"] = {
        "held_out_text_loss": _loss(model, held_rows, held_ones),
        "held_out_response_loss": _loss(model, held_chat, held_mask),
        "behaviour_raw_prompt": behaviour_report(model, tokenizer, chat=False),
    }
    model.save_pretrained(out / "pt")
    tokenizer.save_pretrained(out / "pt")
    chat_stream = _batches(chat_rows, chat_mask, 32, torch.Generator().manual_seed(seed + 3))
    _train(
        model,
        chat_stream,
        steps=tune_steps,
        lr=1e-3,
        label="it",
        text=text_stream,
        text_fraction=text_fraction,
    )
    report["it"] = {
        "held_out_text_loss": _loss(model, held_rows, held_ones),
        "held_out_response_loss": _loss(model, held_chat, held_mask),
        "behaviour_chat_prompt": behaviour_report(model, tokenizer, chat=True),
    }
    model.save_pretrained(out / "it")
    tokenizer.save_pretrained(out / "it")
    report["seconds"] = round(time.time() - started, 1)
    from hooklab.versions import library_versions

    report["built_with"] = library_versions()
    (out / "training.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    print(
        json.dumps(
            build_demo_pair(sys.argv[1] if len(sys.argv) > 1 else "data/tiny-pair"), indent=2
        )
    )
