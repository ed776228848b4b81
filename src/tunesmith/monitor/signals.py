"""The drift signals: each a statistic of a window (larger = more unlike the training inputs).

A signal knows its statistic, the pool its null windows are drawn from, and how to
say what changed in plain units (the window's value next to the reference's). The
statistics are deliberately simple (a distance between means or distributions) because
their nulls are calibrated empirically (`calibrate.py`): no normality is assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tunesmith.monitor.classifier import domain_auc
from tunesmith.monitor.features import Features
from tunesmith.monitor.mmd import MAX_PER_SIDE, MMDAgainstReference

MIN_VALIDATION = 20
"""Fewer validation prompts than this give no perplexity reference worth testing against."""
PERPLEXITY_SAMPLE = 100
"""Prompts per window scored by the fine-tuned model (`SampledWindowMean`). The mean of
100 log-perplexities has a tenth of one prompt's spread; scoring 100 of every 500 inputs
kept 100k inputs to 1,538 s on 2 CPU cores, of which about 18 minutes were perplexity
(`python benchmarks/monitor_scale.py`); scoring all would take about 1.5 hours."""


class Signal(Protocol):
    name: str
    meaning: str
    pool: np.ndarray
    """Item indices null windows are drawn from (never the reference half)."""

    def statistic(self, window: np.ndarray) -> float: ...

    def values(self, window: np.ndarray, statistic: float) -> tuple[float, float]:
        """(window value, reference value) in the signal's own units, for the report."""
        ...


def capped(window: np.ndarray, seed: int = 0, size: int = MAX_PER_SIDE) -> np.ndarray:
    """At most ``size`` items of a window, a seeded subsample past that.

    A function of the window alone: a null window and a live window of the same size
    are cut the same way, which is what keeps a capped statistic's null exact.
    """
    if len(window) <= size:
        return window
    return np.sort(np.random.default_rng(seed).choice(window, size, replace=False))


class EmbeddingMMD:
    name = "embedding_mmd"
    meaning = "MMD² between sentence embeddings of the window and of the training inputs"

    def __init__(self, features: Features) -> None:
        self.features = features
        self.pool = features.calibration
        self.mmd = MMDAgainstReference(features.embeddings[features.embedding_reference])

    def statistic(self, window: np.ndarray) -> float:
        return self.mmd(self.features.embeddings[capped(window)])

    def values(self, window: np.ndarray, statistic: float) -> tuple[float, float]:
        return statistic, 0.0


class DomainClassifier:
    name = "domain_classifier_auc"
    meaning = "cross-validated AUC of a classifier telling window inputs from training inputs"

    def __init__(self, features: Features, seed: int = 0) -> None:
        self.features = features
        self.pool = features.calibration
        self.seed = seed
        self._reference = features.projected[features.embedding_reference]

    def score(self, window: np.ndarray):
        return domain_auc(self.features.projected[window], self._reference, self.seed)

    def statistic(self, window: np.ndarray) -> float:
        return self.score(capped(window)).auc

    def values(self, window: np.ndarray, statistic: float) -> tuple[float, float]:
        return statistic, 0.5


@dataclass
class MeanShift:
    """|mean(window) − mean(reference)| of a per-item number; NaN items (no answer) skipped."""

    name: str
    meaning: str
    column: np.ndarray
    reference: np.ndarray
    pool: np.ndarray

    def __post_init__(self) -> None:
        self._reference_mean = float(np.nanmean(self.column[self.reference]))

    def statistic(self, window: np.ndarray) -> float:
        values = self.column[window]
        if np.all(np.isnan(values)):
            return 0.0
        return abs(float(np.nanmean(values)) - self._reference_mean)

    def values(self, window: np.ndarray, statistic: float) -> tuple[float, float]:
        values = self.column[window]
        mean = float(np.nanmean(values)) if not np.all(np.isnan(values)) else float("nan")
        return mean, self._reference_mean


@dataclass
class WindowMean:
    """mean(window), one-sided: for numbers whose reference value is not a sample of the
    reference half (the unseen-token share is 0 there by construction)."""

    name: str
    meaning: str
    column: np.ndarray
    reference_value: float
    pool: np.ndarray

    def statistic(self, window: np.ndarray) -> float:
        values = self.column[window]
        return 0.0 if np.all(np.isnan(values)) else float(np.nanmean(values))

    def values(self, window: np.ndarray, statistic: float) -> tuple[float, float]:
        return statistic, self.reference_value


@dataclass
class SampledWindowMean:
    """mean(window) over a seeded sample of at most ``sample`` of its items, one-sided.

    For a per-item number too costly to compute for every input (perplexity needs a
    forward pass of the fine-tuned model): only the sampled live items are scored, and
    null windows are sampled the same way (`capped`), so the null is calibrated at the
    sample size the live windows are measured at. Perplexity's reference is the
    validation prompts, which are also its pool.
    """

    name: str
    meaning: str
    column: np.ndarray
    reference_value: float
    pool: np.ndarray
    sample: int
    seed: int = 0

    def sampled(self, window: np.ndarray) -> np.ndarray:
        return capped(window, self.seed, self.sample)

    def statistic(self, window: np.ndarray) -> float:
        values = self.column[self.sampled(window)]
        return 0.0 if np.all(np.isnan(values)) else float(np.nanmean(values))

    def values(self, window: np.ndarray, statistic: float) -> tuple[float, float]:
        return statistic, self.reference_value


@dataclass
class Histogram:
    """Total variation distance between category shares of the window and the reference."""

    name: str
    meaning: str
    codes: np.ndarray
    categories: int
    reference: np.ndarray
    pool: np.ndarray

    def __post_init__(self) -> None:
        self._reference_shares = self.shares(self.reference)

    def shares(self, items: np.ndarray) -> np.ndarray:
        codes = self.codes[items]
        codes = codes[codes >= 0]
        counts = np.bincount(codes, minlength=self.categories).astype(np.float64)
        return counts / max(counts.sum(), 1.0)

    def statistic(self, window: np.ndarray) -> float:
        return 0.5 * float(np.abs(self.shares(window) - self._reference_shares).sum())

    def values(self, window: np.ndarray, statistic: float) -> tuple[float, float]:
        return statistic, 0.0


def build_signals(
    features: Features, seed: int = 0, perplexity_sample: int = PERPLEXITY_SAMPLE
) -> list[Signal]:
    """The signals that apply to this run and these inputs (output checks need answers)."""
    f = features
    ref, pool = f.reference, f.calibration
    signals: list[Signal] = [
        EmbeddingMMD(f),
        DomainClassifier(f, seed),
        MeanShift("length_tokens", "mean length in tokens (run's tokenizer)", f.lengths, ref, pool),
        WindowMean(
            "unseen_token_share",
            "share of tokens that never occur in the training inputs",
            f.unseen,
            float(f.unseen[pool].mean()),
            pool,
        ),
        MeanShift("nonletter_share", "share of non-letter characters", f.nonletter, ref, pool),
        Histogram(
            "script_mix", "Unicode script mix (TVD)", f.scripts, len(f.script_names), ref, pool
        ),
    ]
    if f.log_perplexity is not None and len(f.validation) >= MIN_VALIDATION:
        signals.append(
            SampledWindowMean(
                "perplexity",
                f"mean log-perplexity under the fine-tuned model of {perplexity_sample} "
                "sampled prompts per window (all, in smaller windows); reference: the run's "
                "validation prompts",
                f.log_perplexity,
                float(np.nanmean(f.log_perplexity[f.validation])),
                f.validation,
                perplexity_sample,
                seed,
            )
        )
    if f.labels is not None:
        signals.append(
            Histogram(
                "predicted_labels",
                "answered labels against the training labels (TVD)",
                f.labels,
                len(f.label_names),
                ref,
                pool,
            )
        )
    if f.json_valid is not None:
        signals.append(
            MeanShift(
                "json_validity", "share of answers that are valid JSON", f.json_valid, ref, pool
            )
        )
    if f.refusal is not None:
        signals.append(
            MeanShift(
                "empty_or_refusal",
                "share of answers that are empty or refuse",
                f.refusal,
                ref,
                pool,
            )
        )
    return signals
