"""Bootstrap intervals on samples whose true answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from tunesmith.evaluate.bootstrap import mean_interval, paired_difference_interval
from tunesmith.evaluate.metrics import macro_f1


def test_difference_of_exactly_0_2_is_found_with_a_narrow_interval() -> None:
    rng = np.random.default_rng(0)
    n = 5000
    baseline = rng.integers(0, 2, size=n).astype(float)
    improved = baseline.copy()
    wrong = np.flatnonzero(baseline == 0)
    improved[rng.choice(wrong, size=n // 5, replace=False)] = 1.0
    interval = paired_difference_interval(improved, baseline, n_resamples=1000, seed=3)
    assert interval.estimate == pytest.approx(0.2)
    assert interval.contains(0.2)
    assert interval.high - interval.low < 0.03


def test_identical_systems_give_an_interval_around_zero() -> None:
    scores = np.random.default_rng(1).random(300)
    interval = paired_difference_interval(scores, scores.copy(), n_resamples=500)
    assert interval.estimate == 0.0
    assert interval.contains(0.0)
    assert interval.low == interval.high == 0.0


def test_seeded_and_reproducible() -> None:
    scores = np.random.default_rng(2).random(100)
    assert mean_interval(scores, seed=7) == mean_interval(scores, seed=7)
    assert mean_interval(scores, seed=7) != mean_interval(scores, seed=8)


def test_mean_interval_covers_the_mean_with_the_expected_width() -> None:
    scores = np.random.default_rng(4).integers(0, 2, size=2000).astype(float)
    interval = mean_interval(scores, n_resamples=2000)
    standard_error = scores.std() / np.sqrt(len(scores))
    assert interval.contains(scores.mean())
    assert interval.high - interval.low == pytest.approx(2 * 1.96 * standard_error, rel=0.15)


def test_corpus_metric_is_recomputed_per_resample() -> None:
    labels = ["a", "b"]
    references = ["a"] * 50 + ["b"] * 50
    predictions = ["a"] * 50 + ["a"] * 25 + ["b"] * 25
    result = macro_f1(predictions, references, labels)
    interval = mean_interval(result.stats, result.aggregate, n_resamples=500)
    assert interval.estimate == pytest.approx(result.value)
    assert interval.low < result.value < interval.high
    # Macro-F1 is not the mean of per-item correctness (0.75); the bootstrap must not average.
    assert result.value != pytest.approx(result.per_item.mean())
