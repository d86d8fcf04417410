"""Claims on synthetic study tables whose answers are known by construction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hooklab.stats import bootstrap_mean_ci
from hooklab.study.claims import evaluate_claims, paired_difference, verdict


def test_verdict_reads_the_interval_against_the_claimed_sign():
    assert verdict(0.1, 0.3, +1) == "holds"
    assert verdict(-0.3, -0.1, +1) == "fails"
    assert verdict(-0.1, 0.3, +1) == "inconclusive"
    assert verdict(0.0, 0.3, +1) == "inconclusive"  # touching 0 is not enough
    assert verdict(-0.3, -0.1, -1) == "holds"
    assert verdict(0.1, 0.3, -1) == "fails"
    assert verdict(float("nan"), 0.3, +1) == "inconclusive"


def _prompts(values: dict[tuple[str, str, str], list[float]]) -> pd.DataFrame:
    rows = []
    for (direction, mode, window), series in values.items():
        for index, value in enumerate(series):
            rows.append(
                {
                    "pair": "p",
                    "direction": direction,
                    "mode": mode,
                    "part": "mlp",
                    "window": window,
                    "prompt_id": f"q{index}",
                    "value": value,
                    "n_tokens": 10 + index,
                }
            )
    return pd.DataFrame(rows)


def test_paired_difference_pairs_by_prompt_and_drops_unmatched_ones():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=6), rng.normal(size=5)
    frame = _prompts(
        {("it-to-pt", "module", "late"): list(a), ("it-to-pt", "random", "late"): list(b)}
    )
    frame = frame.sample(frac=1, random_state=1)  # row order must not matter
    mean, low, high, n, tokens = paired_difference(
        frame, {"mode": "module"}, {"mode": "random"}, seed=4
    )
    reference = bootstrap_mean_ci(a[:5] - b, seed=4)  # q5 has no random value
    assert (mean, low, high, n) == pytest.approx(
        (reference.mean, reference.low, reference.high, 5), abs=1e-12
    )
    assert tokens == sum(10 + i for i in range(5))


def test_claims_on_tables_with_known_answers():
    base = [0.20, 0.25, 0.30, 0.35, 0.40]
    prompts = _prompts(
        {
            ("it-to-pt", "module", "late"): [v + 1.0 for v in base],
            ("it-to-pt", "random", "late"): base,  # module - random = 1 for every prompt
            ("it-to-pt", "module", "mid"): [v + 2.0 for v in base],  # mid beats late: fails
            ("pt-to-it", "module", "late"): [-v for v in base],
            ("pt-to-it", "module", "early"): [v - 0.1 for v in base],  # late lower everywhere
        }
    )
    gap = pd.DataFrame(
        {
            "pair": "p",
            "lens": "logit",
            "metric": "kl_to_final",
            "region": "late",
            "condition": ["native", "same_history"],
            "layer": -1,
            "mean": [0.05, 0.01],
            "ci_low": [-0.01, 0.02],
            "ci_high": [0.1, 0.03],
            "n_prompts": 5,
            "n_tokens_pt": 40,
            "n_tokens_it": 45,
            "late_layers": "4-4",
        }
    )
    claims = evaluate_claims(
        {"graft_prompt_effects": prompts, "convergence_gap": gap}, ["p"], seed=0
    ).set_index("claim")
    assert claims.loc["gap_native", "verdict"] == "inconclusive"
    assert claims.loc["gap_same_history", "verdict"] == "holds"
    assert claims.loc["gap_same_history", "n_tokens"] == 85
    assert claims.loc["gap_template_replay", "verdict"] == "not run"
    assert claims.loc["graft_late", "measured"] == pytest.approx(np.mean(base) + 1.0)
    assert claims.loc["graft_late", "verdict"] == "holds"
    assert claims.loc["swap_late", "verdict"] == "holds"
    versus = claims.loc["graft_vs_random"]
    assert (versus["measured"], versus["ci_low"], versus["ci_high"]) == pytest.approx((1, 1, 1))
    assert versus["verdict"] == "holds" and versus["n_prompts"] == 5
    assert claims.loc["late_strongest_sufficiency", "verdict"] == "fails"
    assert claims.loc["late_strongest_sufficiency", "measured"] == pytest.approx(-1.0)
    necessity = claims.loc["late_strongest_necessity"]
    assert necessity["verdict"] == "holds"
    assert necessity["measured"] == pytest.approx(np.mean([-v - (v - 0.1) for v in base]))
    assert claims.loc["swap_late", "paper"] == "-0.51 nats"


def test_claims_without_tables_are_marked_not_run():
    claims = evaluate_claims({}, ["a", "b"])
    assert set(claims["verdict"]) == {"not run"}
    assert len(claims) == 2 * 8
