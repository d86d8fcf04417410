"""The paper's headline claims as checkable statements, evaluated per pair from a study's
merged tables (:mod:`hooklab.study.tables`).

Each claim names a quantity with an expected sign. Its verdict comes from the 95% bootstrap CI
over prompts: ``holds`` when the whole interval is on the expected side of 0, ``fails`` when it
is entirely on the other side, ``inconclusive`` otherwise (or ``not run`` when the tables it
needs are absent). The data cannot decide, and the verdict is ``inconclusive`` whatever the
interval, with fewer than :data:`MIN_PROMPTS` prompts or a degenerate interval (no spread:
``ci_low == ci_high``). Paired differences (module vs random, late vs mid / early) are computed
per prompt from the graft table, then bootstrapped over prompts like every hooklab summary.

``graft_vs_random`` tests the paper's two-part claim: the true late graft raises late KL more
than the norm-matched random control (module − random, paired, > 0) **and** the random control
alone is small: its CI includes 0, or its mean is at most :data:`RANDOM_SMALL_FRACTION` of the
true graft's in size. ``random_late`` reports the random control alone beside the paper's
figure for it. ``n_tokens`` has one meaning in every claim: the (prompt, position) pairs one
model read, summed over the prompts behind the value (a gap claim under ``native``, where PT
and IT read different positions, gives IT's count and names PT's in ``detail``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from hooklab.stats import bootstrap_mean_ci

__all__ = [
    "Claim",
    "MIN_PROMPTS",
    "RANDOM_SMALL_FRACTION",
    "decide",
    "verdict",
    "evaluate_claims",
    "paired_difference",
]

HOLDS, FAILS, INCONCLUSIVE, NOT_RUN = "holds", "fails", "inconclusive", "not run"

#: fewer prompts than this cannot decide a claim (a percentile bootstrap over a handful of
#: prompts is too narrow to trust): the verdict is ``inconclusive``
MIN_PROMPTS = 10
#: the random control is "small" when its mean is at most this share of the true graft's
#: (an order of magnitude below it; the paper reports +0.003 vs +0.327, about 1%)
RANDOM_SMALL_FRACTION = 0.1


@dataclass(frozen=True)
class Claim:
    """One claim on one pair."""

    pair: str
    claim: str
    statement: str
    measured: float
    ci_low: float
    ci_high: float
    n_prompts: int
    n_tokens: int
    verdict: str
    paper: str = ""
    """The paper's reported figure, where it gives one."""
    detail: str = ""


def verdict(low: float, high: float, sign: int) -> str:
    """``holds`` if the CI ``[low, high]`` lies strictly on side ``sign`` (+1 / -1) of 0,
    ``fails`` if strictly on the other, else ``inconclusive``."""
    if np.isnan(low) or np.isnan(high):
        return INCONCLUSIVE
    if sign * low > 0 and sign * high > 0:
        return HOLDS
    if sign * low < 0 and sign * high < 0:
        return FAILS
    return INCONCLUSIVE


def decide(low: float, high: float, sign: int, n_prompts: int) -> str:
    """:func:`verdict`, but ``inconclusive`` below :data:`MIN_PROMPTS` prompts or with a
    degenerate interval (``low == high``: the values have no spread, or one prompt)."""
    if n_prompts < MIN_PROMPTS or not high > low:
        return INCONCLUSIVE
    return verdict(low, high, sign)


def paired_difference(
    prompts: pd.DataFrame, a: dict[str, str], b: dict[str, str], *, seed: int = 0
) -> tuple[float, float, float, int, int]:
    """Mean over prompts of (value of ``a`` - value of ``b``), paired by prompt, with its 95%
    bootstrap CI (prompts in id order, whatever the rows' order); ``a`` / ``b`` select rows
    of ``prompts`` (column -> value). Returns ``(mean, low, high, n_prompts, n_tokens)``
    (tokens of the paired prompts, counted once)."""

    def pick(selector: dict[str, str]) -> pd.DataFrame:
        rows = prompts
        for column, value in selector.items():
            rows = rows[rows[column] == value]
        return rows.set_index("prompt_id")

    left, right = pick(a), pick(b)
    joined = left[["value", "n_tokens"]].join(right[["value"]], rsuffix="_b", how="inner")
    joined = joined.sort_index()  # the bootstrap resamples by position: prompt order, fixed
    ci = bootstrap_mean_ci((joined["value"] - joined["value_b"]).to_numpy(), seed=seed)
    return ci.mean, ci.low, ci.high, ci.n, int(joined["n_tokens"].sum())


def _claim(pair: str, name: str, statement: str, values, sign: int, **extra) -> Claim:
    mean, low, high, n, tokens = values
    result = decide(low, high, sign, n)
    return Claim(pair, name, statement, mean, low, high, n, tokens, result, **extra)


def _not_run(pair: str, name: str, statement: str, why: str, paper: str = "") -> Claim:
    nan = float("nan")
    return Claim(pair, name, statement, nan, nan, nan, 0, 0, NOT_RUN, paper, why)


GAP = {
    "native": "IT late-region KL to final exceeds PT's (native)",
    "same_history": "the convergence gap survives same-history replay",
    "template_replay": "the convergence gap survives template replay",
}


def _gap_claims(pair: str, gap: pd.DataFrame | None) -> list[Claim]:
    out = []
    for condition, statement in GAP.items():
        name = f"gap_{condition}"
        rows = (
            None
            if gap is None
            else gap[
                (gap["pair"] == pair)
                & (gap["region"] == "late")
                & (gap["condition"] == condition)
                & (gap["metric"] == "kl_to_final")
            ]
        )
        if rows is None or rows.empty:
            out.append(_not_run(pair, name, statement, f"no {condition} readout"))
            continue
        row = rows.iloc[0]
        tokens = int(row["n_tokens_it"])  # positions one model read (PT's are in the detail)
        values = (row["mean"], row["ci_low"], row["ci_high"], int(row["n_prompts"]), tokens)
        detail = (
            f"IT - PT, late layers {row['late_layers']}, lens {row['lens']}; "
            f"positions read: IT {int(row['n_tokens_it'])}, PT {int(row['n_tokens_pt'])}"
        )
        out.append(_claim(pair, name, statement, values, +1, detail=detail))
    return out


def _effect_claims(pair: str, prompts: pd.DataFrame | None, seed: int) -> list[Claim]:
    statements = {
        "graft_late": ("the late it-to-pt graft raises late KL", "it-to-pt", +1, "+0.34 nats"),
        "swap_late": ("the late pt-to-it swap lowers late KL", "pt-to-it", -1, "-0.51 nats"),
    }
    columns = ["pair", "direction", "mode", "part", "window", "prompt_id", "value", "n_tokens"]
    rows = pd.DataFrame(columns=columns) if prompts is None else prompts
    rows = rows[rows["pair"] == pair]
    parts = list(dict.fromkeys(rows["part"]))
    if parts:  # dense MLP grafts, or the first MoE part the run grafted
        rows = rows[rows["part"] == ("mlp" if "mlp" in parts else parts[0])]
    out = []

    def have(direction: str, mode: str, window: str) -> bool:
        selected = rows[
            (rows["direction"] == direction) & (rows["mode"] == mode) & (rows["window"] == window)
        ]
        return not selected.empty

    for name, (statement, direction, sign, paper) in statements.items():
        if not have(direction, "module", "late"):
            out.append(_not_run(pair, name, statement, f"no late {direction} module graft", paper))
            continue
        selected = rows[
            (rows["direction"] == direction)
            & (rows["mode"] == "module")
            & (rows["window"] == "late")
        ].sort_values("prompt_id")  # as graft_effects orders them: the same resamples
        ci = bootstrap_mean_ci(selected["value"].to_numpy(), seed=seed)
        values = (ci.mean, ci.low, ci.high, ci.n, int(selected["n_tokens"].sum()))
        out.append(_claim(pair, name, statement, values, sign, paper=paper))

    out += _versus_random(pair, rows, seed, have("it-to-pt", "module", "late"))

    for name, direction, sign, what in (
        ("late_strongest_sufficiency", "it-to-pt", +1, "sufficiency (it-to-pt raises)"),
        ("late_strongest_necessity", "pt-to-it", -1, "necessity (pt-to-it lowers)"),
    ):
        statement = f"the late window is the strongest {what} window"
        others = [w for w in ("mid", "early") if have(direction, "module", w)]
        if not have(direction, "module", "late") or not others:
            out.append(_not_run(pair, name, statement, "needs late and mid / early windows"))
            continue
        base = {"direction": direction, "mode": "module"}
        diffs = {
            w: paired_difference(rows, {**base, "window": "late"}, {**base, "window": w}, seed=seed)
            for w in others
        }
        # the weakest comparison decides: every late - other difference must have the sign
        verdicts = [decide(d[1], d[2], sign, d[3]) for d in diffs.values()]
        worst = min(diffs, key=lambda w: sign * diffs[w][0])
        overall = (
            FAILS if FAILS in verdicts else HOLDS if set(verdicts) == {HOLDS} else INCONCLUSIVE
        )
        mean, low, high, n, tokens = diffs[worst]
        detail = "; ".join(
            f"late - {w}: {d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]" for w, d in diffs.items()
        )
        out.append(Claim(pair, name, statement, mean, low, high, n, tokens, overall, "", detail))
    return out


def _late_mean(rows: pd.DataFrame, mode: str, seed: int) -> tuple[float, float, float, int, int]:
    """The late it-to-pt ``mode`` effect alone: mean, CI, prompts, tokens (prompts in id order)."""
    selected = rows[
        (rows["direction"] == "it-to-pt") & (rows["mode"] == mode) & (rows["window"] == "late")
    ].sort_values("prompt_id")
    ci = bootstrap_mean_ci(selected["value"].to_numpy(), seed=seed)
    return ci.mean, ci.low, ci.high, ci.n, int(selected["n_tokens"].sum())


def _versus_random(pair: str, rows: pd.DataFrame, seed: int, have_module: bool) -> list[Claim]:
    """``graft_vs_random`` (true graft > random, and random small) and ``random_late``."""
    statement = (
        "the late it-to-pt graft raises late KL more than the norm-matched random control, "
        f"and the random control alone is small (CI includes 0, or |random| <= "
        f"{RANDOM_SMALL_FRACTION:g} x |true graft|)"
    )
    alone = "the norm-matched random late control alone barely moves late KL"
    paper, paper_random = "+0.324 (true +0.327 - random +0.003)", "+0.003 (true graft +0.327)"
    has_random = not rows[
        (rows["direction"] == "it-to-pt") & (rows["mode"] == "random") & (rows["window"] == "late")
    ].empty
    if not (have_module and has_random):
        why = "no late module and random graft"
        return [
            _not_run(pair, "graft_vs_random", statement, why, paper),
            _not_run(pair, "random_late", alone, why, paper_random),
        ]
    base = {"direction": "it-to-pt", "window": "late"}
    difference = paired_difference(
        rows, {**base, "mode": "module"}, {**base, "mode": "random"}, seed=seed
    )
    true, random = _late_mean(rows, "module", seed), _late_mean(rows, "random", seed)
    includes_zero = random[1] <= 0.0 <= random[2]
    small = includes_zero or abs(random[0]) <= RANDOM_SMALL_FRACTION * abs(true[0])
    if random[3] < MIN_PROMPTS or not random[2] > random[1]:
        small_verdict = INCONCLUSIVE
    else:
        small_verdict = HOLDS if small else FAILS
    larger = decide(difference[1], difference[2], +1, difference[3])
    verdicts = {larger, small_verdict}
    overall = FAILS if FAILS in verdicts else HOLDS if verdicts == {HOLDS} else INCONCLUSIVE
    detail = (
        f"true graft {true[0]:+.4f} [{true[1]:+.4f}, {true[2]:+.4f}] (paper +0.327); "
        f"random {random[0]:+.4f} [{random[1]:+.4f}, {random[2]:+.4f}] (paper +0.003), "
        f"{abs(random[0]) / abs(true[0]) if true[0] else float('nan'):.3f} of the true graft; "
        f"module > random: {larger}; random small: {small_verdict}"
    )
    mean, low, high, n, tokens = difference
    return [
        Claim(
            pair, "graft_vs_random", statement, mean, low, high, n, tokens, overall, paper, detail
        ),
        Claim(
            pair,
            "random_late",
            alone,
            *random[:3],
            random[3],
            random[4],
            small_verdict,
            paper_random,
            f"small: CI includes 0 or |random| <= {RANDOM_SMALL_FRACTION:g} x |true graft| "
            f"({true[0]:+.4f})",
        ),
    ]


def evaluate_claims(
    tables: dict[str, pd.DataFrame], pairs: list[str], *, seed: int = 0
) -> pd.DataFrame:
    """Every claim on every pair, from the study tables (:func:`collect_tables`); one row per
    (pair, claim) with the measured value, CI, counts, verdict and the paper's figure."""
    gap = tables.get("convergence_gap")
    prompts = tables.get("graft_prompt_effects")
    claims = []
    for pair in pairs:
        claims += _gap_claims(pair, gap)
        claims += _effect_claims(pair, prompts, seed)
    return pd.DataFrame([asdict(c) for c in claims])
