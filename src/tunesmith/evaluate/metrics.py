"""Task metrics that score generated replies against references, item by item.

Every metric returns a `MetricScores`: a per-item score (for tables of examples and
"wrong ones first"), plus per-item sufficient statistics and an `aggregate` function
that turns summed statistics into the corpus value. Keeping the statistics, not only
the final number, lets the bootstrap recompute corpus-level metrics exactly (macro-F1,
corpus BLEU) on every resample instead of averaging per-item approximations.

All values are on a 0-1 scale (BLEU is divided by 100) so a difference of 0.05 is
"5 points" for every metric.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from tunesmith.data.records import Conversation
from tunesmith.errors import TunesmithError

Aggregate = Callable[[np.ndarray], np.ndarray]
"""Maps summed statistics of shape ``(..., k)`` to metric values of shape ``(...)``."""


class UnknownMetricError(TunesmithError, ValueError):
    """A metric name that is not known, or that the test data cannot support; the message
    lists the names that would work and where to set them (eval.metrics or --metric)."""


@dataclass(frozen=True)
class MetricScores:
    """One metric on one system: the corpus value and what the bootstrap needs to redo it.

    ``proportion`` metrics are shares on a 0-1 scale and are shown in points (x 100);
    the others (perplexity, a preference margin) are shown as they are. For
    ``higher_is_better=False`` (perplexity) the candidate wins when its value is lower.
    """

    name: str
    value: float
    per_item: np.ndarray
    stats: np.ndarray
    aggregate: Aggregate
    higher_is_better: bool = True
    proportion: bool = True


def mean_aggregate(summed: np.ndarray) -> np.ndarray:
    """Mean of per-item scores: statistics are ``[score, 1]`` per item."""
    return summed[..., 0] / summed[..., 1]


def scores_from_per_item(name: str, per_item: Sequence[float]) -> MetricScores:
    """Wrap a metric that is a plain mean of per-item scores."""
    per_item_array = np.asarray(per_item, dtype=np.float64)
    stats = np.stack([per_item_array, np.ones_like(per_item_array)], axis=1)
    value = float(mean_aggregate(stats.sum(axis=0))) if len(per_item_array) else math.nan
    return MetricScores(name, value, per_item_array, stats, mean_aggregate)


# --- normalisation and answer extraction -------------------------------------------------

_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def normalise_text(text: str) -> str:
    """Lower-case, drop punctuation and collapse whitespace: 'The Answer.' == 'the answer'."""
    return " ".join(text.lower().translate(_PUNCTUATION_TABLE).split())


def _canonical_number(raw: str) -> str:
    """'1,000.50' -> '1000.5', '7.0' -> '7': equal numbers compare equal as strings."""
    cleaned = raw.replace(",", "")
    try:
        number = float(cleaned)
    except ValueError:
        return cleaned
    if number.is_integer():
        return str(int(number))
    return repr(number)


def extract_last_number(text: str) -> str:
    """The last number in the text, canonicalised; empty when there is none."""
    numbers = _NUMBER.findall(text)
    return _canonical_number(numbers[-1]) if numbers else ""


def extract_gsm8k_answer(text: str) -> str:
    """The number after the last ``####`` (GSM8K style); the last number when there is no ``####``.

    References always carry ``####``; models prompted zero-shot rarely do, so falling back
    to the last number scores them on their answer rather than on the marker.
    """
    if "####" in text:
        return extract_last_number(text.rsplit("####", 1)[1]) or extract_last_number(text)
    return extract_last_number(text)


EXTRACTORS: dict[str, Callable[[str], str]] = {
    "gsm8k": extract_gsm8k_answer,
    "last_number": extract_last_number,
    "text": normalise_text,
}


# --- metrics over generated text ---------------------------------------------------------


def exact_match(
    predictions: Sequence[str], references: Sequence[str], extractor: str = "gsm8k"
) -> MetricScores:
    """1 when the extracted final answers are equal (see `EXTRACTORS` for the choices)."""
    extract = _extractor(extractor)
    per_item = [
        float(extract(reference) != "" and extract(prediction) == extract(reference))
        for prediction, reference in zip(predictions, references, strict=True)
    ]
    name = "exact_match" if extractor == "gsm8k" else f"exact_match:{extractor}"
    return scores_from_per_item(name, per_item)


def _extractor(name: str) -> Callable[[str], str]:
    if name not in EXTRACTORS:
        raise UnknownMetricError(
            f"unknown exact_match extractor {name!r}: use one of "
            f"{', '.join(f'exact_match:{known}' for known in EXTRACTORS)} in {TEXT_METRIC_SETTING}"
        )
    return EXTRACTORS[name]


def match_label(prediction: str, labels: Sequence[str]) -> str | None:
    """The known label a free-text prediction means, or None when it names none of them.

    Order: exact match after normalisation, then the label named first in the text as a whole
    word ("The sentiment is positive." -> positive), then a close spelling (difflib ratio
    >= 0.8). Unknown predictions stay None so they count as wrong instead of being guessed.
    """
    normalised_labels = {normalise_text(label): label for label in labels}
    normalised_prediction = normalise_text(prediction)
    if normalised_prediction in normalised_labels:
        return normalised_labels[normalised_prediction]
    found: list[tuple[int, int, str]] = []
    for normalised, label in normalised_labels.items():
        if not normalised:
            continue
        hit = re.search(rf"(?<!\w){re.escape(normalised)}(?!\w)", normalised_prediction)
        if hit:
            found.append((hit.start(), -len(normalised), label))
    if found:
        return min(found)[2]
    close = difflib.get_close_matches(
        normalised_prediction, list(normalised_labels), n=1, cutoff=0.8
    )
    return normalised_labels[close[0]] if close else None


def accuracy(
    predictions: Sequence[str], references: Sequence[str], labels: Sequence[str]
) -> MetricScores:
    """Share of predictions that map (via `match_label`) to the reference label."""
    per_item = [
        float(match_label(prediction, labels) == reference)
        for prediction, reference in zip(predictions, references, strict=True)
    ]
    return scores_from_per_item("accuracy", per_item)


def _macro_f1_aggregate(n_labels: int) -> Aggregate:
    def aggregate(summed: np.ndarray) -> np.ndarray:
        true_pos = summed[..., :n_labels]
        false_pos = summed[..., n_labels : 2 * n_labels]
        false_neg = summed[..., 2 * n_labels : 3 * n_labels]
        denominator = 2 * true_pos + false_pos + false_neg
        present = denominator > 0
        f1 = np.divide(2 * true_pos, denominator, out=np.zeros_like(denominator), where=present)
        return f1.sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)

    return aggregate


def macro_f1(
    predictions: Sequence[str], references: Sequence[str], labels: Sequence[str]
) -> MetricScores:
    """Unweighted mean of per-label F1, over labels that occur in references or predictions.

    A prediction that matches no label is a false negative for the reference label and a
    false positive for nothing: it can only lower the score.
    """
    ordered = sorted(set(labels))
    index = {label: position for position, label in enumerate(ordered)}
    n_labels = len(ordered)
    stats = np.zeros((len(references), 3 * n_labels))
    per_item = np.zeros(len(references))
    for row, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
        predicted = match_label(prediction, ordered)
        if predicted == reference:
            stats[row, index[reference]] = 1
            per_item[row] = 1.0
            continue
        if predicted is not None:
            stats[row, n_labels + index[predicted]] = 1
        if reference in index:
            stats[row, 2 * n_labels + index[reference]] = 1
    aggregate = _macro_f1_aggregate(n_labels)
    return MetricScores("macro_f1", float(aggregate(stats.sum(axis=0))), per_item, stats, aggregate)


@cache
def _rouge_scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> MetricScores:
    """Mean ROUGE-L F-measure (longest common subsequence, stemmed), via `rouge-score`."""
    scorer = _rouge_scorer()
    per_item = [
        scorer.score(reference, prediction)["rougeL"].fmeasure
        for prediction, reference in zip(predictions, references, strict=True)
    ]
    return scores_from_per_item("rouge_l", per_item)


_BLEU_ORDER = 4


def corpus_bleu_aggregate(summed: np.ndarray) -> np.ndarray:
    """sacrebleu's corpus BLEU (``exp`` smoothing) from summed statistics, vectorised, 0-1 scale.

    Statistics are ``[correct_1..4, total_1..4, sys_len, ref_len]``; this reproduces
    ``BLEU.compute_bleu(..., smooth_method="exp")`` for every row at once (tested against it).
    """
    correct = summed[..., :_BLEU_ORDER]
    total = summed[..., _BLEU_ORDER : 2 * _BLEU_ORDER]
    sys_len = summed[..., 2 * _BLEU_ORDER]
    ref_len = summed[..., 2 * _BLEU_ORDER + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        brevity = np.where(
            sys_len >= ref_len, 1.0, np.where(sys_len > 0, np.exp(1 - ref_len / sys_len), 0.0)
        )
        smoothing = np.power(2.0, np.cumsum((correct == 0) & (total > 0), axis=-1))
        precision = np.where(
            total == 0,
            0.0,
            np.where(correct == 0, 1.0 / (smoothing * total), correct / total),
        )
        log_mean = np.where(
            (precision > 0).all(axis=-1), np.log(np.where(precision > 0, precision, 1)).mean(-1), 0
        )
        score = np.where((precision > 0).all(axis=-1), brevity * np.exp(log_mean), 0.0)
    return np.where(correct.sum(axis=-1) > 0, score, 0.0)


def bleu(predictions: Sequence[str], references: Sequence[str]) -> MetricScores:
    """Corpus BLEU via sacrebleu (13a tokenisation); per item: sentence BLEU, effective order."""
    scorer = BLEU(effective_order=True)
    stats = np.zeros((len(references), 2 * _BLEU_ORDER + 2))
    per_item = np.zeros(len(references))
    for row, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
        sentence = scorer.sentence_score(prediction, [reference])
        stats[row] = [*sentence.counts, *sentence.totals, sentence.sys_len, sentence.ref_len]
        per_item[row] = sentence.score / 100
    value = float(corpus_bleu_aggregate(stats.sum(axis=0)))
    return MetricScores("bleu", value, per_item, stats, corpus_bleu_aggregate)


_CODE_FENCE = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?```\s*$", re.DOTALL)


def parse_json_reply(text: str) -> tuple[bool, object]:
    """Parse a reply as JSON, accepting a single Markdown code fence around it."""
    fenced = _CODE_FENCE.match(text)
    candidate = fenced.group(1) if fenced else text
    try:
        return True, json.loads(candidate)
    except ValueError:
        return False, None


def json_shape(value: object) -> object:
    """The keys and value types of a JSON value, recursively; ints and floats are both numbers.

    Lists are described by the shape of their first element, so ``[1, 2]`` and ``[3]`` match.
    """
    if isinstance(value, dict):
        return {key: json_shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return ["array", json_shape(value[0]) if value else None]
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    return "string"


def json_valid(predictions: Sequence[str], references: Sequence[str]) -> MetricScores:
    """Share of predictions that parse as JSON (the references only fix the item count)."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    return scores_from_per_item(
        "json_valid", [float(parse_json_reply(prediction)[0]) for prediction in predictions]
    )


def json_match(predictions: Sequence[str], references: Sequence[str]) -> MetricScores:
    """1 when the prediction is JSON with the reference's keys and value types (not values)."""
    per_item = []
    for prediction, reference in zip(predictions, references, strict=True):
        predicted_ok, predicted = parse_json_reply(prediction)
        reference_ok, expected = parse_json_reply(reference)
        same = predicted_ok and reference_ok and json_shape(predicted) == json_shape(expected)
        per_item.append(float(same))
    return scores_from_per_item("json_match", per_item)


def json_exact(predictions: Sequence[str], references: Sequence[str]) -> MetricScores:
    """1 when the prediction parses to the same JSON value as the reference (key order aside)."""
    per_item = []
    for prediction, reference in zip(predictions, references, strict=True):
        predicted_ok, predicted = parse_json_reply(prediction)
        reference_ok, expected = parse_json_reply(reference)
        per_item.append(float(predicted_ok and reference_ok and predicted == expected))
    return scores_from_per_item("json_exact", per_item)


def perplexity_from_nll(total_nll: float, n_tokens: int) -> float:
    """exp(mean token negative log-likelihood): summed NLL over all scored tokens / their count."""
    if n_tokens <= 0:
        raise ValueError("perplexity needs at least one scored token")
    return math.exp(total_nll / n_tokens)


# --- registry and defaults ---------------------------------------------------------------


@dataclass(frozen=True)
class MetricSpec:
    """How to call a metric by name; label metrics also get the known label set."""

    function: Callable[..., MetricScores]
    needs_labels: bool = False


METRICS: dict[str, MetricSpec] = {
    "exact_match": MetricSpec(exact_match),
    "accuracy": MetricSpec(accuracy, needs_labels=True),
    "macro_f1": MetricSpec(macro_f1, needs_labels=True),
    "rouge_l": MetricSpec(rouge_l),
    "bleu": MetricSpec(bleu),
    "json_valid": MetricSpec(json_valid),
    "json_match": MetricSpec(json_match),
    "json_exact": MetricSpec(json_exact),
}


PREFERENCE_METRICS = ("preference_accuracy", "preference_margin")
"""Scored from the model's preference between chosen and rejected (preference runs)."""
PERPLEXITY_METRICS = ("perplexity",)
"""Scored from the likelihood of held-out raw text (pretrain runs)."""
TEXT_METRIC_SETTING = "eval.metrics (or tunesmith eval --metric)"


def known_metric_names() -> list[str]:
    """Every name `check_metric_names` accepts, ``exact_match:<extractor>`` spelt out."""
    return [
        *METRICS,
        *(f"exact_match:{name}" for name in EXTRACTORS),
        *PREFERENCE_METRICS,
        *PERPLEXITY_METRICS,
    ]


def metric_names_help() -> str:
    """The names `--metric` accepts, for help text and error messages."""
    return ", ".join(known_metric_names())


def _unknown_metric_message(name: str) -> str | None:
    """Why ``name`` is not a metric (with a did-you-mean), or None when it is one."""
    known = known_metric_names()
    if name in known:
        return None
    suggestion = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {suggestion[0]!r}?)" if suggestion else ""
    return (
        f"unknown metric {name!r}{hint}. Set {TEXT_METRIC_SETTING} to names from: "
        f"{metric_names_help()}; or leave it unset to choose from the data."
    )


def check_metric_names(names: Sequence[str] | None) -> None:
    """Raise `UnknownMetricError` for the first unknown name, with a did-you-mean.

    Called when the config loads, so a misspelt metric fails before training rather
    than after it.
    """
    for name in names or []:
        message = _unknown_metric_message(str(name))
        if message is not None:
            raise UnknownMetricError(message)


def check_reply_metric_names(names: Sequence[str] | None) -> None:
    """Like `check_metric_names`, and every name must score replies (conversation data):
    a preference or perplexity metric on a chat run is refused before anything runs."""
    check_metric_names(names)
    for name in names or []:
        base = name.partition(":")[0]
        if base not in METRICS:
            kind = "preference" if base in PREFERENCE_METRICS else "raw-text (pretrain)"
            raise UnknownMetricError(
                f"metric {name!r} does not score generated replies: it applies to {kind} "
                f"runs. Remove it from {TEXT_METRIC_SETTING} for conversation data."
            )


def compute_metric(
    name: str,
    predictions: Sequence[str],
    references: Sequence[str],
    labels: Sequence[str] | None = None,
) -> MetricScores:
    """Run the metric registered under ``name``; ``exact_match:<extractor>`` picks the extractor."""
    check_reply_metric_names([name])
    base, _, option = name.partition(":")
    spec = METRICS[base]
    if option:
        return spec.function(predictions, references, extractor=option)
    if spec.needs_labels:
        if not labels:
            raise UnknownMetricError(label_metric_needs_labels_message(name))
        return spec.function(predictions, references, labels)
    return spec.function(predictions, references)


def label_metric_needs_labels_message(name: str) -> str:
    """The error for a label metric on data without a closed label set, naming the fixes."""
    return (
        f"metric {name!r} needs labelled test items: a 'label' field (text + label data), or "
        "chat data whose final assistant replies come from a small closed set (see "
        "tunesmith.evaluate.task.closed_label_set). These replies are free text: use rouge_l, "
        f"bleu or exact_match:text in {TEXT_METRIC_SETTING}, or leave it unset."
    )


def _is_json_object_or_array(text: str) -> bool:
    """JSON data means objects or arrays: a bare "42" or "true" reply is not structured output."""
    parsed_ok, value = parse_json_reply(text)
    return parsed_ok and isinstance(value, dict | list)


_GSM8K_ANSWER = re.compile(r"####\s*-?[\d,.]+\s*$")


def default_metric_names(test_items: Sequence[Conversation]) -> list[str]:
    """Pick metrics that fit the data: labels, JSON replies, ``####`` answers, else free text.

    The first name is the primary metric that the verdict is about.
    """
    if test_items and all(item.label is not None for item in test_items):
        return ["accuracy", "macro_f1"]
    references = [item.messages[-1].content for item in test_items]
    if references and all(_is_json_object_or_array(reference) for reference in references):
        return ["json_exact", "json_match", "json_valid"]
    if references and all(_GSM8K_ANSWER.search(reference) for reference in references):
        return ["exact_match"]
    return ["rouge_l", "bleu"]
