"""Statistics over prompts: means with bootstrap confidence intervals, seeded.

Everything here resamples *prompts* (the independent units), never tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MeanCI", "bootstrap_mean_ci"]


@dataclass(frozen=True)
class MeanCI:
    """A mean over prompts with its percentile-bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    sem: float
    n: int


def bootstrap_mean_ci(
    values: np.ndarray, *, level: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> MeanCI:
    """Mean of ``values`` (one per prompt) and a percentile bootstrap CI, reproducible by seed.

    NaNs are dropped. With fewer than two values the interval is the mean itself.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    n = int(values.size)
    if n == 0:
        return MeanCI(float("nan"), float("nan"), float("nan"), float("nan"), 0)
    mean = float(values.mean())
    if n < 2:
        return MeanCI(mean, mean, mean, float("nan"), n)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, n, size=(n_resamples, n))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    sem = float(values.std(ddof=1) / np.sqrt(n))
    return MeanCI(mean, float(low), float(high), sem, n)
