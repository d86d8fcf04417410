"""Conditions, the long table, summaries, and the readout / train-lens commands end to end."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import hooklab
from hooklab.cli import main
from hooklab.conditions import build_sequences
from hooklab.errors import HooklabError
from hooklab.prompts import chat_prompt_ids, load_prompts, raw_prompt_ids
from hooklab.readout import ReadoutConfig, run_readout
from hooklab.summaries import commitment_layers, commitment_summary, convergence_gap, layer_summary


@pytest.fixture(scope="module")
def pair(tiny_pair):
    tiny = tiny_pair("gemma3")
    return hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")


@pytest.fixture(scope="module")
def frame(pair):
    config = ReadoutConfig(
        conditions=("native", "same_history", "template_replay"), max_new_tokens=6, batch_size=3
    )
    return run_readout(pair, load_prompts()[:5], config, progress=False)


def test_native_prompts_have_one_bos(pair):
    bos = pair.tokenizer.bos_token_id
    chat = chat_prompt_ids(pair.tokenizer, "What is 2 + 2?")
    raw = raw_prompt_ids(pair.tokenizer, "What is 2 + 2?")
    assert chat[0] == bos and chat[1] != bos
    assert raw[0] == bos and raw[1] != bos
    assert chat != raw


def test_sequences_per_condition(pair):
    prompts = load_prompts()[:3]
    sequences = build_sequences(
        pair,
        prompts,
        ["native", "same_history", "template_replay"],
        max_new_tokens=5,
        progress=False,
    )
    by_key = {(s.prompt_id, s.condition, s.model): s for s in sequences}
    assert len(by_key) == len(sequences) == 3 * 3 * 2
    for prompt in prompts:
        same_pt = by_key[(prompt.id, "same_history", "pt")]
        same_it = by_key[(prompt.id, "same_history", "it")]
        assert same_pt.tokens == same_it.tokens  # one shared history
        native_it = by_key[(prompt.id, "native", "it")]
        assert native_it.tokens == same_it.tokens  # IT's native run is that history
        native_pt = by_key[(prompt.id, "native", "pt")]
        assert native_pt.tokens[: len(raw_prompt_ids(pair.tokenizer, prompt.text))] == tuple(
            raw_prompt_ids(pair.tokenizer, prompt.text)
        )
        replay = by_key[(prompt.id, "template_replay", "pt")]
        assert replay.tokens == tuple(chat_prompt_ids(pair.tokenizer, prompt.text))
        response = same_it.tokens[same_it.read_from + 1 :]
        assert 1 <= len(response) <= 5


def test_same_history_response_is_it_greedy(frame):
    # Known answer: IT produced the shared history greedily, so under IT's own final
    # distribution every response token is the top-1 (target rank 0 at the last layer).
    last = frame[
        (frame.condition == "same_history")
        & (frame.model == "it")
        & (frame.layer == frame.n_layers - 1)
    ]
    assert len(last) > 0
    assert (last.target_rank == 0).all()
    assert (last.target_id == last.final_top1_id).all()


def test_table_columns_and_keys(frame):
    for column in (
        "prompt_id",
        "condition",
        "model",
        "position",
        "layer",
        "token_id",
        "target_id",
        "n_layers",
        "depth",
        "kl_to_final",
        "kl_final_to_layer",
        "entropy",
        "top1_agree",
        "final_top1_rank",
        "final_top1_prob",
        "target_logprob",
        "target_rank",
    ):
        assert column in frame.columns, column
    keys = ["prompt_id", "condition", "model", "position", "layer"]
    assert not frame.duplicated(keys).any()
    per_position = frame.groupby(keys[:-1], observed=True).size()
    assert (per_position == 4).all()  # every layer of every read position
    assert frame.depth.min() == 0 and frame.depth.max() == 1


def test_summaries(frame):
    layers = layer_summary(frame)
    kl = layers[(layers.metric == "kl_to_final")]
    assert set(kl.layer) == {0, 1, 2, 3}
    assert (kl[kl.layer == 3]["mean"] == 0).all()
    assert (kl["ci_low"] <= kl["mean"]).all() and (kl["mean"] <= kl["ci_high"]).all()
    assert (kl.n_prompts == 5).all()
    gap = convergence_gap(frame)
    late = gap[gap.region == "late"]
    assert set(late.condition) == {"native", "same_history", "template_replay"}
    # The gap is IT minus PT of per-prompt means, by hand for one cell:
    cell = frame[(frame.condition == "same_history") & (frame.layer == 1)]
    means = cell.groupby(["model", "prompt_id"], observed=True).kl_to_final.mean().unstack(0)
    expected = (means["it"] - means["pt"]).mean()
    got = gap[(gap.region == "layer") & (gap.condition == "same_history") & (gap.layer == 1)]
    assert got["mean"].item() == pytest.approx(expected, rel=1e-6)
    # Token counts: distinct (prompt, position) pairs each model read, for the late region too.
    assert (late.late_layers == "2").all()  # 4 layers: the layer before the final one
    for row in late.itertuples():
        for model in ("pt", "it"):
            read = frame[(frame.condition == row.condition) & (frame.model == model)]
            n_read = len(read[["prompt_id", "position"]].drop_duplicates())
            assert getattr(row, f"n_tokens_{model}") == n_read
    commitments = commitment_layers(frame)
    assert (commitments["commit_kl<0.1"] <= 3).all()
    summary = commitment_summary(commitments)
    assert {"kl<0.1", "kl<0.5", "kl<1", "kl<0.1*max", "top1"} == set(summary.rule)


def test_bad_condition_and_lens_are_named():
    with pytest.raises(HooklabError, match="accepted conditions are native, same_history"):
        ReadoutConfig(conditions=("nativ",))
    with pytest.raises(HooklabError, match="use 'logit', or 'tuned:DIR'"):
        ReadoutConfig(lens="tuned")


def test_prompt_file_errors_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "ok"}\n{"id": "b"}\n')
    with pytest.raises(HooklabError, match="line 2: expected a non-empty .text. string"):
        load_prompts(bad)
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "a", "text": "x"}\n{"id": "a", "prompt": "y"}\n')
    with pytest.raises(HooklabError, match="repeated"):
        load_prompts(dup)
    with pytest.raises(HooklabError, match="no such file"):
        load_prompts(tmp_path / "missing.jsonl")
    assert len(load_prompts()) == 40


def test_cli_train_lens_then_tuned_readout(tiny_pair, tmp_path, capsys):
    tiny = tiny_pair("llama")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(p.text for p in load_prompts()) * 3)
    code = main(
        [
            "train-lens",
            "--pt",
            str(tiny.pt),
            "--it",
            str(tiny.it),
            "--corpus",
            str(corpus),
            "--out",
            str(tmp_path / "lenses"),
            "--token-budget",
            "3000",
            "--seq-len",
            "24",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert "held-out KL" in capsys.readouterr().out
    out = tmp_path / "run"
    code = main(
        [
            "readout",
            "--pt",
            str(tiny.pt),
            "--it",
            str(tiny.it),
            "--out",
            str(out),
            "--lens",
            f"tuned:{tmp_path / 'lenses'}",
            "--condition",
            "same_history",
            "--limit",
            "4",
            "--max-new-tokens",
            "4",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    table = pd.read_parquet(out / "readout.parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(table.lens) == {"tuned"} and set(table.prompt_id.unique()) == {
        p.id for p in load_prompts()[:4]
    }
    assert manifest["n_rows"] == len(table) and manifest["config"]["lens"].startswith("tuned:")
    assert manifest["lenses"]["pt"]["lens_type"] == "linear_tuned_lens"
    assert manifest["versions"]["transformer-lens"].startswith("4.")
    assert manifest["prompt_set_hash"] and manifest["pair"]["family"] == "llama"
    for name in (
        "summary_layers.csv",
        "summary_depth.csv",
        "convergence_gap.csv",
        "commitment.csv",
    ):
        assert (out / name).is_file()


def test_cli_readout_refuses_a_lens_of_the_wrong_side(tiny_pair, tmp_path, capsys):
    tiny = tiny_pair("llama")
    pair = hooklab.load_pair(pt=tiny.pt, it=tiny.it, device="cpu")
    lens = hooklab.lens.TunedLens.from_model(pair.it)
    lens.save(tmp_path / "lenses" / "pt")  # IT's lens where PT's belongs
    lens.save(tmp_path / "lenses" / "it")
    code = main(
        [
            "readout",
            "--pt",
            str(tiny.pt),
            "--it",
            str(tiny.it),
            "--out",
            str(tmp_path / "run"),
            "--lens",
            f"tuned:{tmp_path / 'lenses'}",
            "--device",
            "cpu",
        ]
    )
    assert code == 2
    assert "trained on another model" in capsys.readouterr().err
