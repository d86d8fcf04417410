"""Directions on the embedded PT/IT pair: stability with n, splits, ridge d_conv, figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hooklab
from hooklab.graft.histories import make_histories
from hooklab.prompts import load_prompts
from hooklab.steering import (
    bootstrap_stability,
    collect_paired,
    collect_ridge,
    convergence_targets,
    cosine_table,
    fit_ridge,
    layer_cosine_matrix,
    matched_direction,
    mean_direction,
    split_cosines,
)
from hooklab.steering.figures import (
    cosine_matrix_figure,
    direction_lens_figure,
    direction_tokens,
    stability_figure,
)


@pytest.fixture(scope="module")
def embedded():
    pair = hooklab.load_pair("tiny")
    histories = make_histories(pair, load_prompts()[:12], max_new_tokens=16, progress=False)
    return pair, histories, collect_paired(pair, histories, top_k_tokens=32, batch_size=6)


def test_bootstrap_cosine_rises_towards_one(embedded):
    _, histories, sums = embedded
    assert sums.n_prompts == 12 and sums.n_tokens == sum(h.read_to - h.read_from for h in histories)
    table = bootstrap_stability(sums, [2, 4, 8, 12, 48, 192], n_resamples=200, seed=0)
    by_n = table.groupby("n")["cos_mean"].mean()
    assert list(by_n) == sorted(by_n)  # mean over layers rises with n
    assert by_n[192] > 0.99 > by_n[2]
    assert (table["cos_high"] <= 1 + 1e-12).all() and (table["cos_low"] > -1).all()
    splits = split_cosines(sums, 2)
    assert len(splits) == len(sums.layers) and np.isfinite(splits["cos"]).all()


def test_ridge_direction_on_embedded_pair(embedded):
    pair, histories, sums = embedded
    targets = convergence_targets(pair.it, histories)
    assert [len(t) for t in targets] == [h.read_to - h.read_from for h in histories]
    assert all(np.isfinite(t).all() and (t >= -1e-6).all() for t in targets)
    stats = collect_ridge(pair, histories, targets, n_folds=3, layers=[3, 4, 5])
    assert int(stats.count.sum()) == sums.n_tokens
    lambdas = (1e-3, 1e-1, 10.0)
    directions, table = fit_ridge(stats, lambdas)
    assert directions.layers == (3, 4, 5) and directions.source == "ridge"
    assert torch.isfinite(directions.vectors).all()
    torch.testing.assert_close(directions.vectors.norm(dim=-1), torch.ones(3))
    for layer, rows in table.groupby("layer"):
        best = rows.loc[rows["cv_sse"].idxmin()]
        assert bool(best["chosen"]) and rows["chosen"].sum() == 1
        assert directions.notes["lambda"][directions.layers.index(layer)] == best["lambda"]
    table = cosine_table(
        {"mean": mean_direction(sums), "matched": matched_direction(sums), "ridge": directions}
    )
    assert set(table["layer"]) == {0, 1, 2, 3, 4, 5} and table["cos"].between(-1, 1).all()


def test_figures(embedded):
    pair, _, sums = embedded
    directions = mean_direction(sums)
    stability = stability_figure(bootstrap_stability(sums, [4, 8], n_resamples=20))
    assert len(stability.data) == 2 * len(sums.layers)
    matrix = cosine_matrix_figure(layer_cosine_matrix(directions), list(sums.layers))
    np.testing.assert_allclose(np.diag(np.asarray(matrix.data[0].z)), 1.0, atol=1e-6)
    tokens = direction_tokens(pair.it, directions, pair.tokenizer, k=3)
    assert len(tokens) == len(sums.layers) * 2 * 3
    # the promoted tokens are those with the largest readout of the direction
    logits = hooklab.read_logits(pair.it, directions.vectors[-1:])[0]
    top = tokens[(tokens.layer == 5) & (tokens.kind == "promoted")]
    assert top["token_id"].tolist() == torch.topk(logits, 3).indices.tolist()
    bottom = tokens[(tokens.layer == 5) & (tokens.kind == "suppressed")]
    assert bottom["token_id"].tolist() == torch.topk(-logits, 3).indices.tolist()
    figure = direction_lens_figure(pair.it, directions, pair.tokenizer, k=3)
    assert len(figure.data[0].cells.values[0]) == len(sums.layers)
