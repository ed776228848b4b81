"""Perplexity on general text, and the catastrophic-forgetting check built on it.

Fine-tuning on a narrow task can quietly damage what the model knew before. Measuring
perplexity on a fixed general text (a WikiText-2 slice ships with tunesmith) before
and after fine-tuning, with the same tokenizer and windows, turns that damage into one
number; a rise beyond a threshold is flagged in the report.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunesmith.errors import TunesmithError
from tunesmith.evaluate.logits import input_aligned_logits
from tunesmith.evaluate.metrics import MetricScores, perplexity_from_nll

DEFAULT_FORGETTING_THRESHOLD = 0.10
DEFAULT_WINDOW = 512


class ForgettingTextError(TunesmithError, ValueError):
    """The reference text for the forgetting check is missing or too short to measure."""


def default_forgetting_text_path() -> Path:
    """The bundled WikiText-2 test slice (CC BY-SA 3.0, see resources/README.md)."""
    return Path(str(resources.files("tunesmith") / "resources" / "forgetting_wikitext2.txt"))


def load_forgetting_text(path: str | Path | None = None) -> str:
    """The user's reference text when ``path`` is given, the bundled slice otherwise."""
    chosen = Path(path) if path is not None else default_forgetting_text_path()
    if not chosen.is_file():
        raise ForgettingTextError(
            f"{chosen}: forgetting reference text not found. Set eval.forgetting_text to an "
            "existing UTF-8 text file, or leave it unset to use the bundled WikiText-2 slice."
        )
    return chosen.read_text(encoding="utf-8")


@dataclass(frozen=True)
class TextLikelihood:
    """Summed negative log-likelihood of the scored tokens of a text, and their count."""

    total_nll: float
    n_tokens: int

    @property
    def perplexity(self) -> float:
        return perplexity_from_nll(self.total_nll, self.n_tokens)


def _windows(n_tokens: int, window: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(start, end, first scored offset) of each window; every token but the first is scored once.

    Consecutive windows share at least one token, so the first token of a window is still
    predicted from context. With a smaller ``stride`` each window re-reads more context that
    the previous window already scored, and later tokens are predicted with more context.
    """
    scored_until = 1
    start = 0
    while scored_until < n_tokens:
        end = min(start + window, n_tokens)
        yield start, end, scored_until - start
        scored_until = end
        start = min(start + stride, end - 1)


@torch.inference_mode()
def text_likelihood(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    *,
    window: int = DEFAULT_WINDOW,
    stride: int | None = None,
    batch_size: int = 4,
    max_tokens: int | None = None,
) -> TextLikelihood:
    """Token NLL of ``text`` under ``model`` over fixed-length windows, batched, without grad.

    The first token of the text has no context and is not scored. ``max_tokens`` caps the
    work on slow hardware (the text is cut, the same way for every model compared).
    """
    stride = stride or window
    if window < 2 or not 0 < stride <= window:
        raise ValueError(f"need window >= 2 and stride in 1..window, got {window=} {stride=}")
    token_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        token_ids = token_ids[:max_tokens]
    if len(token_ids) < 2:
        raise ForgettingTextError(
            "the text to measure perplexity on has fewer than two tokens. Set "
            "eval.forgetting_text to a longer UTF-8 text file (a few thousand words), or leave "
            "it unset to use the bundled WikiText-2 slice."
        )
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    spans = list(_windows(len(token_ids), window, stride))
    total_nll = 0.0
    n_scored = 0
    for first in range(0, len(spans), batch_size):
        batch = spans[first : first + batch_size]
        width = max(end - start for start, end, _ in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        scored = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, (start, end, first_scored) in enumerate(batch):
            input_ids[row, : end - start] = torch.tensor(token_ids[start:end])
            attention_mask[row, : end - start] = 1
            scored[row, first_scored : end - start] = True
        logits = input_aligned_logits(model, input_ids, attention_mask)
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2).cpu(), input_ids[:, 1:], reduction="none"
        )
        mask = scored[:, 1:]
        total_nll += float(nll[mask].double().sum())
        n_scored += int(mask.sum())
    return TextLikelihood(total_nll, n_scored)


@dataclass(frozen=True)
class ForgettingCheck:
    """Perplexity on general text before and after fine-tuning, and whether it rose too much."""

    base_perplexity: float
    fine_tuned_perplexity: float
    threshold: float
    n_tokens: int
    text_source: str

    @property
    def relative_change(self) -> float:
        return self.fine_tuned_perplexity / self.base_perplexity - 1

    @property
    def flagged(self) -> bool:
        return self.relative_change > self.threshold

    def summary(self) -> str:
        """One line for terminals and the report."""
        change = f"{self.relative_change:+.1%}"
        verdict = (
            f"forgetting flagged: rise above {self.threshold:.0%}"
            if self.flagged
            else f"within {self.threshold:.0%}"
        )
        return (
            f"general-text perplexity {self.base_perplexity:.2f} → "
            f"{self.fine_tuned_perplexity:.2f} ({change}); {verdict}"
        )

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "relative_change": self.relative_change, "flagged": self.flagged}


def check_forgetting(
    fine_tuned_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    base_disabled_context: Callable[[], AbstractContextManager[object]] | None = None,
    base_model: PreTrainedModel | None = None,
    text: str | None = None,
    text_path: str | Path | None = None,
    threshold: float = DEFAULT_FORGETTING_THRESHOLD,
    window: int = DEFAULT_WINDOW,
    batch_size: int = 4,
    max_tokens: int | None = 4096,
) -> ForgettingCheck:
    """Compare perplexity of base and fine-tuned model on the same general text.

    The base is either ``fine_tuned_model`` inside ``base_disabled_context()`` (for a peft
    model: ``model.disable_adapter``) or a separate ``base_model``; exactly one is needed.
    The first ``max_tokens`` tokens are measured: 4096 take about 15 s per model for a 135M
    model on 2 busy CPU cores and are plenty to see a relative rise.
    """
    if (base_disabled_context is None) == (base_model is None):
        raise ValueError("pass exactly one of base_disabled_context or base_model")
    if text is None:
        text = load_forgetting_text(text_path)
        source = str(text_path) if text_path is not None else "bundled WikiText-2 test slice"
    else:
        source = "caller-provided text"
    options = {"window": window, "batch_size": batch_size, "max_tokens": max_tokens}
    tuned = text_likelihood(fine_tuned_model, tokenizer, text, **options)
    if base_model is not None:
        base_scope: AbstractContextManager[object] = contextlib.nullcontext()
        base = base_model
    else:
        base_scope = base_disabled_context()
        base = fine_tuned_model
    with base_scope:
        base_likelihood = text_likelihood(base, tokenizer, text, **options)
    return ForgettingCheck(
        base_perplexity=base_likelihood.perplexity,
        fine_tuned_perplexity=tuned.perplexity,
        threshold=threshold,
        n_tokens=tuned.n_tokens,
        text_source=source,
    )


def _perplexity_aggregate(summed: np.ndarray) -> np.ndarray:
    """exp(summed NLL / summed tokens): statistics are ``[nll, tokens]`` per text."""
    return np.exp(summed[..., 0] / np.maximum(summed[..., 1], 1))


def heldout_perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    window: int = DEFAULT_WINDOW,
    batch_size: int = 4,
) -> MetricScores:
    """Corpus perplexity of held-out texts: total NLL over all their tokens, not a mean of
    per-text perplexities, so a short text weighs what its tokens weigh.

    Each text is one bootstrap item (statistics ``[nll, tokens]``), so the interval
    resamples whole documents; ``per_item`` is each text's own perplexity. Lower is
    better, and the value is not a share.
    """
    stats = np.zeros((len(texts), 2))
    for row, text in enumerate(texts):
        likelihood = text_likelihood(model, tokenizer, text, window=window, batch_size=batch_size)
        stats[row] = [likelihood.total_nll, likelihood.n_tokens]
    per_item = _perplexity_aggregate(stats)
    value = float(_perplexity_aggregate(stats.sum(axis=0))) if len(texts) else math.nan
    return MetricScores(
        "perplexity",
        value,
        per_item,
        stats,
        _perplexity_aggregate,
        higher_is_better=False,
        proportion=False,
    )
