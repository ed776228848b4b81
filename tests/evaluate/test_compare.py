"""The comparison table and the verdict on outputs whose scores are known in advance."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from tunesmith.evaluate.compare import (
    BASE_FEW_SHOT,
    BASE_ZERO_SHOT,
    FINE_TUNED,
    compare_systems,
    print_comparison,
)


def _labelled_items(make_conversation, n: int = 40):
    labels = ["positive", "negative"]
    return [
        make_conversation(f"review {i}", labels[i % 2], label=labels[i % 2], line=i + 1)
        for i in range(n)
    ]


def _answers(items, n_correct: int) -> list[str]:
    flip = {"positive": "negative", "negative": "positive"}
    return [item.label if i < n_correct else flip[item.label] for i, item in enumerate(items)]


def test_clear_win_names_the_best_baseline_and_the_interval(make_conversation) -> None:
    items = _labelled_items(make_conversation)
    systems = {
        BASE_ZERO_SHOT: _answers(items, 10),
        BASE_FEW_SHOT: _answers(items, 20),
        FINE_TUNED: _answers(items, 36),
    }
    comparison = compare_systems(items, systems, n_resamples=500)
    accuracy_row = comparison.primary
    assert accuracy_row.metric == "accuracy"
    assert accuracy_row.values == pytest.approx(
        {BASE_ZERO_SHOT: 0.25, BASE_FEW_SHOT: 0.5, FINE_TUNED: 0.9}
    )
    assert accuracy_row.best_baseline == BASE_FEW_SHOT
    assert accuracy_row.difference.estimate == pytest.approx(0.4)
    assert comparison.beats_baseline
    assert comparison.verdict.startswith(
        "fine-tuned beats the best baseline (base few-shot) on accuracy by 40.0 points, 95% CI ["
    )
    assert [row.metric for row in comparison.rows] == ["accuracy", "macro_f1"]
    payload = json.loads(comparison.to_json())
    assert payload["metrics"][0]["difference_vs_best_baseline"]["estimate"] == pytest.approx(0.4)
    assert len(payload["metrics"][0]["per_item"][FINE_TUNED]) == 40


def test_no_clear_win_recommends_prompting(make_conversation) -> None:
    items = [make_conversation(f"q{i}", f"the answer is {i} apples", line=i) for i in range(30)]
    references = [item.messages[-1].content for item in items]
    systems = {BASE_FEW_SHOT: references, FINE_TUNED: references}
    comparison = compare_systems(items, systems, ["rouge_l"], n_resamples=200)
    assert not comparison.beats_baseline
    assert comparison.verdict == (
        "fine-tuned does not beat base few-shot prompting on rouge_l "
        "(difference +0.0 points, 95% CI [+0.0, +0.0]): consider prompting"
    )


def test_outputs_must_cover_every_item(make_conversation) -> None:
    items = _labelled_items(make_conversation, 4)
    with pytest.raises(ValueError, match="3 outputs for 4 test items"):
        compare_systems(items, {BASE_FEW_SHOT: ["a"] * 4, FINE_TUNED: ["a"] * 3})


def test_rich_printer_shows_rows_and_verdict(make_conversation) -> None:
    items = _labelled_items(make_conversation, 10)
    comparison = compare_systems(
        items, {BASE_FEW_SHOT: _answers(items, 5), FINE_TUNED: _answers(items, 10)}, n_resamples=100
    )
    console = Console(record=True, width=140)
    print_comparison(comparison, console)
    text = console.export_text()
    assert "accuracy" in text and "macro_f1" in text
    assert comparison.verdict in text
