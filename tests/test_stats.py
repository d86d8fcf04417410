"""Bootstrap intervals cover a known mean at about the nominal rate; the sign-flip test."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import hooklab.stats
from hooklab.stats import bootstrap_mean_ci, sign_flip_test


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_bootstrap_ci_covers_a_known_mean_at_about_the_nominal_rate(method):
    # Skewed data (exponential, mean 1), 30 "prompts" per data set, 400 data sets.
    rng = np.random.default_rng(123)
    covered = 0
    trials = 400
    for trial in range(trials):
        sample = rng.exponential(1.0, size=30)
        ci = bootstrap_mean_ci(sample, seed=trial, method=method, n_resamples=1000)
        covered += ci.low <= 1.0 <= ci.high
    coverage = covered / trials
    assert 0.89 <= coverage <= 0.98, coverage


def test_bootstrap_is_reproducible_and_counts():
    values = np.array([0.3, 0.1, np.nan, 0.5, 0.2])
    first = bootstrap_mean_ci(values, seed=7)
    assert first == bootstrap_mean_ci(values, seed=7)
    assert first.n == 4 and first.mean == pytest.approx(0.275)
    assert first.low < first.mean < first.high
    single = bootstrap_mean_ci(np.array([2.0]))
    assert (single.mean, single.low, single.high, single.n) == (2.0, 2.0, 2.0, 1)


def test_bca_equals_percentile_for_symmetric_data_roughly():
    values = np.linspace(-1, 1, 41)
    percentile = bootstrap_mean_ci(values, seed=1)
    bca = bootstrap_mean_ci(values, seed=1, method="bca")
    assert bca.low == pytest.approx(percentile.low, abs=0.02)
    assert bca.high == pytest.approx(percentile.high, abs=0.02)


def test_sign_flip_exact_and_sampled():
    assert sign_flip_test(np.ones(8)) == pytest.approx(2 / 256)
    assert sign_flip_test(np.array([1.0, -1.0, 1.0, -1.0])) == 1.0
    rng = np.random.default_rng(0)
    null = [sign_flip_test(rng.normal(size=12)) for _ in range(300)]
    assert 0.02 <= np.mean(np.array(null) < 0.05) <= 0.09  # about 5% rejections under the null
    assert sign_flip_test(rng.normal(0.8, 1.0, size=40), seed=3) < 0.01  # sampled path


def test_doctests():
    assert doctest.testmod(hooklab.stats).failed == 0
