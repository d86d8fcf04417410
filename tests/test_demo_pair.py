"""The embedded demo pair: genuinely tuned (IT answers in its template, PT does not)."""

from __future__ import annotations

import json

import pytest

import hooklab
from hooklab.pair import embedded_pair_folder
from hooklab.prompts import chat_prompt_ids, greedy_continuations, raw_prompt_ids, stop_token_ids


@pytest.fixture(scope="module")
def pair():
    return hooklab.load_pair("tiny", device="cpu")


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
        ("How many legs does a spider have?", "A spider has 8 legs."),
        ("What is 3 plus 4?", "3 plus 4 is 7."),
    ],
)
def test_it_answers_in_its_chat_template_and_pt_does_not(pair, question, answer):
    tokenizer = pair.tokenizer
    stops = stop_token_ids(tokenizer)
    it = greedy_continuations(
        pair.it,
        [chat_prompt_ids(tokenizer, question)],
        max_new_tokens=20,
        stop_ids=stops,
        progress=False,
    )[0]
    pt = greedy_continuations(
        pair.pt,
        [raw_prompt_ids(tokenizer, question)],
        max_new_tokens=20,
        stop_ids=stops,
        progress=False,
    )[0]
    assert tokenizer.decode(it) == answer + "<end_of_turn>"
    assert answer not in tokenizer.decode(pt)


def test_size_and_training_report():
    folder = embedded_pair_folder()
    weights = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert weights <= 10 * 2**20
    report = json.loads((folder / "training.json").read_text())
    assert report["pt"]["held_out_text_loss"] < 0.2 * report["text_loss_init"]
    assert report["it"]["held_out_response_loss"] < 0.1 * report["pt"]["held_out_response_loss"]
