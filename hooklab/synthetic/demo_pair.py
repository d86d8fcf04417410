"""Build the embedded demo pair: a small Llama-family model, genuinely pretrained, then
genuinely instruction-tuned. One seeded, reproducible run on a CPU.

* Text: generated here from templates and facts (so it can be redistributed): country
  capitals, animal facts, colours, arithmetic, counting, short stories and code lines.
* Tokenizer: a byte-level BPE trained on that text, with a chat template.
* PT: next-token prediction on the text.
* IT: PT fine-tuned on chat-formatted instruction / response pairs (loss on the responses and
  the end-of-turn token), so that it follows the template and answers.

    python -m hooklab.synthetic.demo_pair data/tiny-pair
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from hooklab.synthetic.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS

__all__ = ["build_demo_pair"]

CAPITALS = {
    "France": "Paris",
    "Spain": "Madrid",
    "Italy": "Rome",
    "Germany": "Berlin",
    "Japan": "Tokyo",
    "Egypt": "Cairo",
    "Canada": "Ottawa",
    "Peru": "Lima",
    "Kenya": "Nairobi",
    "Norway": "Oslo",
    "Greece": "Athens",
    "Chile": "Santiago",
    "India": "New Delhi",
    "Poland": "Warsaw",
    "Ireland": "Dublin",
    "Portugal": "Lisbon",
}
LEGS = {"spider": 8, "dog": 4, "cat": 4, "bird": 2, "ant": 6, "horse": 4, "duck": 2, "bee": 6}
COLOURS = {
    "grass": "green",
    "sky": "blue",
    "snow": "white",
    "coal": "black",
    "blood": "red",
    "a banana": "yellow",
    "an orange": "orange",
    "a plum": "purple",
}
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana"]
PLACES = ["the market", "the river", "the hill", "the school", "the garden", "the harbour"]
THINGS = ["a book", "a kite", "some bread", "a red ball", "a small boat", "two apples"]


def _pretraining_text(rng: random.Random, n_lines: int) -> list[str]:
    lines = []
    for _ in range(n_lines):
        kind = rng.randrange(7)
        if kind == 0:
            country, city = rng.choice(list(CAPITALS.items()))
            lines.append(
                rng.choice(
                    [
                        f"The capital of {country} is {city}.",
                        f"{city} is the capital city of {country}.",
                        f"People in {country} often travel to {city}.",
                    ]
                )
            )
        elif kind == 1:
            animal, legs = rng.choice(list(LEGS.items()))
            lines.append(f"A {animal} has {legs} legs. The {animal} walks on {legs} legs.")
        elif kind == 2:
            thing, colour = rng.choice(list(COLOURS.items()))
            lines.append(f"The colour of {thing} is {colour}.")
        elif kind == 3:
            a, b = rng.randrange(10), rng.randrange(10)
            lines.append(
                rng.choice(
                    [
                        f"{a} plus {b} is {a + b}.",
                        f"{a} + {b} = {a + b}.",
                        f"{a} times {b} is {a * b}.",
                    ]
                )
            )
        elif kind == 4:
            start = rng.randrange(1, 6)
            lines.append(" ".join(str(start + i) for i in range(6)) + ".")
        elif kind == 5:
            name, place, thing = rng.choice(NAMES), rng.choice(PLACES), rng.choice(THINGS)
            lines.append(f"{name} went to {place} and found {thing}. Then {name} went home.")
        else:
            a, b = rng.randrange(10), rng.randrange(10)
            lines.append(f"def add(a, b): return a + b  # add({a}, {b}) == {a + b}")
    return lines


def _instruction_pairs(rng: random.Random, n_pairs: int) -> list[tuple[str, str]]:
    pairs = []
    for _ in range(n_pairs):
        kind = rng.randrange(5)
        if kind == 0:
            country, city = rng.choice(list(CAPITALS.items()))
            pairs.append(
                (f"What is the capital of {country}?", f"The capital of {country} is {city}.")
            )
        elif kind == 1:
            animal, legs = rng.choice(list(LEGS.items()))
            pairs.append((f"How many legs does a {animal} have?", f"A {animal} has {legs} legs."))
        elif kind == 2:
            thing, colour = rng.choice(list(COLOURS.items()))
            pairs.append((f"What colour is {thing}?", f"It is {colour}."))
        elif kind == 3:
            a, b = rng.randrange(10), rng.randrange(10)
            pairs.append((f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
        else:
            name, place, thing = rng.choice(NAMES), rng.choice(PLACES), rng.choice(THINGS)
            pairs.append(
                (
                    f"Tell me a short story about {name}.",
                    f"{name} went to {place} and found {thing}. Then {name} went home.",
                )
            )
    return pairs


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


def _train(model, rows, weights, *, steps: int, lr: float, batch: int, seed: int, label: str):
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    stream = _batches(rows, weights, batch, generator)
    model.train()
    for step in range(steps):
        tokens, mask = next(stream)
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
        if step % 100 == 0 or step == steps - 1:
            print(f"{label} step {step}/{steps} loss {loss.item():.3f}", flush=True)
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


def build_demo_pair(
    out: str | Path, *, seed: int = 0, pretrain_steps: int = 1500, tune_steps: int = 400
) -> dict:
    """Train the demo pair into ``out/pt`` and ``out/it``; returns (and saves) its report."""
    out = Path(out)
    started = time.time()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    text = _pretraining_text(rng, 40_000)
    held_text = _pretraining_text(random.Random(seed + 1), 1_000)
    pairs = _instruction_pairs(rng, 6_000)
    held_pairs = _instruction_pairs(random.Random(seed + 2), 300)
    tokenizer = _tokenizer(text + [f"{q} {a}" for q, a in pairs[:2000]], vocab_size=512)
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
    chat_rows, chat_mask = _chat_rows(tokenizer, pairs, 48)
    held_chat, held_mask = _chat_rows(tokenizer, held_pairs, 48)
    report = {
        "seed": seed,
        "n_params": sum(p.numel() for p in model.parameters()),
        "text_loss_init": _loss(model, held_rows, held_ones),
    }
    _train(model, rows, ones, steps=pretrain_steps, lr=3e-3, batch=32, seed=seed, label="pt")
    report["pt"] = {
        "held_out_text_loss": _loss(model, held_rows, held_ones),
        "held_out_response_loss": _loss(model, held_chat, held_mask),
    }
    model.save_pretrained(out / "pt")
    tokenizer.save_pretrained(out / "pt")
    _train(
        model, chat_rows, chat_mask, steps=tune_steps, lr=1e-3, batch=32, seed=seed + 3, label="it"
    )
    report["it"] = {
        "held_out_text_loss": _loss(model, held_rows, held_ones),
        "held_out_response_loss": _loss(model, held_chat, held_mask),
    }
    model.save_pretrained(out / "it")
    tokenizer.save_pretrained(out / "it")
    report["seconds"] = round(time.time() - started, 1)
    (out / "training.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    print(
        json.dumps(
            build_demo_pair(sys.argv[1] if len(sys.argv) > 1 else "data/tiny-pair"), indent=2
        )
    )
