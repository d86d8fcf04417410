"""Metric reductions against a brute-force float64 reference; the commitment rule by hand."""

from __future__ import annotations

import doctest
import math
from fractions import Fraction

import pytest
import torch

import hooklab.metrics
from hooklab.errors import HooklabError
from hooklab.metric_specs import METRICS, metric_names
from hooklab.metrics import (
    chunk_metrics,
    final_distribution,
    first_committed_layer,
    late_layers,
    layers_label,
)

#: every metric computed without a teacher, the opt-in ones included
ALL_BUT_TEACHER = metric_names({"target"}, [s.name for s in METRICS.values() if s.opt_in])


def brute_force(layer_logits: torch.Tensor, final_logits: torch.Tensor, targets: torch.Tensor):
    """Full softmax in float64, ranks by sorting: the definitions of docs/definitions.md."""
    lp = torch.log_softmax(layer_logits.double(), -1)
    lf = torch.log_softmax(final_logits.double(), -1)
    top = final_logits.argmax(-1)
    order = torch.argsort(layer_logits, dim=-1, descending=True)
    rank_of = lambda token: (order == token.unsqueeze(-1)).float().argmax(-1)  # noqa: E731
    rows = torch.arange(len(top))
    p, q = lp.exp(), lf.exp()
    log_m = torch.log((p + q) / 2)
    kl_to_m = lambda probs, logs: torch.where(probs > 0, probs * (logs - log_m), 0).sum(-1)  # noqa: E731
    return {
        "kl_to_final": (lp.exp() * (lp - lf)).sum(-1),
        "kl_final_to_layer": (lf.exp() * (lf - lp)).sum(-1),
        "entropy": -(lp.exp() * lp).sum(-1),
        "top1_agree": layer_logits.argmax(-1) == top,
        "final_top1_rank": rank_of(top),
        "final_top1_prob": lp.exp()[rows, top],
        "target_logprob": lp[rows, targets],
        "target_rank": rank_of(targets),
        "js_to_final": 0.5 * kl_to_m(p, lp) + 0.5 * kl_to_m(q, lf),
    }


@pytest.mark.parametrize("vocab", [7, 1000, 50_000])
def test_chunk_metrics_equal_brute_force(vocab):
    generator = torch.Generator().manual_seed(vocab)
    final = torch.randn(16, vocab, generator=generator) * 3
    layer = final + torch.randn(16, vocab, generator=generator) * 2
    layer[0] = final[0]  # one row identical to the final: KL 0, rank 0, agreement
    targets = torch.randint(0, vocab, (16,), generator=generator)
    expected = brute_force(layer, final, targets)
    got = chunk_metrics(layer.clone(), final_distribution(final), targets, extra=["js_to_final"])
    assert set(got) == set(expected) == set(ALL_BUT_TEACHER)
    for name, value in expected.items():
        assert torch.allclose(got[name].double(), value.double(), atol=5e-5, rtol=1e-5), name
    assert got["kl_to_final"][0] == 0 and got["final_top1_rank"][0] == 0
    assert got["js_to_final"][0] == 0


def test_js_to_final_where_probabilities_underflow():
    # logits 100 apart: float32 probabilities underflow to 0 in both distributions
    generator = torch.Generator().manual_seed(0)
    final = torch.randn(8, 300, generator=generator) * 60
    layer = torch.randn(8, 300, generator=generator) * 60
    layer[:, :2] = final[:, :2] = 0.0
    layer[:, 0], final[:, 1] = 500.0, 500.0  # disjoint peaks: JS near log 2
    expected = brute_force(layer, final, torch.zeros(8, dtype=torch.long))["js_to_final"]
    got = chunk_metrics(layer.clone(), final_distribution(final), extra=["js_to_final"])
    assert torch.isfinite(got["js_to_final"]).all()
    assert torch.allclose(got["js_to_final"].double(), expected, atol=1e-6)
    assert abs(float(expected[0]) - math.log(2)) < 1e-6


def test_js_to_final_is_opt_in_and_the_default_tables_keep_their_columns():
    assert "js_to_final" not in metric_names()
    assert metric_names()[:7] == [
        "kl_to_final",
        "kl_to_teacher",
        "kl_final_to_layer",
        "entropy",
        "top1_agree",
        "final_top1_rank",
        "final_top1_prob",
    ]
    assert metric_names(extra=["js_to_final"])[-1] == "js_to_final"
    assert "target_rank" not in metric_names({"teacher"})
    with pytest.raises(HooklabError, match="metrics=entropy: not an opt-in metric"):
        metric_names(extra=["entropy"])


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
    got_layer, got_never = first_committed_layer(torch.tensor(curve) < tau)
    assert (int(got_layer), bool(got_never)) == (layer, never)


def test_commitment_layer_is_batched():
    curves = torch.tensor([[2.0, 0.05, 0.3, 0.01], [0.0, 0.0, 0.0, 0.0]])
    layer, never = first_committed_layer(curves < 0.1)
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


def test_one_late_region_for_every_read_out():
    """grep finds one definition of the late region and no restated default depth; every
    experiment's config defaults to it."""
    import re
    from pathlib import Path

    from hooklab.experiment import registered_experiments
    from hooklab.metrics import LATE_START_DEPTH

    package = Path(__file__).resolve().parents[1] / "hooklab"
    definitions, literals = [], []
    for path in package.rglob("*.py"):
        text = path.read_text()
        definitions += [path.name for _ in re.finditer(r"def late_layers\(", text)]
        for line in text.splitlines():
            if line.strip().startswith(">>>") or "LATE_START_DEPTH = " in line:
                continue  # the definition and its worked examples
            if re.search(r"\b0\.(75|8)\b", line):
                if "late" in line.lower() or "depth" in line.lower():
                    literals.append(f"{path.relative_to(package)}: {line.strip()}")
    assert definitions == ["metrics.py"]
    assert not literals, literals
    for name, experiment in registered_experiments().items():
        default = getattr(experiment.config_type(), "late_start_depth", LATE_START_DEPTH)
        assert default == LATE_START_DEPTH, name


def test_late_region_excludes_the_final_layer_and_tolerates_round_off():
    from hooklab.metrics import late_layers, layers_from_label, layers_label

    assert late_layers(6) == [4]  # opposition / attention entropy used 4-5 before
    assert late_layers(26, 0.8) == list(range(20, 25))  # 20 / 25 is 0.8 despite round-off
    for layers in ([4], [24, 25, 26], [1, 3]):
        assert layers_from_label(layers_label(layers)) == layers
