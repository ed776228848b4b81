"""Maximum mean discrepancy (MMD²) between two sets of embeddings, RBF kernel.

The bandwidth is the median heuristic, fixed once on the reference sample so that
every window and every null draw is measured with the same ruler. The unbiased
estimator (diagonal terms left out) is used, so under no drift it centres on 0 and
can be negative. Its cost is quadratic in the set sizes: callers cap each side at
`MAX_PER_SIDE` by a seeded subsample, which bounds the time and memory of a window
whatever its size (the p-value stays valid; only power is lost past the cap).
"""

from __future__ import annotations

import numpy as np

MAX_PER_SIDE = 1000


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(sq, 0.0)


def median_bandwidth(reference: np.ndarray) -> float:
    """Median pairwise squared distance of the reference (off-diagonal); the RBF's 2σ²."""
    sq = squared_distances(reference, reference)
    upper = sq[np.triu_indices(len(reference), k=1)]
    median = float(np.median(upper)) if upper.size else 1.0
    return median if median > 0 else 1.0


def rbf(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    return np.exp(-squared_distances(a, b) / bandwidth)


def _off_diagonal_mean(kernel: np.ndarray) -> float:
    n = kernel.shape[0]
    if n < 2:
        return 0.0
    return float((kernel.sum() - np.trace(kernel)) / (n * (n - 1)))


def mmd2_from_kernels(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD² from the three kernel blocks."""
    return _off_diagonal_mean(k_xx) + _off_diagonal_mean(k_yy) - 2.0 * float(k_xy.mean())


class MMDAgainstReference:
    """MMD² of any set against one fixed reference sample; the reference block is cached."""

    def __init__(self, reference: np.ndarray) -> None:
        self.reference = reference.astype(np.float32, copy=False)
        self.bandwidth = median_bandwidth(self.reference)
        self._k_yy_term = _off_diagonal_mean(rbf(self.reference, self.reference, self.bandwidth))

    def __call__(self, window: np.ndarray) -> float:
        k_xx = rbf(window, window, self.bandwidth)
        k_xy = rbf(window, self.reference, self.bandwidth)
        return _off_diagonal_mean(k_xx) + self._k_yy_term - 2.0 * float(k_xy.mean())

    def permutation_p_value(self, window: np.ndarray, draws: int, seed: int) -> float:
        """The classic two-sample permutation test: pool, reshuffle the labels, recompute."""
        pooled = np.concatenate([window, self.reference])
        kernel = rbf(pooled, pooled, self.bandwidth)
        n = len(window)
        observed = _split_mmd2(kernel, np.arange(len(pooled)), n)
        rng = np.random.default_rng(seed)
        exceed = sum(
            _split_mmd2(kernel, rng.permutation(len(pooled)), n) >= observed for _ in range(draws)
        )
        return (1 + exceed) / (draws + 1)


def _split_mmd2(kernel: np.ndarray, order: np.ndarray, n: int) -> float:
    x, y = order[:n], order[n:]
    return mmd2_from_kernels(kernel[np.ix_(x, x)], kernel[np.ix_(y, y)], kernel[np.ix_(x, y)])
