"""The statistics on synthetic data where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from tunesmith.monitor.calibrate import detectable_statistic, holm_adjusted, p_value
from tunesmith.monitor.classifier import domain_auc, roc_auc
from tunesmith.monitor.mmd import MMDAgainstReference, median_bandwidth


def test_auc_matches_the_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.normal(size=60), 1)  # ties on purpose
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert roc_auc(labels, scores) == pytest.approx(pairwise)


def test_mmd_is_near_zero_for_one_distribution_and_large_for_another() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(300, 8))
    mmd = MMDAgainstReference(reference)
    same = mmd(rng.normal(size=(100, 8)))
    shifted = mmd(rng.normal(loc=1.0, size=(100, 8)))
    assert abs(same) < 0.01
    assert shifted > 10 * max(abs(same), 1e-3)
    assert mmd.permutation_p_value(rng.normal(loc=1.0, size=(50, 8)), 99, 0) == 0.01
    assert mmd.permutation_p_value(rng.normal(size=(50, 8)), 99, 0) > 0.05


def test_median_bandwidth_is_the_median_squared_distance() -> None:
    points = np.array([[0.0], [1.0], [3.0]])  # squared distances 1, 9, 4
    assert median_bandwidth(points) == 4.0


def test_domain_classifier_separates_shifted_data_and_ranks_its_outliers_first() -> None:
    rng = np.random.default_rng(2)
    reference = rng.normal(size=(200, 6))
    window = rng.normal(size=(60, 6))
    window[:15, 0] += 4.0  # a quarter of the window is far off
    score = domain_auc(window, reference, seed=0)
    assert score.auc > 0.6
    top = set(np.argsort(-score.window_scores)[:10].tolist())
    assert len(top & set(range(15))) >= 8
    same = domain_auc(rng.normal(size=(60, 6)), reference, seed=0)
    assert 0.3 < same.auc < 0.65


def test_holm_adjusts_in_step_down_order() -> None:
    assert holm_adjusted([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjusted([0.5]) == [0.5]


def test_p_value_counts_ties_and_never_reaches_zero() -> None:
    null = np.array([0.0, 1.0, 2.0, 3.0])
    assert p_value(2.0, null) == pytest.approx(3 / 5)
    assert p_value(10.0, null) == pytest.approx(1 / 5)


def test_detectable_statistic_lies_above_the_null() -> None:
    null = np.random.default_rng(3).normal(size=4000)
    assert detectable_statistic(null, 0.05) == pytest.approx(1.645 + 0.842, abs=0.1)
