"""Preference runs (dpo, ipo, orpo, reward, rlhf) on held-out pairs: chosen over rejected?

A preference run is not trained to produce one reference reply, so ROUGE against a
reply says nothing about it. What it is trained to do is to *prefer* the chosen reply
of a pair over the rejected one. On the run's own held-out pairs each system (the base
model and the fine-tuned one) gives both replies a score, and:

- ``preference_accuracy``: the share of pairs where chosen scores above rejected (a tie
  counts half, so a system that cannot tell the replies apart scores 0.5);
- ``preference_margin``: the mean of score(chosen) - score(rejected), in score units.

The score is the one the objective trains, as its registration declares (`pair_score`,
see `PREFERENCE_SCORES`):

- dpo: β · (log π(reply) − log π_base(reply)), the implicit reward of Rafailov et al.;
  ipo: the same log-ratio per reply token (as IPO's loss). The base is its own
  reference, so its implicit reward is 0 for every reply: it stands for chance (0.5).
- orpo and rlhf: the policy's mean log-probability per reply token (ORPO's odds ratio
  is monotone in it; per token so that a longer reply is not penalised for its length).
- reward: the reward head's score on the last token. The base reads the same trained
  head on the base model's hidden states: what the head alone, without adapting the
  model, would have ranked.

Both metrics get paired bootstrap intervals (same pairs resampled for both systems)
and the verdict is about preference accuracy. Next to the numbers, the report shows
base and fine-tuned generations for a few sampled test prompts, since a model can
learn to rank pairs and still write worse replies.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunesmith.data.preference import PreferenceExample, tokenize_preferences
from tunesmith.data.records import Message, Preference, Source
from tunesmith.evaluate.bootstrap import DEFAULT_RESAMPLES
from tunesmith.evaluate.compare import FINE_TUNED, Comparison, compare_scores
from tunesmith.evaluate.generate import EvaluationDataError, generate_replies
from tunesmith.evaluate.metrics import (
    PREFERENCE_METRICS,
    TEXT_METRIC_SETTING,
    MetricScores,
    UnknownMetricError,
    scores_from_per_item,
)
from tunesmith.evaluate.perplexity import DEFAULT_FORGETTING_THRESHOLD
from tunesmith.evaluate.report import SampleRow, write_report
from tunesmith.evaluate.run import PREFERENCE, EvalResult
from tunesmith.evaluate.systems import Systems, write_results
from tunesmith.objectives.losses import sequence_logprob_sums, trained_tokens_per_row
from tunesmith.objectives.preference import PairBatch, collate_pairs
from tunesmith.objectives.registry import PairScore
from tunesmith.objectives.reward import sequence_rewards

BASE = "base"

PREFERENCE_SCORES: dict[PairScore, str] = {
    "log_ratio_sum": "implicit reward β·(log π − log π_base), summed over the reply",
    "log_ratio_per_token": "implicit reward (log π − log π_base) per reply token",
    "mean_logprob": "mean log-probability per reply token",
    "reward_head": "reward-head score at the last token",
}


@dataclass(frozen=True)
class PairScores:
    """One system's score of the chosen and the rejected reply of every pair."""

    chosen: np.ndarray
    rejected: np.ndarray

    @property
    def margins(self) -> np.ndarray:
        return self.chosen - self.rejected

    def to_dict(self) -> dict[str, list[float]]:
        return {"chosen": self.chosen.tolist(), "rejected": self.rejected.tolist()}


@dataclass(frozen=True)
class PairLogprobs:
    """Summed reply log-probabilities of both sides of every pair, and their token counts."""

    chosen: np.ndarray
    rejected: np.ndarray
    chosen_tokens: np.ndarray
    rejected_tokens: np.ndarray

    def per_token(self) -> PairScores:
        return PairScores(
            self.chosen / np.maximum(self.chosen_tokens, 1),
            self.rejected / np.maximum(self.rejected_tokens, 1),
        )


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _pair_batches(
    examples: Sequence[PreferenceExample], pad_token_id: int, batch_size: int, device: torch.device
) -> Iterator[PairBatch]:
    """Pairs in order, ``batch_size`` at a time, chosen rows then rejected rows."""
    for start in range(0, len(examples), batch_size):
        pairs = examples[start : start + batch_size]
        yield collate_pairs(pairs, pad_token_id=pad_token_id).to(device)


@torch.inference_mode()
def pair_logprobs(
    model: nn.Module,
    examples: Sequence[PreferenceExample],
    *,
    pad_token_id: int,
    batch_size: int = 4,
) -> PairLogprobs:
    """Summed reply log-probabilities (and reply token counts) of both sides of every pair.

    The same function the preference losses use (`sequence_logprob_sums`), so evaluation
    scores exactly what training optimised, virtual tokens of prompt tuning included.
    """
    model.eval()
    chosen, rejected, chosen_tokens, rejected_tokens = [], [], [], []
    for batch in _pair_batches(examples, pad_token_id, batch_size, _device(model)):
        pairs, sequences = batch.pairs, batch.sequences
        sums = sequence_logprob_sums(model, sequences).double().cpu().numpy()
        tokens = trained_tokens_per_row(sequences).cpu().numpy()
        chosen.append(sums[:pairs])
        rejected.append(sums[pairs:])
        chosen_tokens.append(tokens[:pairs])
        rejected_tokens.append(tokens[pairs:])
    return PairLogprobs(
        *(np.concatenate(parts) for parts in (chosen, rejected, chosen_tokens, rejected_tokens))
    )


@torch.inference_mode()
def pair_rewards(
    model: nn.Module,
    head: nn.Linear,
    examples: Sequence[PreferenceExample],
    *,
    pad_token_id: int,
    batch_size: int = 4,
) -> PairScores:
    """The reward head's score of both replies of every pair (as `objective: reward` trains)."""
    model.eval()
    chosen, rejected = [], []
    for batch in _pair_batches(examples, pad_token_id, batch_size, _device(model)):
        pairs = batch.pairs
        rewards = sequence_rewards(model, head, batch.sequences)
        rewards = rewards.double().cpu().numpy()
        chosen.append(rewards[:pairs])
        rejected.append(rewards[pairs:])
    return PairScores(np.concatenate(chosen), np.concatenate(rejected))


def preference_metric_scores(pairs: PairScores) -> dict[str, MetricScores]:
    """preference_accuracy (ties count half) and preference_margin of one system."""
    margins = pairs.margins
    accuracy = np.where(margins > 0, 1.0, np.where(margins < 0, 0.0, 0.5))
    margin = scores_from_per_item("preference_margin", margins)
    return {
        "preference_accuracy": scores_from_per_item("preference_accuracy", accuracy),
        "preference_margin": MetricScores(
            margin.name,
            margin.value,
            margin.per_item,
            margin.stats,
            margin.aggregate,
            proportion=False,
        ),
    }


def score_pairs(
    score: PairScore,
    fine_tuned: Callable[[], PairLogprobs | PairScores],
    base: Callable[[], PairLogprobs | PairScores],
    *,
    beta: float,
) -> dict[str, PairScores]:
    """Each system's `PairScores` under the objective's ``score`` (see the module docstring).

    ``fine_tuned`` and ``base`` compute log-probabilities (`pair_logprobs`) or, for
    reward, head scores (`pair_rewards`) on the same pairs.
    """
    if score not in PREFERENCE_SCORES:
        raise ValueError(f"score must be one of {sorted(PREFERENCE_SCORES)}, got {score!r}")
    tuned, reference = fine_tuned(), base()
    if score == "reward_head":
        assert isinstance(tuned, PairScores) and isinstance(reference, PairScores)
        return {BASE: reference, FINE_TUNED: tuned}
    assert isinstance(tuned, PairLogprobs) and isinstance(reference, PairLogprobs)
    if score == "mean_logprob":
        return {BASE: reference.per_token(), FINE_TUNED: tuned.per_token()}
    chosen = tuned.chosen - reference.chosen
    rejected = tuned.rejected - reference.rejected
    if score == "log_ratio_sum":
        ratio = PairScores(beta * chosen, beta * rejected)
    else:
        ratio = PairScores(
            chosen / np.maximum(tuned.chosen_tokens, 1),
            rejected / np.maximum(tuned.rejected_tokens, 1),
        )
    zeros = np.zeros_like(chosen)
    return {BASE: PairScores(zeros, zeros.copy()), FINE_TUNED: ratio}


def _check_metrics(metrics: Sequence[str] | None) -> None:
    for name in metrics or []:
        if name not in PREFERENCE_METRICS:
            raise UnknownMetricError(
                f"metric {name!r} scores replies against a reference; a preference run is "
                f"scored on held-out pairs by {', '.join(PREFERENCE_METRICS)}. Remove it from "
                f"{TEXT_METRIC_SETTING}, or leave that unset."
            )


def _sample_rows(
    records: Sequence[Preference],
    indices: Sequence[int],
    generations: dict[str, list[str]],
    per_system: dict[str, dict[str, MetricScores]],
) -> list[SampleRow]:
    accuracy = {
        system: scores["preference_accuracy"].per_item for system, scores in per_system.items()
    }
    rows = []
    for position, index in enumerate(indices):
        record = records[index]
        rows.append(
            SampleRow(
                prompt="\n\n".join(f"[{m.role}] {m.content}" for m in record.prompt),
                reference=f"chosen: {record.chosen.content}\n\nrejected: {record.rejected.content}",
                outputs={system: replies[position] for system, replies in generations.items()},
                scores={system: float(accuracy[system][index]) for system in generations},
            )
        )
    return rows


def _held_out_pairs(
    tokenizer: PreTrainedTokenizerBase,
    test_records: Sequence[Preference],
    max_length: int,
    on_overlength: str,
    max_items: int | None,
) -> tuple[list[PreferenceExample], list[Preference], list[tuple[str, Source]]]:
    """(tokenized pairs, their records, dropped pairs): at most ``max_items`` pairs that fit."""
    outcome = tokenize_preferences(
        tokenizer, list(test_records), max_length=max_length, on_overlength=on_overlength
    )
    examples = outcome.examples[:max_items] if max_items is not None else outcome.examples
    if not examples:
        raise EvaluationDataError(
            f"none of the {len(test_records)} held-out preference pairs fits data.max_length="
            f"{max_length} tokens: raise data.max_length, or give shorter pairs as data.test."
        )
    kept = {example.source for example in examples}
    records = [record for record in test_records if record.source in kept]
    return examples, records, outcome.dropped


@dataclass(frozen=True)
class _PairScorer:
    """Scores every held-out pair with one model the way the objective's ``score`` needs:
    reward-head scores, or reply log-probabilities."""

    examples: Sequence[PreferenceExample]
    score: PairScore
    reward_head: nn.Linear | None
    pad_token_id: int
    batch_size: int

    def __post_init__(self) -> None:
        if self.score == "reward_head" and self.reward_head is None:
            raise ValueError("score reward_head needs the run's reward_head")

    def __call__(
        self, model: nn.Module, scope: AbstractContextManager[object] | None = None
    ) -> PairLogprobs | PairScores:
        options = {"pad_token_id": self.pad_token_id, "batch_size": self.batch_size}
        with scope if scope is not None else contextlib.nullcontext():
            if self.score == "reward_head":
                assert self.reward_head is not None
                return pair_rewards(model, self.reward_head, self.examples, **options)
            return pair_logprobs(model, self.examples, **options)


def _generations(
    systems: Systems,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[Message]],
    max_new_tokens: int,
    batch_size: int,
) -> dict[str, list[str]]:
    """Greedy replies of base and fine-tuned to the sampled prompts, for the report."""
    decoding = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
    with systems.base_scope():
        base_replies = generate_replies(systems.base, tokenizer, prompts, **decoding)
    return {
        BASE: base_replies,
        FINE_TUNED: generate_replies(systems.fine_tuned, tokenizer, prompts, **decoding),
    }


def _compare(
    per_system: dict[str, dict[str, MetricScores]],
    metrics: Sequence[str] | None,
    n_items: int,
    n_resamples: int,
    seed: int,
) -> Comparison:
    """Base vs fine-tuned on the asked-for preference metrics (all of them by default)."""
    wanted = list(metrics) if metrics else list(PREFERENCE_METRICS)
    scores = {name: {system: per_system[system][name] for system in per_system} for name in wanted}
    return compare_scores(
        scores,
        candidate=FINE_TUNED,
        n_items=n_items,
        n_resamples=n_resamples,
        seed=seed,
        advice="the preference training did not clearly help on held-out pairs",
        baseline_kind="",
    )


def _settings(
    objective: str,
    score: PairScore,
    beta: float,
    records: Sequence[Preference],
    dropped: Sequence[tuple[str, Source]],
    max_new_tokens: int,
    seed: int,
) -> dict[str, object]:
    """What results.json records of how the pairs were scored and the samples generated."""
    return {
        "objective": objective,
        "score": PREFERENCE_SCORES[score],
        "beta": beta,
        "pairs": len(records),
        "pairs_dropped": [[reason, str(source)] for reason, source in dropped],
        "ties": "count half",
        "generations": "greedy",
        "max_new_tokens": max_new_tokens,
        "seed": seed,
    }


def _samples_title(n_samples: int) -> str:
    return (
        f"Base vs fine-tuned generations for {n_samples} sampled test prompts "
        "(score 1: the system ranks chosen above rejected on that pair)"
    )


def evaluate_preference_models(
    fine_tuned_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    test_records: Sequence[Preference],
    *,
    objective: str,
    score: PairScore,
    out_dir: str | Path,
    beta: float = 0.1,
    base_disabled_context: Callable[[], AbstractContextManager[object]] | None = None,
    base_model: PreTrainedModel | None = None,
    reward_head: nn.Linear | None = None,
    metrics: Sequence[str] | None = None,
    max_length: int = 1024,
    on_overlength: str = "drop",
    max_items: int | None = None,
    batch_size: int = 4,
    n_generations: int = 6,
    max_new_tokens: int = 128,
    measure_forgetting: bool = True,
    forgetting_text: str | Path | None = None,
    forgetting_threshold: float = DEFAULT_FORGETTING_THRESHOLD,
    metrics_jsonl_path: str | Path | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> EvalResult:
    """Base vs fine-tuned on held-out pairs; writes ``results.json`` and ``report.html``.

    The base is ``fine_tuned_model`` inside ``base_disabled_context()`` or a separate
    ``base_model`` (exactly one). ``reward_head`` is needed for ``score="reward_head"``.
    ``max_items`` caps the pairs scored, counted after over-long pairs are dropped.
    The result's ``outputs`` are the generations by system for ``n_generations`` test
    prompts sampled with ``seed``.
    """
    systems = Systems(fine_tuned_model, base_disabled_context, base_model)
    _check_metrics(metrics)
    examples, records, dropped = _held_out_pairs(
        tokenizer, test_records, max_length, on_overlength, max_items
    )
    scorer = _PairScorer(examples, score, reward_head, tokenizer.pad_token_id or 0, batch_size)
    pair_scores = score_pairs(
        score,
        lambda: scorer(fine_tuned_model),
        lambda: scorer(systems.base, systems.base_scope()),
        beta=beta,
    )
    per_system = {system: preference_metric_scores(pairs) for system, pairs in pair_scores.items()}
    comparison = _compare(per_system, metrics, len(records), n_resamples, seed)
    indices = sorted(
        random.Random(seed).sample(range(len(records)), min(n_generations, len(records)))
    )
    prompts = [records[i].prompt for i in indices]
    generations = _generations(systems, tokenizer, prompts, max_new_tokens, batch_size)
    half_batch = max(1, batch_size // 2)
    forgetting = systems.forgetting(
        tokenizer, measure_forgetting, forgetting_text, forgetting_threshold, half_batch
    )
    results_path = write_results(
        out_dir,
        {
            "kind": PREFERENCE,
            "comparison": comparison.to_dict(),
            "forgetting": forgetting.to_dict() if forgetting else None,
            "settings": _settings(objective, score, beta, records, dropped, max_new_tokens, seed),
            "pairs": {system: pairs.to_dict() for system, pairs in pair_scores.items()},
            "generations": {"sources": [str(records[i].source) for i in indices], **generations},
        },
    )
    samples = _sample_rows(records, indices, generations, per_system)
    report_path = write_report(
        Path(out_dir),
        comparison,
        metrics_jsonl_path,
        forgetting,
        samples,
        task=f"held-out preference pairs ({objective}: {PREFERENCE_SCORES[score]})",
        samples_title=_samples_title(len(samples)),
    )
    return EvalResult(comparison, forgetting, generations, results_path, report_path, PREFERENCE)
