"""Nulls from reference-vs-reference splits, p-values, effect sizes and the Holm correction.

For a window of ``n`` inputs, each signal's statistic is recomputed on ``draws`` windows
of ``n`` drawn from the calibration half of the training inputs (never the reference
half they are compared with). Under no drift a live window is one more such draw, so
``p = (1 + #{null ≥ observed}) / (draws + 1)`` is exact for any statistic, and the
smallest p a test can give is ``1 / (draws + 1)``: `DEFAULT_DRAWS` keeps that below the
Holm threshold ``α / k`` for up to 20 signals at α = 0.05.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from tunesmith.monitor.signals import Signal

DEFAULT_DRAWS = 400
DEFAULT_ALPHA = 0.05
POWER = 0.8


def draw_windows(pool: np.ndarray, n: int, draws: int, seed: int) -> list[np.ndarray]:
    """Null windows of ``n`` items from ``pool``; with replacement only if the pool is smaller."""
    rng = np.random.default_rng([seed, n])
    replace = n > len(pool)
    return [np.sort(rng.choice(pool, size=n, replace=replace)) for _ in range(draws)]


def null_distributions(
    signals: Sequence[Signal],
    n: int,
    *,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Each signal's statistic on ``draws`` reference-vs-reference windows of size ``n``."""
    windows: dict[int, list[np.ndarray]] = {}
    nulls: dict[str, np.ndarray] = {}
    for done, signal in enumerate(signals):
        key = id(signal.pool)
        if key not in windows:
            windows[key] = draw_windows(signal.pool, n, draws, seed)
        nulls[signal.name] = np.array([signal.statistic(w) for w in windows[key]])
        if on_progress is not None:
            on_progress(done + 1, len(signals))
    return nulls


def p_value(observed: float, null: np.ndarray) -> float:
    return float((1 + np.sum(null >= observed - 1e-12)) / (len(null) + 1))


def effect_size(observed: float, null: np.ndarray) -> float:
    """How many null standard deviations the statistic lies above the null mean."""
    spread = float(null.std())
    return float((observed - null.mean()) / spread) if spread > 0 else 0.0


def detectable_statistic(null: np.ndarray, level: float) -> float:
    """The statistic a shift must reach to be flagged with `POWER` at ``level``.

    The critical value is the null's ``1 - level`` quantile; a shifted window's
    statistic is taken to spread like the null, so POWER needs the critical value plus
    z(POWER) null standard deviations. Approximate, and stated as such in the report.
    """
    critical = float(np.quantile(null, 1 - level))
    return critical + NormalDist().inv_cdf(POWER) * float(null.std())


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control across signals)."""
    k = len(p_values)
    order = sorted(range(k), key=lambda i: p_values[i])
    adjusted = [0.0] * k
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (k - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass
class SignalResult:
    name: str
    meaning: str
    statistic: float
    p_value: float
    p_adjusted: float
    effect_size: float
    window_value: float
    reference_value: float
    null_mean: float
    null_p95: float
    detectable: float
    drifted: bool

    def to_dict(self) -> dict[str, object]:
        return {key: _rounded(value) for key, value in self.__dict__.items()}


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return None if np.isnan(value) else round(value, 6)
    return value


def test_window(
    signals: Sequence[Signal],
    window: np.ndarray,
    nulls: dict[str, np.ndarray],
    alpha: float = DEFAULT_ALPHA,
) -> list[SignalResult]:
    """Every signal on one window, with p-values corrected across signals (Holm)."""
    observed = [signal.statistic(window) for signal in signals]
    raw = [p_value(value, nulls[s.name]) for s, value in zip(signals, observed, strict=True)]
    adjusted = holm_adjusted(raw)
    level = alpha / max(len(signals), 1)
    results = []
    for signal, value, p, q in zip(signals, observed, raw, adjusted, strict=True):
        null = nulls[signal.name]
        window_value, reference_value = signal.values(window, value)
        results.append(
            SignalResult(
                signal.name,
                signal.meaning,
                value,
                p,
                q,
                effect_size(value, null),
                window_value,
                reference_value,
                float(null.mean()),
                float(np.quantile(null, 0.95)),
                detectable_statistic(null, level),
                q <= alpha,
            )
        )
    return results
