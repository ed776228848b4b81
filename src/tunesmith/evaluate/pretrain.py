"""Pretrain runs on held-out text: is the fine-tuned model's perplexity lower than the base's?

Continued pretraining teaches a model the language of a corpus, so its proof is the
likelihood of text from that corpus it has not seen: the run's own test split of `Text`
records. Both systems read the same documents in the same windows; the verdict is
about the corpus perplexity with a paired bootstrap interval over documents. The
general-text forgetting check runs next to it, because a model can fit a narrow
corpus by forgetting everything else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunesmith.data.records import Text
from tunesmith.evaluate.bootstrap import DEFAULT_RESAMPLES
from tunesmith.evaluate.compare import FINE_TUNED, compare_scores
from tunesmith.evaluate.generate import EvaluationDataError
from tunesmith.evaluate.metrics import PERPLEXITY_METRICS, TEXT_METRIC_SETTING, UnknownMetricError
from tunesmith.evaluate.perplexity import (
    DEFAULT_FORGETTING_THRESHOLD,
    DEFAULT_WINDOW,
    heldout_perplexity,
)
from tunesmith.evaluate.report import write_report
from tunesmith.evaluate.run import PERPLEXITY, EvalResult
from tunesmith.evaluate.systems import Systems, write_results

BASE = "base"


def _n_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    """Texts of under two tokens have nothing to predict and are skipped."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _check_metrics(metrics: Sequence[str] | None) -> None:
    for name in metrics or []:
        if name not in PERPLEXITY_METRICS:
            raise UnknownMetricError(
                f"metric {name!r} scores generated replies; a pretrain run is scored by the "
                f"perplexity of held-out text. Remove it from {TEXT_METRIC_SETTING}, or leave "
                "that unset."
            )


def evaluate_text_models(
    fine_tuned_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    test_records: Sequence[Text],
    *,
    out_dir: str | Path,
    base_disabled_context: Callable[[], AbstractContextManager[object]] | None = None,
    base_model: PreTrainedModel | None = None,
    metrics: Sequence[str] | None = None,
    window: int = DEFAULT_WINDOW,
    batch_size: int = 4,
    measure_forgetting: bool = True,
    forgetting_text: str | Path | None = None,
    forgetting_threshold: float = DEFAULT_FORGETTING_THRESHOLD,
    metrics_jsonl_path: str | Path | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> EvalResult:
    """Held-out perplexity, base vs fine-tuned; writes ``results.json`` and ``report.html``.

    The base is ``fine_tuned_model`` inside ``base_disabled_context()`` or a separate
    ``base_model`` (exactly one). ``window`` is the tokens per forward pass (use the
    run's data.max_length, the block size it trained on).
    """
    systems = Systems(fine_tuned_model, base_disabled_context, base_model)
    _check_metrics(metrics)
    scored = [record for record in test_records if _n_tokens(tokenizer, record.text) >= 2]
    texts = [record.text for record in scored]
    if not texts:
        raise EvaluationDataError(
            "no held-out text to measure perplexity on: set data.test to a text file (or "
            "tunesmith eval --test FILE), or give data.split a test fraction above 0."
        )
    options = {"window": window, "batch_size": batch_size}
    tuned = heldout_perplexity(fine_tuned_model, tokenizer, texts, **options)
    with systems.base_scope():
        base = heldout_perplexity(systems.base, tokenizer, texts, **options)
    comparison = compare_scores(
        {"perplexity": {BASE: base, FINE_TUNED: tuned}},
        candidate=FINE_TUNED,
        n_items=len(texts),
        n_resamples=n_resamples,
        seed=seed,
        advice="the run did not clearly fit the held-out text better than the base",
        baseline_kind="",
    )
    forgetting = systems.forgetting(
        tokenizer, measure_forgetting, forgetting_text, forgetting_threshold, batch_size
    )
    tokens = int(tuned.stats[:, 1].sum())
    results_path = write_results(
        out_dir,
        {
            "kind": PERPLEXITY,
            "comparison": comparison.to_dict(),
            "forgetting": forgetting.to_dict() if forgetting else None,
            "settings": {
                "texts": len(texts),
                "tokens": tokens,
                "window": window,
                "sources": [str(record.source) for record in scored],
            },
        },
    )
    report_path = write_report(
        Path(out_dir),
        comparison,
        metrics_jsonl_path,
        forgetting,
        [],
        task=f"held-out texts ({tokens} tokens, window {window})",
        samples_title="Samples (none: a pretrain run is judged by held-out perplexity)",
    )
    return EvalResult(comparison, forgetting, {}, results_path, report_path, PERPLEXITY)
