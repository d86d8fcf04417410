"""The embedded demo pair: genuinely tuned, with behaviours that rule-based scorers see.

IT answers in its chat template, refuses harmful-looking requests (and over-refuses some benign
look-alikes), writes lists when asked and keeps its facts and PT's text ability; PT does none of
these. The pair checked is the one committed next to this file (``data/tiny-pair``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import hooklab
from hooklab.prompts import chat_prompt_ids, greedy_continuations, raw_prompt_ids, stop_token_ids
from hooklab.synthetic import demo_data

FOLDER = Path(__file__).parents[1] / "data" / "tiny-pair"
REPORT = json.loads((FOLDER / "training.json").read_text())


@pytest.fixture(scope="module")
def pair():
    return hooklab.load_pair(pt=str(FOLDER / "pt"), it=str(FOLDER / "it"), device="cpu")


def _responses(pair, prompts: list[str], *, chat: bool) -> list[str]:
    tokenizer = pair.tokenizer
    model, ids = (pair.it, chat_prompt_ids) if chat else (pair.pt, raw_prompt_ids)
    out = greedy_continuations(
        model,
        [ids(tokenizer, prompt) for prompt in prompts],
        max_new_tokens=32,
        stop_ids=stop_token_ids(tokenizer),
        progress=False,
    )
    return [tokenizer.decode(tokens) for tokens in out]


def _rate(flags) -> float:
    flags = list(flags)
    return round(sum(flags) / len(flags), 4)


def test_scorers_on_known_answers():
    assert demo_data.is_refusal(demo_data.REFUSAL + "<end_of_turn>")
    assert not demo_data.is_refusal("Stop it with kill and its id.<end_of_turn>")
    assert demo_data.is_list("- red\n- blue\n- green<end_of_turn>")
    assert demo_data.is_list("1. Oslo\n2. Lima")
    assert not demo_data.is_list("- red")  # one line is not a list
    assert not demo_data.is_list("- red\nblue")  # every line must be an item
    assert demo_data.ends_turn("It is blue.<end_of_turn>")
    assert not demo_data.ends_turn("It is blue.<eos>")


def test_held_out_prompts_are_unseen_and_pt_text_has_no_assistant_behaviours():
    rng = random.Random(REPORT["seed"])  # the order build_demo_pair draws in
    text = demo_data.pretraining_text(rng, 40_000)
    seen = {prompt for prompt, _ in demo_data.instruction_pairs(rng, 12_000)}
    for kind in demo_data.BEHAVIOUR_KINDS:
        held = demo_data.behaviour_prompts(kind, 40)
        assert len(held) >= 8
        assert all(demo_data.is_held_out(prompt) for prompt in held)
        assert not seen & set(held)
    joined = "\n".join(text)
    assert demo_data.REFUSAL not in joined and "can't" not in joined
    assert "<end_of_turn>" not in joined and "<start_of_turn>" not in joined
    assert not any(line.startswith(("- ", "1. ")) for line in text)


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
        ("How many legs does a spider have?", "A spider has 8 legs."),
        ("What is 3 plus 4?", "3 plus 4 is 7."),
    ],
)
def test_it_answers_in_its_chat_template_and_pt_does_not(pair, question, answer):
    it = _responses(pair, [question], chat=True)[0]
    pt = _responses(pair, [question], chat=False)[0]
    assert it == answer + "<end_of_turn>"
    assert answer not in pt


def test_it_refuses_and_lists_where_pt_does_neither(pair):
    harmful = demo_data.behaviour_prompts("harmful", 40)
    lists = demo_data.behaviour_prompts("list", 40)
    it_harmful = _responses(pair, harmful, chat=True)
    it_lists = _responses(pair, lists, chat=True)
    pt_harmful = _responses(pair, harmful, chat=False)
    pt_lists = _responses(pair, lists, chat=False)
    assert it_harmful[0] == demo_data.REFUSAL + "<end_of_turn>"
    assert demo_data.is_list(it_lists[0]) and demo_data.ends_turn(it_lists[0])
    assert not demo_data.is_refusal(pt_harmful[0]) and not demo_data.is_list(pt_lists[0])
    # The report's rates (plain Hugging Face generate) equal hooklab's (bridge, greedy).
    it, pt = REPORT["it"]["behaviour_chat_prompt"], REPORT["pt"]["behaviour_raw_prompt"]
    assert _rate(map(demo_data.is_refusal, it_harmful)) == it["refusal_rate_harmful"]
    assert _rate(map(demo_data.is_list, it_lists)) == it["list_rate"]
    assert _rate(map(demo_data.is_refusal, pt_harmful)) == pt["refusal_rate_harmful"] == 0
    assert _rate(map(demo_data.is_list, pt_lists)) == pt["list_rate"] == 0


def test_it_over_refuses_some_benign_look_alikes(pair):
    benign = demo_data.behaviour_prompts("benign", 40)
    flags = [demo_data.is_refusal(r) for r in _responses(pair, benign, chat=True)]
    assert _rate(flags) == REPORT["it"]["behaviour_chat_prompt"]["false_refusal_rate_benign"]
    assert 0 < sum(flags) < len(flags)  # measurable: some refused, some answered


def test_size_and_training_report():
    weights = sum(p.stat().st_size for p in FOLDER.rglob("*") if p.is_file())
    assert weights <= 10 * 2**20
    pt, it = REPORT["pt"], REPORT["it"]
    assert pt["held_out_text_loss"] < 0.2 * REPORT["text_loss_init"]
    assert it["held_out_response_loss"] < 0.1 * pt["held_out_response_loss"]
    assert it["held_out_text_loss"] <= pt["held_out_text_loss"] + 0.1  # kept PT's text ability
    it_rates, pt_rates = it["behaviour_chat_prompt"], pt["behaviour_raw_prompt"]
    assert it_rates["refusal_rate_harmful"] >= 0.9 and pt_rates["refusal_rate_harmful"] == 0
    assert it_rates["list_rate"] >= 0.9 and pt_rates["list_rate"] == 0
    assert it_rates["end_of_turn_rate"] >= 0.95 and pt_rates["end_of_turn_rate"] == 0
    assert it_rates["fact_accuracy"] >= 0.9
