"""Fine-tuned vs baselines on the same test items: table, bootstrap intervals, plain verdict.

The question a user has after fine-tuning is "was it worth it, or would a good prompt
have done?". The answer compares the fine-tuned system with the *best* baseline on the
primary metric and says so in one sentence, with a paired-bootstrap 95% interval, so
a lucky few items cannot pass for an improvement.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from tunesmith.data.records import Conversation
from tunesmith.evaluate.bootstrap import (
    DEFAULT_RESAMPLES,
    BootstrapInterval,
    mean_interval,
    paired_difference_interval,
)
from tunesmith.evaluate.generate import split_prompt_and_reference
from tunesmith.evaluate.metrics import METRICS, MetricScores, compute_metric, default_metric_names

BASE_ZERO_SHOT = "base zero-shot"
BASE_FEW_SHOT = "base few-shot"
FINE_TUNED = "fine-tuned"


@dataclass(frozen=True)
class MetricRow:
    """One metric: each system's value with its interval, and the gap to the best baseline."""

    metric: str
    intervals: dict[str, BootstrapInterval]
    best_baseline: str
    difference: BootstrapInterval
    higher_is_better: bool = True
    proportion: bool = True

    @property
    def values(self) -> dict[str, float]:
        return {system: interval.estimate for system, interval in self.intervals.items()}

    @property
    def clearly_better(self) -> bool:
        """The whole interval of the difference lies on the good side of zero."""
        if self.higher_is_better:
            return self.difference.low > 0
        return self.difference.high < 0

    @property
    def clearly_worse(self) -> bool:
        if self.higher_is_better:
            return self.difference.high < 0
        return self.difference.low > 0

    def shown(self, value: float) -> str:
        """A value as tables print it: points for shares, 4 significant digits otherwise."""
        return f"{value * 100:.1f}" if self.proportion else f"{value:.4g}"

    def shown_difference(self, value: float) -> str:
        return f"{value * 100:+.1f}" if self.proportion else f"{value:+.4g}"


@dataclass(frozen=True)
class Comparison:
    """The outcome of `compare_systems`; ``scores[metric][system]`` keeps per-item scores."""

    candidate: str
    systems: list[str]
    rows: list[MetricRow]
    scores: dict[str, dict[str, MetricScores]]
    n_items: int
    verdict: str
    beats_baseline: bool

    @property
    def primary(self) -> MetricRow:
        """The first metric: the one the verdict is about."""
        return self.rows[0]

    def to_dict(self) -> dict[str, object]:
        """Everything except the per-item statistics, JSON-ready."""

        def interval(value: BootstrapInterval) -> dict[str, float]:
            return {"estimate": value.estimate, "low": value.low, "high": value.high}

        return {
            "candidate": self.candidate,
            "systems": self.systems,
            "n_items": self.n_items,
            "verdict": self.verdict,
            "beats_baseline": self.beats_baseline,
            "confidence": self.primary.difference.confidence,
            "n_resamples": self.primary.difference.n_resamples,
            "metrics": [
                {
                    "metric": row.metric,
                    "values": {system: interval(ci) for system, ci in row.intervals.items()},
                    "best_baseline": row.best_baseline,
                    "difference_vs_best_baseline": interval(row.difference),
                    "per_item": {
                        system: self.scores[row.metric][system].per_item.tolist()
                        for system in self.systems
                    },
                }
                for row in self.rows
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def references_for(test_items: Sequence[Conversation], metric_name: str) -> list[str]:
    """Label metrics compare with the item's label; all others with the reference reply."""
    spec = METRICS.get(metric_name.partition(":")[0])
    if spec is not None and spec.needs_labels:
        return [str(item.label) for item in test_items]
    return [split_prompt_and_reference(item)[1] for item in test_items]


def verdict_line(
    candidate: str,
    row: MetricRow,
    *,
    advice: str = "consider prompting",
    baseline_kind: str = " prompting",
) -> tuple[str, bool]:
    """The sentence a user reads first, and whether the candidate clearly wins.

    ``advice`` ends the sentence when the candidate does not clearly win; ``baseline_kind``
    follows the baseline's name there (the baselines of a chat evaluation are prompts).
    """
    difference = row.difference
    shown = row.shown_difference
    interval = f"{difference.confidence:.0%} CI [{shown(difference.low)}, {shown(difference.high)}]"
    unit = " points" if row.proportion else ""
    direction = "" if row.higher_is_better else " (lower is better)"
    if not row.proportion:  # a value without a scale of its own: say both ends
        values = row.values
        direction += (
            f": {row.best_baseline} {row.shown(values[row.best_baseline])} → "
            f"{candidate} {row.shown(values[candidate])},"
        )
    if row.clearly_better:
        return (
            f"{candidate} beats the best baseline ({row.best_baseline}) on {row.metric}"
            f"{direction} by {row.shown(abs(difference.estimate))}{unit}, {interval}",
            True,
        )
    return (
        f"{candidate} does not beat {row.best_baseline}{baseline_kind} on {row.metric}{direction} "
        f"(difference {shown(difference.estimate)}{unit}, {interval}): {advice}",
        False,
    )


def compare_scores(
    scores: dict[str, dict[str, MetricScores]],
    *,
    candidate: str = FINE_TUNED,
    n_items: int,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    advice: str = "consider prompting",
    baseline_kind: str = " prompting",
) -> Comparison:
    """Intervals, the gap to the best baseline and the verdict from per-system scores.

    ``scores[metric][system]`` holds every system's scores on the same items, in the same
    order; the first metric is the primary one. Any evaluation (generated replies,
    preference pairs, held-out text) ends here, so all verdicts read the same.
    """
    options = {"confidence": confidence, "n_resamples": n_resamples, "seed": seed}
    rows: list[MetricRow] = []
    systems: list[str] = []
    for metric, per_system in scores.items():
        systems = list(per_system)
        if candidate not in per_system or len(per_system) < 2:
            raise ValueError(f"{metric}: systems must include {candidate!r} and a baseline")
        reference = per_system[candidate]
        intervals = {
            system: mean_interval(result.stats, result.aggregate, **options)
            for system, result in per_system.items()
        }
        baselines = [system for system in per_system if system != candidate]
        sign = 1 if reference.higher_is_better else -1
        best = max(baselines, key=lambda system: sign * per_system[system].value)
        difference = paired_difference_interval(
            reference.stats, per_system[best].stats, reference.aggregate, **options
        )
        rows.append(
            MetricRow(
                metric,
                intervals,
                best,
                difference,
                higher_is_better=reference.higher_is_better,
                proportion=reference.proportion,
            )
        )
    verdict, beats = verdict_line(candidate, rows[0], advice=advice, baseline_kind=baseline_kind)
    return Comparison(candidate, systems, rows, scores, n_items, verdict, beats)


def compare_systems(
    test_items: Sequence[Conversation],
    systems: dict[str, list[str]],
    metric_names: Sequence[str] | None = None,
    *,
    candidate: str = FINE_TUNED,
    labels: Sequence[str] | None = None,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Comparison:
    """Score every system's outputs on the same items and compare ``candidate`` to the rest.

    ``systems`` maps a name to one output per test item, in item order. The first metric is
    the primary one; for each metric the best baseline is the baseline with the highest value.
    ``labels`` defaults to the labels present on the test items.
    """
    if candidate not in systems or len(systems) < 2:
        raise ValueError(f"systems must include {candidate!r} and at least one baseline")
    for name, outputs in systems.items():
        if len(outputs) != len(test_items):
            raise ValueError(f"{name}: {len(outputs)} outputs for {len(test_items)} test items")
    names = list(metric_names) if metric_names else default_metric_names(test_items)
    known_labels = (
        list(labels)
        if labels
        else sorted({str(item.label) for item in test_items if item.label is not None})
    )
    scores: dict[str, dict[str, MetricScores]] = {}
    for metric in names:
        references = references_for(test_items, metric)
        scores[metric] = {
            system: compute_metric(metric, outputs, references, known_labels)
            for system, outputs in systems.items()
        }
    return compare_scores(
        scores,
        candidate=candidate,
        n_items=len(test_items),
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
    )


def comparison_table(comparison: Comparison) -> Table:
    """A rich table: one row per metric, one column per system, then the gap with its CI."""
    table = Table(title=f"{comparison.n_items} test items", title_justify="left")
    table.add_column("metric", style="bold")
    for system in comparison.systems:
        table.add_column(system, justify="right")
    table.add_column(f"{comparison.candidate} - best baseline", justify="right")
    for row in comparison.rows:
        cells = [row.shown(row.values[system]) for system in comparison.systems]
        difference = row.difference
        colour = "green" if row.clearly_better else "red" if row.clearly_worse else "yellow"
        shown = row.shown_difference
        gap = (
            f"[{colour}]{shown(difference.estimate)}[/{colour}] "
            f"[{shown(difference.low)}, {shown(difference.high)}] vs {row.best_baseline}"
        )
        table.add_row(row.metric, *cells, gap)
    return table


def print_comparison(comparison: Comparison, console: Console | None = None) -> None:
    """Print the table and the verdict (shares in points: metric x 100)."""
    console = console or Console()
    console.print(comparison_table(comparison))
    style = "bold green" if comparison.beats_baseline else "bold yellow"
    console.print(comparison.verdict, style=style)
