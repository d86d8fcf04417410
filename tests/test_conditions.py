"""Sequences longer than the models' context: refused by default, or cut to fit and counted."""

from __future__ import annotations

import pytest

import hooklab
from hooklab.conditions import build_sequences, context_length
from hooklab.errors import HooklabError
from hooklab.prompts import Prompt, chat_prompt_ids


@pytest.fixture(scope="module")
def pair():
    return hooklab.load_pair("tiny")


def _prompts(pair) -> list[Prompt]:
    long_text = " ".join(f"word{i}" for i in range(2 * context_length(pair)))
    return [Prompt("short", "What is 2 + 2?"), Prompt("long", long_text)]


def test_a_prompt_longer_than_the_context_is_refused(pair):
    n_ctx = context_length(pair)
    length = len(chat_prompt_ids(pair.tokenizer, _prompts(pair)[1].text))
    assert length > n_ctx
    with pytest.raises(
        HooklabError,
        match=rf"prompt 'long' is {length} tokens \+ max_new_tokens=4, more than the models' "
        rf"context n_ctx={n_ctx}.*truncate_long_prompts=True",
    ):
        build_sequences(pair, _prompts(pair), ["same_history"], max_new_tokens=4, progress=False)
    with pytest.raises(HooklabError, match=rf"prompt 'long' is {length} tokens, more than"):
        build_sequences(pair, _prompts(pair), ["template_replay"], progress=False)


def test_long_prompts_can_be_cut_to_fit_and_are_counted(pair):
    n_ctx = context_length(pair)
    with pytest.warns(UserWarning, match=r"1 prompt\(s\) longer than .* were cut"):
        sequences = build_sequences(
            pair,
            _prompts(pair),
            ["native", "same_history", "template_replay"],
            max_new_tokens=4,
            truncate_long_prompts=True,
            progress=False,
        )
    assert len(sequences) == 2 * 3 * 2
    assert {s.prompt_id for s in sequences if s.truncated} == {"long"}
    assert all(len(s.tokens) <= n_ctx for s in sequences)
    long_replay = [
        s for s in sequences if s.prompt_id == "long" and s.condition == "template_replay"
    ]
    # cut to the longest prefix that leaves room for the response
    assert n_ctx - 4 - 8 <= len(long_replay[0].tokens) <= n_ctx - 4
    short = [s for s in sequences if s.prompt_id == "short"]
    assert not any(s.truncated for s in short)
    plain = build_sequences(pair, _prompts(pair)[:1], ["template_replay"], progress=False)
    assert [s.tokens for s in plain] == [
        s.tokens for s in short if s.condition == "template_replay"
    ]
