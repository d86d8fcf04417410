"""Summaries of a behaviour scores table: arm means, paired arm differences, the gap closed.

Prompts are the independent units: every interval resamples prompts (bootstrap, seeded), and
arm differences are paired by prompt over the prompts where both arms' scores apply.

The *symmetric design* of a host model A (``pt`` or ``it``) and the other model C: B is A with
C's MLP path grafted over a window (``pt+late:it``), R its norm-matched random control
(``pt+late:random``). :func:`design_comparisons` reads the design off the arms present:

* ``B-A`` (graft − host), ``C-B`` (other − graft), ``C-A`` (other − host), ``R-A`` (control −
  host), ``B-R`` (graft − control), and ``X-A`` for a skip arm X;
* the *gap closed* by B: ``mean(B − A) / mean(C − A)`` (:func:`gap_closed`), NaN when the
  bootstrap CI of the gap ``C − A`` includes 0 (no gap to close).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hooklab.stats import bootstrap_mean_ci, sign_flip_test

__all__ = [
    "Comparison",
    "arm_means",
    "design_comparisons",
    "gap_closed",
    "paired_difference",
    "paired_differences",
    "wide_scores",
]

N_RESAMPLES = 2000


@dataclass(frozen=True)
class Comparison:
    """One paired difference ``minuend − subtrahend`` of two arms."""

    role: str
    """``B-A``, ``C-B``, ``C-A``, ``R-A``, ``B-R`` or ``X-A``."""
    minuend: str
    subtrahend: str

    @property
    def label(self) -> str:
        return f"{self.minuend} - {self.subtrahend}"


def wide_scores(scores: pd.DataFrame, scorer: str) -> pd.DataFrame:
    """One scorer's values as a [prompt, arm] frame (NaN where the rule does not apply)."""
    chosen = scores[scores["scorer"] == scorer]
    return chosen.pivot_table(
        index="prompt_id", columns="arm", values="value", observed=True, dropna=False
    )


def _arm_order(scores: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(str(a) for a in scores["arm"]))


def arm_means(scores: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """Per scorer and arm: mean over prompts, bootstrap 95% CI, ``n`` prompts scored."""
    rows = []
    for scorer in dict.fromkeys(str(s) for s in scores["scorer"]):
        wide = wide_scores(scores, scorer)
        for arm in _arm_order(scores):
            ci = bootstrap_mean_ci(wide[arm].to_numpy(), seed=seed)
            rows.append(
                {
                    "scorer": scorer,
                    "arm": arm,
                    "mean": ci.mean,
                    "ci_low": ci.low,
                    "ci_high": ci.high,
                    "n": ci.n,
                }
            )
    return pd.DataFrame(rows)


def _arms(scores: pd.DataFrame) -> pd.DataFrame:
    columns = ["arm", "host", "intervention", "window", "donor", "prompting"]
    return scores[columns].astype(str).drop_duplicates("arm").set_index("arm")


def design_comparisons(scores: pd.DataFrame) -> list[Comparison]:
    """The paired comparisons of the symmetric design among the arms of ``scores``."""
    arms = _arms(scores)
    plain = {
        (row.host, row.prompting): arm for arm, row in arms.iterrows() if row.intervention == "none"
    }
    out: list[Comparison] = []
    for arm, row in arms.iterrows():
        host = plain.get((row.host, row.prompting))
        if row.intervention == "none" or host is None:
            continue
        if row.intervention == "graft":
            out.append(Comparison("B-A", str(arm), host))
            other = plain.get((row.donor, row.prompting))
            if other is not None:
                out.append(Comparison("C-B", other, str(arm)))
                out.append(Comparison("C-A", other, host))
            for control, c in arms.iterrows():
                same = (c.host, c.window, c.donor, c.prompting)
                if c.intervention == "random" and same == (
                    row.host,
                    row.window,
                    row.donor,
                    row.prompting,
                ):
                    out.append(Comparison("B-R", str(arm), str(control)))
        elif row.intervention == "random":
            out.append(Comparison("R-A", str(arm), host))
        else:
            out.append(Comparison("X-A", str(arm), host))
    return list(dict.fromkeys(out))


def paired_difference(
    scores: pd.DataFrame, scorer: str, minuend: str, subtrahend: str, *, seed: int = 0
) -> dict[str, float | int]:
    """Mean of ``minuend − subtrahend`` over prompts where both apply: CI, sign-flip p, n."""
    wide = wide_scores(scores, scorer)
    differences = (wide[minuend] - wide[subtrahend]).to_numpy(dtype=np.float64)
    differences = differences[~np.isnan(differences)]
    ci = bootstrap_mean_ci(differences, seed=seed, n_resamples=N_RESAMPLES)
    return {
        "mean": ci.mean,
        "ci_low": ci.low,
        "ci_high": ci.high,
        "p_value": sign_flip_test(differences, seed=seed),
        "n": ci.n,
    }


def paired_differences(
    scores: pd.DataFrame, comparisons: list[Comparison], *, seed: int = 0
) -> pd.DataFrame:
    """:func:`paired_difference` of every comparison for every scorer."""
    rows = []
    for scorer in dict.fromkeys(str(s) for s in scores["scorer"]):
        for c in comparisons:
            rows.append(
                {
                    "scorer": scorer,
                    "role": c.role,
                    "comparison": c.label,
                    "minuend": c.minuend,
                    "subtrahend": c.subtrahend,
                    **paired_difference(scores, scorer, c.minuend, c.subtrahend, seed=seed),
                }
            )
    columns = ["scorer", "role", "comparison", "minuend", "subtrahend", "mean"]
    return pd.DataFrame(rows, columns=[*columns, "ci_low", "ci_high", "p_value", "n"])


def _gap_row(a: np.ndarray, b: np.ndarray, c: np.ndarray, seed: int) -> dict[str, float | int]:
    """Gap ``C − A``, fraction ``mean(B − A) / mean(C − A)``, CIs from the same resamples."""
    n = a.size
    nan = float("nan")
    if n == 0:
        return dict.fromkeys(
            ["gap", "gap_ci_low", "gap_ci_high", "fraction", "ci_low", "ci_high"], nan
        ) | {"n": 0}
    gap, closed = float((c - a).mean()), float((b - a).mean())
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n, size=(N_RESAMPLES, n))
    gaps, closes = (c - a)[index].mean(axis=1), (b - a)[index].mean(axis=1)
    gap_low, gap_high = np.quantile(gaps, [0.025, 0.975]) if n > 1 else (gap, gap)
    row: dict[str, float | int] = {
        "gap": gap,
        "gap_ci_low": float(gap_low),
        "gap_ci_high": float(gap_high),
        "fraction": nan,
        "ci_low": nan,
        "ci_high": nan,
        "n": n,
    }
    if n > 1 and (gap_low > 0 or gap_high < 0):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = closes / gaps
        low, high = np.quantile(ratios[np.isfinite(ratios)], [0.025, 0.975])
        row |= {"fraction": closed / gap, "ci_low": float(low), "ci_high": float(high)}
    return row


def gap_closed(
    scores: pd.DataFrame, comparisons: list[Comparison], *, seed: int = 0
) -> pd.DataFrame:
    """Per scorer and graft arm B (with its host A and the other model C among the arms): the
    fraction of the A → C gap that B closes, with a bootstrap CI over prompts where A, B and
    C all apply. ``fraction`` and its CI are NaN when the gap's 95% CI includes 0 (``note``
    says so) or fewer than two prompts apply.
    """
    designs = []
    for c in comparisons:
        if c.role != "B-A":
            continue
        to = [x.minuend for x in comparisons if x.role == "C-B" and x.subtrahend == c.minuend]
        if to:
            designs.append((c.subtrahend, c.minuend, to[0]))
    rows = []
    for scorer in dict.fromkeys(str(s) for s in scores["scorer"]):
        wide = wide_scores(scores, scorer)
        for a, b, other in designs:
            values = wide[[a, b, other]].dropna().to_numpy(dtype=np.float64)
            row = _gap_row(values[:, 0], values[:, 1], values[:, 2], seed)
            note = ""
            if np.isnan(row["fraction"]):
                note = "no gap: the CI of C - A includes 0" if row["n"] > 1 else "too few prompts"
            rows.append({"scorer": scorer, "A": a, "B": b, "C": other, **row, "note": note})
    columns = ["scorer", "A", "B", "C", "gap", "gap_ci_low", "gap_ci_high", "fraction"]
    return pd.DataFrame(rows, columns=[*columns, "ci_low", "ci_high", "n", "note"])
