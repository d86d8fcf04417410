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
    rng = np.random.default_rng(0)
    base = list(0.30 + 0.05 * rng.standard_normal(12))
    noise = list(0.01 * rng.standard_normal(12))  # a random control near 0
    prompts = _prompts(
        {
            ("it-to-pt", "module", "late"): [v + 1.0 for v in base],
            ("it-to-pt", "random", "late"): noise,
            ("it-to-pt", "module", "mid"): [v + 2.0 + n for v, n in zip(base, noise, strict=True)],
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
            "n_prompts": 12,
            "n_tokens_pt": [40, 45],
            "n_tokens_it": 45,
            "late_layers": "4",
        }
    )
    claims = evaluate_claims(
        {"graft_prompt_effects": prompts, "convergence_gap": gap}, ["p"], seed=0
    ).set_index("claim")
    assert claims.loc["gap_native", "verdict"] == "inconclusive"
    assert claims.loc["gap_same_history", "verdict"] == "holds"
    # one meaning of n_tokens: positions one model read (not PT + IT)
    assert claims.loc["gap_same_history", "n_tokens"] == 45
    assert "PT 40" in claims.loc["gap_native", "detail"]
    assert claims.loc["gap_template_replay", "verdict"] == "not run"
    assert claims.loc["graft_late", "measured"] == pytest.approx(np.mean(base) + 1.0)
    assert claims.loc["graft_late", "n_tokens"] == sum(10 + i for i in range(12))
    assert claims.loc["graft_late", "verdict"] == "holds"
    assert claims.loc["swap_late", "verdict"] == "holds"
    versus = claims.loc["graft_vs_random"]
    assert versus["measured"] == pytest.approx(np.mean(base) + 1.0 - np.mean(noise))
    assert versus["verdict"] == "holds" and versus["n_prompts"] == 12
    assert claims.loc["random_late", "measured"] == pytest.approx(np.mean(noise))
    assert claims.loc["random_late", "verdict"] == "holds"
    assert claims.loc["random_late", "paper"].startswith("+0.003")
    assert claims.loc["late_strongest_sufficiency", "verdict"] == "fails"
    assert claims.loc["late_strongest_sufficiency", "measured"] == pytest.approx(
        -1 - np.mean(noise)
    )
    necessity = claims.loc["late_strongest_necessity"]
    assert necessity["verdict"] == "holds"
    assert necessity["measured"] == pytest.approx(np.mean([-v - (v - 0.1) for v in base]))
    assert claims.loc["swap_late", "paper"] == "-0.51 nats"


def _versus(module: list[float], random: list[float]) -> pd.Series:
    prompts = _prompts(
        {("it-to-pt", "module", "late"): module, ("it-to-pt", "random", "late"): random}
    )
    return evaluate_claims({"graft_prompt_effects": prompts}, ["p"]).set_index("claim")


def test_graft_vs_random_fails_when_the_random_control_is_not_small():
    """The embedded pair's case: module - random > 0, but random alone (+0.062, CI away from
    0) is a fifth of the true graft, not near zero as the paper's +0.003 vs +0.327."""
    rng = np.random.default_rng(1)
    module = list(0.33 + 0.05 * rng.standard_normal(20))
    random = list(0.062 + 0.01 * rng.standard_normal(20))
    claims = _versus(module, random)
    versus = claims.loc["graft_vs_random"]
    assert versus["measured"] > 0 and versus["ci_low"] > 0  # the old test alone would hold
    assert versus["verdict"] == "fails"
    assert claims.loc["random_late", "verdict"] == "fails"
    assert claims.loc["random_late", "measured"] == pytest.approx(np.mean(random))
    assert "paper +0.327" in versus["detail"] and "paper +0.003" in versus["detail"]


def test_too_few_prompts_or_no_spread_is_inconclusive():
    few = _versus([1.0, 1.1, 1.2, 1.3], [0.0, 0.01, -0.01, 0.0])  # 4 < MIN_PROMPTS
    assert set(few.loc[["graft_late", "graft_vs_random"], "verdict"]) == {"inconclusive"}
    flat = _versus([1.0] * 12, [0.0] * 12)  # every prompt the same: the CI collapses
    assert flat.loc["graft_late", "ci_low"] == flat.loc["graft_late", "ci_high"]
    assert flat.loc["graft_late", "verdict"] == "inconclusive"
    assert flat.loc["graft_vs_random", "verdict"] == "inconclusive"


def test_claims_without_tables_are_marked_not_run():
    claims = evaluate_claims({}, ["a", "b"])
    assert set(claims["verdict"]) == {"not run"}
    assert len(claims) == 2 * 9
