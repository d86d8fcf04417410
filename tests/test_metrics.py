"""Metric reductions against a brute-force float64 reference; the commitment rule by hand."""

from __future__ import annotations

import doctest
from fractions import Fraction

import pytest
import torch

import hooklab.metrics
from hooklab.metrics import (
    chunk_metrics,
    commitment_layer,
    final_distribution,
    late_layers,
    layers_label,
)


def brute_force(layer_logits: torch.Tensor, final_logits: torch.Tensor, targets: torch.Tensor):
    """Full softmax in float64, ranks by sorting: the definitions of docs/definitions.md."""
    lp = torch.log_softmax(layer_logits.double(), -1)
    lf = torch.log_softmax(final_logits.double(), -1)
    top = final_logits.argmax(-1)
    order = torch.argsort(layer_logits, dim=-1, descending=True)
    rank_of = lambda token: (order == token.unsqueeze(-1)).float().argmax(-1)  # noqa: E731
    rows = torch.arange(len(top))
    return {
        "kl_to_final": (lp.exp() * (lp - lf)).sum(-1),
        "kl_final_to_layer": (lf.exp() * (lf - lp)).sum(-1),
        "entropy": -(lp.exp() * lp).sum(-1),
        "top1_agree": layer_logits.argmax(-1) == top,
        "final_top1_rank": rank_of(top),
        "final_top1_prob": lp.exp()[rows, top],
        "target_logprob": lp[rows, targets],
        "target_rank": rank_of(targets),
    }


@pytest.mark.parametrize("vocab", [7, 1000, 50_000])
def test_chunk_metrics_equal_brute_force(vocab):
    generator = torch.Generator().manual_seed(vocab)
    final = torch.randn(16, vocab, generator=generator) * 3
    layer = final + torch.randn(16, vocab, generator=generator) * 2
    layer[0] = final[0]  # one row identical to the final: KL 0, rank 0, agreement
    targets = torch.randint(0, vocab, (16,), generator=generator)
    expected = brute_force(layer, final, targets)
    got = chunk_metrics(layer.clone(), final_distribution(final), targets)
    for name, value in expected.items():
        assert torch.allclose(got[name].double(), value.double(), atol=5e-5, rtol=1e-5), name
    assert got["kl_to_final"][0] == 0 and got["final_top1_rank"][0] == 0


@pytest.mark.parametrize(
    ("curve", "tau", "layer", "never"),
    [
        ([2.0, 0.05, 0.3, 0.01, 0.0], 0.1, 3, False),  # dips early, then rises: not committed
        ([0.0, 0.0, 0.0, 0.0], 0.1, 0, False),  # committed from the first layer
        ([3.0, 2.0, 1.0, 0.5], 0.1, 3, True),  # never below tau: flagged, layer L - 1
        ([3.0, 2.0, 1.0, 0.05], 0.1, 3, False),  # only the last layer
        ([0.01, 0.2, 0.01, 0.01, 0.01], 0.1, 2, False),
    ],
)
def test_commitment_layer_follows_the_rule(curve, tau, layer, never):
    got_layer, got_never = commitment_layer(torch.tensor(curve) < tau)
    assert (int(got_layer), bool(got_never)) == (layer, never)


def test_commitment_layer_is_batched():
    curves = torch.tensor([[2.0, 0.05, 0.3, 0.01], [0.0, 0.0, 0.0, 0.0]])
    layer, never = commitment_layer(curves < 0.1)
    assert layer.tolist() == [3, 0] and never.tolist() == [False, False]


def test_late_layers_and_doctests():
    assert late_layers(2) == [0]
    assert doctest.testmod(hooklab.metrics).failed == 0
    with pytest.raises(ValueError):
        late_layers(1)
    with pytest.raises(ValueError, match="late_start_depth"):
        late_layers(8, late_start_depth=1.5)


@pytest.mark.parametrize("start", [0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0])
@pytest.mark.parametrize("n_layers", [2, 3, 4, 5, 6, 12, 26, 28, 32, 34, 36, 46, 62])
def test_late_layers_is_exactly_the_depth_threshold(n_layers, start):
    # By definition, in exact arithmetic: depth layer / (L - 1) >= start, final layer excluded,
    # at least one layer.
    threshold = Fraction(str(start))
    expected = [
        layer for layer in range(n_layers - 1) if Fraction(layer, n_layers - 1) >= threshold
    ] or [n_layers - 2]
    assert late_layers(n_layers, late_start_depth=start) == expected


def test_late_layers_at_the_paper_sizes():
    assert late_layers(6) == [4]  # depth 0.6 (layer 3) is not in the last 25%
    assert late_layers(32) == list(range(24, 31))  # 23 / 31 = 0.742 < 0.75
    assert late_layers(34) == list(range(25, 33))
    assert layers_label(late_layers(32)) == "24-30" and layers_label([4]) == "4"
