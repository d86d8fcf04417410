"""Token counts and the late region of the summary tables, on hand-made readout tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hooklab.summaries import (
    commitment_layers,
    commitment_summary,
    convergence_gap,
    depth_summary,
    layer_summary,
)

# Positions each (prompt, model) reads: the sides read different numbers of tokens, as under
# ``native`` where each model reads its own continuation.
READS = {
    ("a", "pt"): [3, 4, 5],
    ("a", "it"): [7, 8],
    ("b", "pt"): [2, 3, 4, 5],
    ("b", "it"): [6],
}


def _frame(n_layers: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for (prompt, model), positions in READS.items():
        for position in positions:
            for layer in range(n_layers):
                rows.append(
                    {
                        "prompt_id": prompt,
                        "category": "",
                        "condition": "native",
                        "model": model,
                        "position": position,
                        "layer": layer,
                        "n_layers": n_layers,
                        "depth": layer / (n_layers - 1),
                        "kl_to_final": 0.0 if layer == n_layers - 1 else rng.uniform(0.1, 2),
                        "top1_agree": layer == n_layers - 1,
                    }
                )
    return pd.DataFrame(rows)


def _tokens(model: str) -> int:
    return sum(len(p) for (_, m), p in READS.items() if m == model)


def test_gap_counts_each_sides_distinct_tokens_and_names_the_late_layers():
    frame = _frame(n_layers=12)  # late region: depth >= 0.75 -> layers 9 and 10 (of 0..11)
    gap = convergence_gap(frame)
    late = gap[gap.region == "late"].iloc[0]
    assert (late.n_tokens_pt, late.n_tokens_it) == (_tokens("pt"), _tokens("it")) == (7, 3)
    assert late.n_prompts == 2
    assert late.late_layers == "9-10" and late.late_start_depth == 0.75
    per_layer = gap[gap.region == "layer"]
    assert (per_layer.n_tokens_pt == 7).all() and (per_layer.n_tokens_it == 3).all()
    assert "n_tokens" not in gap.columns  # never one sum of both models' tokens
    # The late mean is the paired IT - PT difference of per-prompt means over layers 9-10.
    cells = frame[frame.layer.isin([9, 10])].groupby(["model", "prompt_id"]).kl_to_final.mean()
    expected = np.mean([cells["it", p] - cells["pt", p] for p in ("a", "b")])
    assert late["mean"] == pytest.approx(expected, rel=1e-12)


def test_gap_late_start_depth_is_a_setting():
    frame = _frame(n_layers=6)
    assert convergence_gap(frame).late_layers.unique().tolist() == ["4"]
    wider = convergence_gap(frame, late_start_depth=0.5)
    assert wider.late_layers.unique().tolist() == ["3-4"]
    assert (wider.late_start_depth == 0.5).all()
    cells = frame[frame.layer.isin([3, 4])].groupby(["model", "prompt_id"]).kl_to_final.mean()
    expected = np.mean([cells["it", p] - cells["pt", p] for p in ("a", "b")])
    assert wider[wider.region == "late"]["mean"].item() == pytest.approx(expected, rel=1e-12)


def test_per_side_summaries_count_distinct_positions_not_layers():
    frame = _frame(n_layers=12)
    layers = layer_summary(frame, ["kl_to_final"])
    for model in ("pt", "it"):
        assert (layers[layers.model == model].n_tokens == _tokens(model)).all()
    depth = depth_summary(frame, n_bins=3)  # four layers per bin
    for model in ("pt", "it"):
        assert (depth[depth.model == model].n_tokens == _tokens(model)).all()
    commitment = commitment_summary(commitment_layers(frame))
    for model in ("pt", "it"):
        assert (commitment[commitment.model == model].n_tokens == _tokens(model)).all()
    gap_rows = commitment[commitment.model == "it-pt"]
    assert (gap_rows.n_tokens_pt == 7).all() and (gap_rows.n_tokens_it == 3).all()
