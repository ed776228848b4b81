"""Champion vs challenger on the same test items, with the paired bootstrap.

Both models answer every item of a test slice (the most likely known label for label
tasks, a greedy reply otherwise, as `tunesmith eval` scores them), each on the slice's
primary metric; the paired bootstrap (`paired_difference_interval`) gives the interval
of challenger − champion. The gate promotes only when the challenger is better on the
new slice (the interval lies above 0) and not worse than ``margin`` on the old one (the
interval's lower end lies above −margin): new data must help, and may not cost more
than the stated margin on what the champion already did well.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from tunesmith.data.records import Conversation
from tunesmith.evaluate.bootstrap import BootstrapInterval, paired_difference_interval
from tunesmith.evaluate.compare import references_for
from tunesmith.evaluate.generate import (
    classify_with_labels,
    generate_replies,
    split_prompt_and_reference,
)
from tunesmith.evaluate.metrics import MetricScores, compute_metric, default_metric_names
from tunesmith.evaluate.task import as_classification
from tunesmith.monitor.errors import MonitorError
from tunesmith.runs import TrainedModel

DEFAULT_MARGIN = 0.02
"""How much worse (in metric units, e.g. 2 accuracy points) the old slice may get."""


@dataclass(frozen=True)
class Slice:
    name: str
    items: list[Conversation]


@dataclass(frozen=True)
class SliceComparison:
    name: str
    metric: str
    n_items: int
    champion: float
    challenger: float
    difference: BootstrapInterval
    """challenger − champion, oriented so that positive is better (perplexity flipped)."""

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "difference": asdict(self.difference)}


def _task(slice_: Slice, train_items: Sequence[Conversation]):
    test, train, _ = as_classification(slice_.items, train_items)
    if not test:
        raise MonitorError(
            f"the {slice_.name} test slice is empty, so champion and challenger cannot be "
            "compared on it. Fix: give the run a test split (data.split) and --add more rows."
        )
    labels = None
    if all(item.label is not None for item in test):
        labels = sorted({str(i.label) for i in [*test, *train] if i.label is not None})
    return test, labels, default_metric_names(test)[0]


def score_slice(
    trained: TrainedModel,
    slice_: Slice,
    train_items: Sequence[Conversation],
    metric: str | None = None,
) -> MetricScores:
    """One model's per-item scores on a slice (the label set comes from ``train_items``)."""
    test, labels, default = _task(slice_, train_items)
    prompts = [split_prompt_and_reference(item)[0] for item in test]
    with trained.precision.autocast(trained.device):
        if labels:
            answers = classify_with_labels(trained.model, trained.tokenizer, prompts, labels)
        else:
            answers = generate_replies(trained.model, trained.tokenizer, prompts)
    name = metric or default
    return compute_metric(name, answers, references_for(test, name), labels)


def compare_on_slice(
    champion: TrainedModel,
    challenger: TrainedModel,
    slice_: Slice,
    train_items: Sequence[Conversation],
    seed: int = 0,
) -> SliceComparison:
    old = score_slice(champion, slice_, train_items)
    new = score_slice(challenger, slice_, train_items, old.name)
    better, worse = (new, old) if old.higher_is_better else (old, new)
    interval = paired_difference_interval(better.stats, worse.stats, better.aggregate, seed=seed)
    return SliceComparison(slice_.name, old.name, len(slice_.items), old.value, new.value, interval)


def gate_decision(new_slice: SliceComparison, old_slice: SliceComparison, margin: float) -> str:
    """Why the challenger is promoted or not, in one sentence ("promoted: …" or "kept: …")."""
    new_ok = new_slice.difference.low > 0
    old_ok = old_slice.difference.low > -margin
    detail = (
        f"new slice {new_slice.metric} {new_slice.champion:.3f} → {new_slice.challenger:.3f} "
        f"(95% CI of the gain [{new_slice.difference.low:+.3f}, "
        f"{new_slice.difference.high:+.3f}]); "
        f"old test {old_slice.champion:.3f} → {old_slice.challenger:.3f} "
        f"([{old_slice.difference.low:+.3f}, {old_slice.difference.high:+.3f}], margin {margin})"
    )
    if new_ok and old_ok:
        return f"promoted: better on the new slice and within the margin on the old test; {detail}"
    reasons = []
    if not new_ok:
        reasons.append("not clearly better on the new slice")
    if not old_ok:
        reasons.append(f"may be worse than {margin} on the old test")
    return f"kept the champion: the challenger is {' and '.join(reasons)}; {detail}"
