"""Dose-response summaries of a steering sweep: per-prompt scores against α, slopes, ratios.

The input is the long table of a ``steer`` run, one row per (prompt, arm, α, scorer) with the
scorer's ``group`` (``governance``, ``content`` or ``lens``) and its ``value`` (NaN where the
scorer does not apply). Prompts are the independent units: every interval is a bootstrap over
prompts, resampled in prompt-id order (:func:`hooklab.stats.in_prompt_order`).

* :func:`measure_scores`: per (prompt, arm, α) one value per *measure*: each scorer as it is,
  and each group's mean over its scorers, *oriented* so that higher means more assistant-like
  (governance) or better (content): ``raw_continuation`` and ``repetition`` enter the group
  means as ``1 − value`` (:data:`REVERSED`);
* :func:`dose_response`: the mean over prompts at every α, with a bootstrap CI;
* :func:`prompt_slopes` / :func:`slope_table`: each prompt's least-squares slope of its score
  against α, and their mean with a bootstrap CI;
* :func:`specificity`: the ratio of two arms' mean slopes (true direction / random control),
  its CI from resampling prompts jointly for both arms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from hooklab.stats import bootstrap_mean_ci, in_prompt_order

__all__ = [
    "REVERSED",
    "GROUPS",
    "measure_scores",
    "dose_response",
    "prompt_slopes",
    "slope_table",
    "specificity",
]

#: scorers whose higher value is less assistant-like / worse content: ``1 − value`` in groups
REVERSED = frozenset({"raw_continuation", "repetition"})
#: groups averaged into one measure each
GROUPS = ("governance", "content")

_KEYS = ["prompt_id", "arm", "alpha"]


def measure_scores(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (prompt, arm, α, measure): the group means (oriented) and every scorer.

    Args:
        table: rows ``prompt_id, arm, alpha, scorer, group, value``.

    Returns:
        Rows ``prompt_id, arm, alpha, measure, value``; a group mean is the mean of the
        prompt's non-NaN oriented scorer values (NaN when it has none).
    """
    table = table.assign(
        arm=table["arm"].astype(str),
        scorer=table["scorer"].astype(str),
        group=table["group"].astype(str),
        value=table["value"].astype(float),
    )
    scorers = table[_KEYS + ["scorer", "value"]].rename(columns={"scorer": "measure"})
    grouped = table[table["group"].isin(GROUPS)]
    oriented = np.where(grouped["scorer"].isin(REVERSED), 1.0 - grouped["value"], grouped["value"])
    means = (
        grouped.assign(value=oriented)
        .groupby(_KEYS + ["group"], observed=True, sort=False)["value"]
        .mean()  # skips NaN
        .reset_index()
        .rename(columns={"group": "measure"})
    )
    return pd.concat([means, scorers], ignore_index=True)


def dose_response(scores: pd.DataFrame, *, seed: int = 0, n_resamples: int = 2000) -> pd.DataFrame:
    """Mean over prompts of each (arm, measure, α), with a percentile bootstrap 95% CI.

    Returns rows ``arm, measure, alpha, mean, ci_low, ci_high, n_prompts``.
    """
    rows = []
    scores = in_prompt_order(scores)  # resampled in prompt-id order, whatever the row order
    for (arm, measure, alpha), group in scores.groupby(["arm", "measure", "alpha"], sort=True):
        ci = bootstrap_mean_ci(group["value"].to_numpy(), seed=seed, n_resamples=n_resamples)
        rows.append(
            {
                "arm": arm,
                "measure": measure,
                "alpha": float(alpha),
                "mean": ci.mean,
                "ci_low": ci.low,
                "ci_high": ci.high,
                "n_prompts": ci.n,
            }
        )
    return pd.DataFrame(
        rows, columns=["arm", "measure", "alpha", "mean", "ci_low", "ci_high", "n_prompts"]
    )


def _slope(alphas: np.ndarray, values: np.ndarray) -> float:
    """Least-squares slope of ``values`` on ``alphas`` over the non-NaN points (NaN if fewer
    than two distinct α)."""
    keep = ~np.isnan(values)
    x, y = alphas[keep], values[keep]
    if np.unique(x).size < 2:
        return float("nan")
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def prompt_slopes(scores: pd.DataFrame) -> pd.DataFrame:
    """Each prompt's least-squares slope of the score against α, per (arm, measure).

    Returns rows ``prompt_id, arm, measure, slope, n_alphas``.
    """
    rows = []
    for (prompt, arm, measure), group in scores.groupby(["prompt_id", "arm", "measure"], sort=True):
        alphas = group["alpha"].to_numpy(dtype=float)
        values = group["value"].to_numpy(dtype=float)
        rows.append(
            {
                "prompt_id": prompt,
                "arm": arm,
                "measure": measure,
                "slope": _slope(alphas, values),
                "n_alphas": int((~np.isnan(values)).sum()),
            }
        )
    return pd.DataFrame(rows, columns=["prompt_id", "arm", "measure", "slope", "n_alphas"])


def slope_table(slopes: pd.DataFrame, *, seed: int = 0, n_resamples: int = 2000) -> pd.DataFrame:
    """Mean per-prompt slope of each (arm, measure), with a bootstrap 95% CI over prompts.

    Returns rows ``arm, measure, slope, ci_low, ci_high, n_prompts``.
    """
    rows = []
    slopes = in_prompt_order(slopes)
    for (arm, measure), group in slopes.groupby(["arm", "measure"], sort=True):
        ci = bootstrap_mean_ci(group["slope"].to_numpy(), seed=seed, n_resamples=n_resamples)
        rows.append(
            {
                "arm": arm,
                "measure": measure,
                "slope": ci.mean,
                "ci_low": ci.low,
                "ci_high": ci.high,
                "n_prompts": ci.n,
            }
        )
    return pd.DataFrame(rows, columns=["arm", "measure", "slope", "ci_low", "ci_high", "n_prompts"])


def specificity(
    slopes: pd.DataFrame,
    true_arm: str,
    control_arm: str,
    measures: Sequence[str],
    *,
    seed: int = 0,
    n_resamples: int = 2000,
    level: float = 0.95,
) -> pd.DataFrame:
    """Direction-specificity ratio ``mean slope(true_arm) / mean slope(control_arm)``.

    Only prompts with a slope in both arms count; each bootstrap resample draws prompts with
    replacement and uses the same draw for both arms. A resample whose control mean is 0 gives
    an infinite ratio; the interval is the percentile interval (empirical quantiles, no
    interpolation) of the resampled ratios (NaN ones, 0/0, dropped), so it can be unbounded
    when the control slope is near zero.

    Returns rows ``measure, true_arm, control_arm, ratio, ci_low, ci_high, true_slope,
    control_slope, n_prompts``.
    """
    rows = []
    for measure in measures:
        pick = slopes[slopes["measure"] == measure]
        wide = pick.pivot_table(index="prompt_id", columns="arm", values="slope", observed=True)
        if true_arm not in wide or control_arm not in wide:
            continue
        paired = wide[[true_arm, control_arm]].dropna().to_numpy(dtype=float)
        n = len(paired)
        with np.errstate(divide="ignore", invalid="ignore"):
            true_mean, control_mean = (
                paired.mean(0) if n else (np.float64("nan"), np.float64("nan"))
            )
            ratio = float(np.float64(true_mean) / np.float64(control_mean))
            low = high = float("nan")
            if n >= 2:
                draws = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
                means = paired[draws].mean(1)  # [resample, 2]
                ratios = means[:, 0] / means[:, 1]
                ratios = ratios[~np.isnan(ratios)]
                if ratios.size:
                    tail = (1 - level) / 2
                    quantiles = np.quantile(ratios, [tail, 1 - tail], method="inverted_cdf")
                    low, high = (float(q) for q in quantiles)  # no interpolation: ±inf kept
        rows.append(
            {
                "measure": measure,
                "true_arm": true_arm,
                "control_arm": control_arm,
                "ratio": ratio,
                "ci_low": low,
                "ci_high": high,
                "true_slope": float(true_mean),
                "control_slope": float(control_mean),
                "n_prompts": n,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "measure",
            "true_arm",
            "control_arm",
            "ratio",
            "ci_low",
            "ci_high",
            "true_slope",
            "control_slope",
            "n_prompts",
        ],
    )
