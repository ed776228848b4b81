"""Metrics on hand-checked cases: every expected number below was worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sacrebleu.metrics import BLEU

from tunesmith.evaluate.metrics import (
    UnknownMetricError,
    accuracy,
    bleu,
    compute_metric,
    corpus_bleu_aggregate,
    default_metric_names,
    exact_match,
    extract_gsm8k_answer,
    extract_last_number,
    json_exact,
    json_match,
    json_valid,
    macro_f1,
    match_label,
    normalise_text,
    perplexity_from_nll,
    rouge_l,
)


def test_answer_extractors() -> None:
    assert extract_gsm8k_answer("She pays 3 * 4 = 12 dollars.\n#### 1,200") == "1200"
    assert extract_gsm8k_answer("so the total is 7.0 apples") == "7"
    assert extract_last_number("from 3 to -4.5 then") == "-4.5"
    assert extract_last_number("no digits") == ""
    assert normalise_text("  The Answer:  Paris! ") == "the answer paris"


def test_exact_match_gsm8k_last_number_and_text() -> None:
    references = ["work...\n#### 42", "work...\n#### 1,000", "#### 7"]
    predictions = ["I think it is 40 + 2 = 42", "#### 1000", "seven"]
    result = exact_match(predictions, references)
    assert result.per_item.tolist() == [1.0, 1.0, 0.0]
    assert result.value == pytest.approx(2 / 3)
    text = exact_match(["Paris.", "rome"], ["paris", "Milan"], extractor="text")
    assert text.per_item.tolist() == [1.0, 0.0]
    assert compute_metric("exact_match:last_number", ["a 5"], ["b 5.0"]).value == 1.0


def test_match_label_maps_free_text_to_the_closest_known_label() -> None:
    labels = ["positive", "negative", "neutral"]
    assert match_label("Positive.", labels) == "positive"
    assert match_label("The sentiment is negative overall", labels) == "negative"
    assert match_label("negatve", labels) == "negative"
    assert match_label("I cannot tell", labels) is None


def test_accuracy_and_macro_f1() -> None:
    labels = ["a", "b", "c"]
    references = ["a", "a", "b", "c"]
    predictions = ["a", "b", "b", "something else"]
    assert accuracy(predictions, references, labels).value == pytest.approx(0.5)
    # a: tp1 fn1 -> 2/3; b: tp1 fp1 -> 2/3; c: fn1 -> 0. Unknown answers add no false positive.
    result = macro_f1(predictions, references, labels)
    assert result.value == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert result.per_item.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_rouge_l_and_bleu_on_known_pairs() -> None:
    assert rouge_l(["the cat sat"], ["the cat sat"]).value == pytest.approx(1.0)
    # LCS "the cat" = 2 of 3 tokens each side: P = R = F = 2/3.
    assert rouge_l(["the cat ran"], ["the cat sat"]).value == pytest.approx(2 / 3)
    result = bleu(["the cat sat on the mat", "hello there"], ["the cat is on the mat", "hi there"])
    expected = BLEU().corpus_score(
        ["the cat sat on the mat", "hello there"], [["the cat is on the mat", "hi there"]]
    )
    assert result.value == pytest.approx(expected.score / 100)


def test_vectorised_bleu_matches_sacrebleu_on_random_statistics() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        total = np.sort(rng.integers(0, 12, size=4))[::-1]
        correct = np.minimum(rng.integers(0, 12, size=4), total)
        sys_len, ref_len = int(total[0]), int(rng.integers(1, 15))
        stats = np.array([*correct, *total, sys_len, ref_len], dtype=float)
        expected = BLEU.compute_bleu(
            list(correct), list(total), sys_len, ref_len, smooth_method="exp"
        ).score
        assert float(corpus_bleu_aggregate(stats)) == pytest.approx(expected / 100, abs=1e-9)


def test_json_valid_and_shape_match() -> None:
    reference = '{"name": "Ada", "age": 36, "tags": ["x"]}'
    predictions = [
        '```json\n{"name": "Bob", "age": 4.5, "tags": []}\n```',
        '{"name": "Bob", "age": "36", "tags": ["y"]}',
        '{"name": "Bob"}',
        "not json",
    ]
    references = [reference] * 4
    assert json_valid(predictions, references).per_item.tolist() == [1, 1, 1, 0]
    # An empty list has no element shape, so the first is a mismatch too; types, not values.
    assert json_match(predictions, references).per_item.tolist() == [0, 0, 0, 0]
    same = '{"name": "Bob", "age": 4.5, "tags": ["y", "z"]}'
    assert json_match([same], [reference]).value == 1.0


def test_json_exact_compares_values_not_text() -> None:
    reference = '{"intent": "PlayMusic", "slots": {"artist": "Miles Davis"}}'
    predictions = [
        '{"slots": {"artist": "Miles Davis"}, "intent": "PlayMusic"}',
        '```json\n{"intent": "PlayMusic", "slots": {"artist": "Miles Davis"}}\n```',
        '{"intent": "PlayMusic", "slots": {"artist": "Miles"}}',
        "PlayMusic",
    ]
    assert json_exact(predictions, [reference] * 4).per_item.tolist() == [1, 1, 0, 0]


def test_perplexity_from_summed_nll() -> None:
    assert perplexity_from_nll(4 * math.log(10), 4) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        perplexity_from_nll(1.0, 0)


def test_default_metrics_follow_the_data(make_conversation) -> None:
    labelled = [make_conversation("x", "positive", label="positive")]
    assert default_metric_names(labelled) == ["accuracy", "macro_f1"]
    assert default_metric_names([make_conversation("x", '{"a": 1}')]) == [
        "json_exact",
        "json_match",
        "json_valid",
    ]
    assert default_metric_names([make_conversation("x", "2+2 is 4\n#### 4")]) == ["exact_match"]
    assert default_metric_names([make_conversation("x", "42")]) == ["rouge_l", "bleu"]


def test_unknown_metric_names_suggest_the_right_one() -> None:
    with pytest.raises(UnknownMetricError, match="did you mean 'rouge_l'"):
        compute_metric("rougel", ["a"], ["a"])
    with pytest.raises(UnknownMetricError, match="needs labelled test items"):
        compute_metric("accuracy", ["a"], ["a"], labels=None)
