"""The mechanism experiments (opposition, attention-entropy, token-support, patching,
weight-change) end to end through the run machinery, and their known answers: a pair made of
one checkpoint twice has IT - PT = 0 exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hooklab.cli import main
from hooklab.experiment import get_experiment
from hooklab.experiments.attention_entropy import AttentionEntropyConfig
from hooklab.experiments.opposition import OppositionConfig
from hooklab.experiments.patching import PatchingConfig
from hooklab.experiments.token_support import TokenSupportConfig
from hooklab.experiments.weight_change import WeightChangeConfig
from hooklab.pair import embedded_pair_folder
from hooklab.runs import ExecutionSpec, PairSpec, PromptSpec, RunSpec, run_spec
from hooklab.viz.report import write_report

TINY = PairSpec(name="tiny")


def _self_pair() -> PairSpec:
    folder = str(embedded_pair_folder() / "pt")
    return PairSpec(pt=folder, it=folder)


def _run(tmp_path, name, config, pair=TINY, limit=3, part_size=2):
    spec = RunSpec(
        experiment=name,
        out=str(tmp_path / name),
        pair=pair,
        prompts=PromptSpec(limit=limit),
        config=config,
        execution=ExecutionSpec(part_size=part_size),
    )
    table = run_spec(spec, progress=False)
    assert table is not None and table.is_file()
    return table


CASES = {
    "opposition": (
        OppositionConfig(max_new_tokens=3, conditions=("same_history", "native")),
        ["opposition_layers.csv", "opposition_late.csv"],
        "late-layer delta-cosine IT - PT (mlp, same_history): ",
    ),
    "attention-entropy": (
        AttentionEntropyConfig(max_new_tokens=3),
        ["attention_entropy_layers.csv", "attention_entropy_heads.csv"],
        "late-layer attention entropy IT - PT (heads averaged): ",
    ),
    "token-support": (
        TokenSupportConfig(max_new_tokens=3, windows="late", top_k=3),
        ["token_support_summary.csv", "token_support_tokens.csv"],
        "late it-to-pt graft: teacher token ",
    ),
    "patching": (
        PatchingConfig(max_new_tokens=3, components=("mlp_out", "resid_post")),
        ["patching_summary.csv"],
        "patching it-to-pt mlp_out, largest delta_late_kl: layer ",
    ),
    "weight-change": (
        WeightChangeConfig(),
        ["weight_change_pivot.csv", "weight_change_groups.csv"],
        "relative weight change ||W_IT - W_PT|| / ||W_PT|| by group: ",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_experiment_runs_end_to_end(tmp_path, name):
    config, summaries, headline = CASES[name]
    table = _run(tmp_path, name, config)
    run_dir = table.parent
    frame = pd.read_parquet(table)
    assert len(frame) > 0
    for summary in summaries:
        assert len(pd.read_csv(run_dir / summary)) > 0
    if name != "weight-change":  # one row set per prompt, every prompt there
        assert frame["prompt_id"].nunique() == 3
        assert not frame.select_dtypes("number").isna().any().any()
    lines = get_experiment(name).headline(run_dir)
    with_ci = name != "weight-change"  # weights are not a sample: no CI
    assert any(line.startswith(headline) and ("[" in line) == with_ci for line in lines), lines
    report = write_report(tmp_path / "report", [run_dir])
    page = report.read_text()
    assert "<table" in page and "<iframe" in page
    assert list((tmp_path / "report" / "figures").glob("*.html"))


def test_opposition_native_reads_it_on_the_same_tokens_as_same_history(tmp_path):
    # Under both conditions IT reads its own template and greedy response: the same tokens,
    # batched the same way, so its rows are equal exactly; PT's native rows read other tokens.
    table = _run(tmp_path, "opposition", CASES["opposition"][0])
    frame = pd.read_parquet(table)
    keys = ["prompt_id", "layer", "component"]

    def side(model, condition):
        rows = frame[(frame["model"] == model) & (frame["condition"] == condition)]
        return rows.astype({"prompt_id": str, "component": str}).set_index(keys).sort_index()

    same, native = side("it", "same_history"), side("it", "native")
    assert np.array_equal(same["cosine"].to_numpy(), native["cosine"].to_numpy())
    assert (same["n_tokens"] == native["n_tokens"]).all()
    assert not np.array_equal(
        side("pt", "same_history")["cosine"].to_numpy(), side("pt", "native")["cosine"].to_numpy()
    )


def test_a_pair_with_itself_has_no_opposition_or_entropy_difference(tmp_path):
    late = pd.read_csv(
        _run(tmp_path, "opposition", OppositionConfig(max_new_tokens=3), _self_pair()).parent
        / "opposition_late.csv"
    )
    assert set(late["component"]) == {"attn", "mlp", "block"}
    assert (late[["mean", "ci_low", "ci_high"]] == 0).all().all()
    assert (late["late_layers"].astype(str) == "4").all()  # 6 layers: final excluded
    run_dir = _run(
        tmp_path, "attention-entropy", AttentionEntropyConfig(max_new_tokens=3), _self_pair()
    ).parent
    for name in ("attention_entropy_layers.csv", "attention_entropy_heads.csv"):
        summary = pd.read_csv(run_dir / name)
        assert (summary[["mean", "ci_low", "ci_high"]] == 0).all().all()
        assert (summary["mean_pt"] > 0).all()  # the entropies themselves are not zero


def test_a_pair_with_itself_has_no_token_support_or_patching_effect(tmp_path):
    config = TokenSupportConfig(max_new_tokens=3, windows="late", top_k=3)
    run_dir = _run(tmp_path, "token-support", config, _self_pair()).parent
    summary = pd.read_csv(run_dir / "token_support_summary.csv")
    assert set(summary["mode"]) == {"module", "random"}  # the control too: its norms are 0
    assert (summary[["mean", "ci_low", "ci_high"]] == 0).all().all()
    assert (pd.read_csv(run_dir / "token_support_tokens.csv")["delta_logprob"] == 0).all()
    config = PatchingConfig(max_new_tokens=3)
    table = pd.read_parquet(_run(tmp_path, "patching", config, _self_pair()))
    assert set(table["component"]) == {"attn_out", "mlp_out", "resid_post"}
    assert set(table["direction"]) == {"it-to-pt", "pt-to-it"}
    assert (table["delta_teacher_logprob"] == 0).all()
    # The late-region KL of a patched stream and of the host's own are read in different
    # chunk shapes (hooklab.stream.read_variants), so float32 rounding may differ: seen up to
    # 3e-7 nats on a one-prompt batch, 0 exactly on a three-prompt one.
    assert (table["delta_late_kl"].abs() <= 1e-6).all()


def test_a_pair_with_itself_has_no_weight_change(tmp_path):
    table = _run(tmp_path, "weight-change", WeightChangeConfig(), _self_pair())
    frame = pd.read_parquet(table)
    assert len(frame) > 0 and (frame["rel_change"] == 0).all()
    assert np.allclose(frame["cosine"], 1.0, rtol=0, atol=1e-12)
    pivot = pd.read_csv(table.parent / "weight_change_pivot.csv")
    assert len(pivot) == 6  # one row per layer


def test_weight_change_is_read_once_whatever_the_parts(tmp_path):
    one = pd.read_parquet(_run(tmp_path / "a", "weight-change", WeightChangeConfig(), limit=1))
    three = pd.read_parquet(
        _run(tmp_path / "b", "weight-change", WeightChangeConfig(), limit=3, part_size=1)
    )
    text = {"tensor": str, "group": str, "module": str}  # categorical after a merge of parts
    pd.testing.assert_frame_equal(one.astype(text), three.astype(text))


def test_dash_named_experiments_run_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "entropy"
    argv = ["attention-entropy", "--pair", "tiny", "--limit", "2", "--max-new-tokens", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "late-layer attention entropy IT - PT" in capsys.readouterr().out
    assert (out / "attention_entropy.parquet").is_file()


def test_run_level_token_lists_are_exact_whatever_the_parts(tmp_path):
    """token_support_tokens.csv of a run in 3 parts is the list of one part of all prompts
    (running sums per token over parts), under both rankings."""
    for rank_by in ("prob", "logprob"):
        config = TokenSupportConfig(
            max_new_tokens=4,
            windows="late",
            directions=("it-to-pt",),
            modes=("module",),
            top_k=10,
            rank_by=rank_by,
        )
        lists = [
            pd.read_csv(
                _run(
                    tmp_path / f"{rank_by}{size}", "token-support", config, limit=5, part_size=size
                ).parent
                / "token_support_tokens.csv",
                keep_default_na=False,
            )
            for size in (2, 5)
        ]
        pd.testing.assert_frame_equal(lists[0], lists[1], check_exact=False, atol=1e-9)
        assert (lists[0]["n_prompts"] == 5).all() and set(lists[0]["rank_by"]) == {rank_by}
        promoted = lists[0][lists[0]["kind"] == "promoted"]
        column = "delta_prob" if rank_by == "prob" else "delta_logprob"
        assert promoted[column].is_monotonic_decreasing
