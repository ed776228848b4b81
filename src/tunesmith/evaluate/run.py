"""The evaluation stage: base zero-shot, base few-shot and fine-tuned on the same held-out items.

This composes the parts of `tunesmith.evaluate` in one readable function; the CLI and the
Python API call `evaluate_models` and nothing below it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunesmith.data.records import Conversation, Message
from tunesmith.evaluate.bootstrap import DEFAULT_RESAMPLES
from tunesmith.evaluate.compare import (
    BASE_FEW_SHOT,
    BASE_ZERO_SHOT,
    FINE_TUNED,
    Comparison,
    compare_systems,
)
from tunesmith.evaluate.generate import (
    EvaluationDataError,
    choose_few_shot_examples,
    classify_with_labels,
    few_shot_prompt,
    generate_replies,
    split_prompt_and_reference,
)
from tunesmith.evaluate.metrics import (
    METRICS,
    UnknownMetricError,
    check_reply_metric_names,
    label_metric_needs_labels_message,
)
from tunesmith.evaluate.perplexity import DEFAULT_FORGETTING_THRESHOLD, ForgettingCheck
from tunesmith.evaluate.report import pick_samples, write_report
from tunesmith.evaluate.systems import Systems, write_results
from tunesmith.evaluate.task import as_classification

CLASSIFICATION = "classification"
GENERATION = "generation"
PREFERENCE = "preference"
PERPLEXITY = "perplexity"
KIND_DESCRIPTIONS = {
    CLASSIFICATION: "classification: base zero-shot, base few-shot and fine-tuned each pick "
    "the most likely known label",
    GENERATION: "generation: base zero-shot, base few-shot and fine-tuned replies (greedy)",
    PREFERENCE: "preference pairs: how often base and fine-tuned rank chosen over rejected "
    "(their generations side by side in the report)",
    PERPLEXITY: "held-out text: perplexity of base and fine-tuned (lower is better)",
}
"""What each kind of evaluation compares, in one line for terminals."""


@dataclass(frozen=True)
class EvalResult:
    """What the evaluation produced, in memory and on disk.

    ``kind`` is a key of `KIND_DESCRIPTIONS`: how the systems were scored (labels ranked by
    likelihood, generated replies, preference pairs, or held-out text perplexity).
    ``outputs`` holds each system's answers (generated or chosen labels; for preference
    runs the sampled generations) in test-item order.
    """

    comparison: Comparison
    forgetting: ForgettingCheck | None
    outputs: dict[str, list[str]]
    results_path: Path
    report_path: Path
    kind: str = GENERATION


def _answer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[Message]],
    labels: Sequence[str] | None,
    *,
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """One answer per prompt: the most likely known label, or a greedy free-text reply."""
    if labels:
        return classify_with_labels(model, tokenizer, prompts, labels, batch_size=batch_size)
    return generate_replies(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size
    )


def evaluate_models(
    fine_tuned_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    test_items: Sequence[Conversation],
    train_items: Sequence[Conversation],
    *,
    out_dir: str | Path,
    base_disabled_context: Callable[[], AbstractContextManager[object]] | None = None,
    base_model: PreTrainedModel | None = None,
    metrics: Sequence[str] | None = None,
    k_shot: int = 3,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    constrain_to_labels: bool | None = None,
    measure_forgetting: bool = True,
    forgetting_text: str | Path | None = None,
    forgetting_threshold: float = DEFAULT_FORGETTING_THRESHOLD,
    metrics_jsonl_path: str | Path | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    n_samples: int = 12,
    seed: int = 0,
) -> EvalResult:
    """Prove (or disprove) that fine-tuning beat prompting the base model, and write the report.

    The base model is ``fine_tuned_model`` inside ``base_disabled_context()`` (for peft:
    ``model.disable_adapter``) or a separate ``base_model``; pass exactly one. All three
    systems use the same greedy decoding; with labelled data, or chat data whose training
    replies form a closed set (`tunesmith.evaluate.task`), every system instead picks the
    most likely label from the train and test label set (``constrain_to_labels=False``
    turns that off and scores free generations).
    ``forgetting_text`` overrides the bundled general text for the forgetting check.
    Writes ``results.json`` and ``report.html`` (plus PNGs) into ``out_dir``.
    """
    systems = Systems(fine_tuned_model, base_disabled_context, base_model)
    check_reply_metric_names(metrics)
    task = _conversation_task(test_items, train_items, metrics, constrain_to_labels, k_shot, seed)
    decoding = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
    with systems.base_scope():
        zero_shot = _answer(systems.base, tokenizer, task.prompts, task.labels, **decoding)
        few_shot = _answer(systems.base, tokenizer, task.few_shot_prompts, task.labels, **decoding)
    fine_tuned = _answer(fine_tuned_model, tokenizer, task.prompts, task.labels, **decoding)
    outputs = {BASE_ZERO_SHOT: zero_shot, BASE_FEW_SHOT: few_shot, FINE_TUNED: fine_tuned}

    comparison = compare_systems(
        task.test_items, outputs, metrics, labels=task.labels, n_resamples=n_resamples, seed=seed
    )
    half_batch = max(1, batch_size // 2)
    forgetting = systems.forgetting(
        tokenizer, measure_forgetting, forgetting_text, forgetting_threshold, half_batch
    )
    kind = CLASSIFICATION if task.labels else GENERATION
    results_path = write_results(
        out_dir,
        {
            "kind": kind,
            "comparison": comparison.to_dict(),
            "forgetting": forgetting.to_dict() if forgetting else None,
            "settings": {
                "decoding": "greedy",
                "max_new_tokens": max_new_tokens,
                "label_constrained": task.labels,
                "k_shot": len(task.examples),
                "few_shot_examples": [str(example.source) for example in task.examples],
                "seed": seed,
            },
            "outputs": outputs,
        },
    )
    samples = pick_samples(task.test_items, outputs, comparison, n=n_samples)
    report_path = write_report(Path(out_dir), comparison, metrics_jsonl_path, forgetting, samples)
    return EvalResult(comparison, forgetting, outputs, results_path, report_path, kind)


@dataclass(frozen=True)
class _ConversationTask:
    """The held-out conversations as the three systems see them; ``labels`` are the known
    labels every system ranks, or None to score free generations."""

    test_items: Sequence[Conversation]
    prompts: list[tuple[Message, ...]]
    few_shot_prompts: list[tuple[Message, ...]]
    examples: list[Conversation]
    labels: list[str] | None


def _conversation_task(
    test_items: Sequence[Conversation],
    train_items: Sequence[Conversation],
    metrics: Sequence[str] | None,
    constrain_to_labels: bool | None,
    k_shot: int,
    seed: int,
) -> _ConversationTask:
    """Prompts, few-shot prompts and the label set, or a clear error when the data cannot
    be scored as asked."""
    if not test_items:
        raise EvaluationDataError(
            "no test items: evaluation needs a held-out test split. Set data.test to a file "
            "(or tunesmith eval --test FILE), or give data.split a test fraction above 0."
        )
    if constrain_to_labels is not False:
        test_items, train_items, _ = as_classification(test_items, train_items)
    all_labelled = all(item.label is not None for item in test_items)
    label_metrics = [name for name in metrics or [] if _needs_labels(name)]
    if label_metrics and not all_labelled:
        raise UnknownMetricError(label_metric_needs_labels_message(label_metrics[0]))
    use_labels = all_labelled if constrain_to_labels is None else constrain_to_labels
    if use_labels and not all_labelled:
        raise EvaluationDataError(
            "constrain_to_labels needs a 'label' on every test item: give text + label data, "
            "or turn it off for free-text data"
        )
    labels = (
        sorted({str(item.label) for item in [*test_items, *train_items] if item.label is not None})
        if use_labels
        else None
    )
    prompts = [split_prompt_and_reference(item)[0] for item in test_items]
    examples = choose_few_shot_examples(train_items, k=k_shot, seed=seed)
    few_shot_prompts = [few_shot_prompt(prompt, examples) for prompt in prompts]
    return _ConversationTask(test_items, prompts, few_shot_prompts, examples, labels)


def _needs_labels(name: str) -> bool:
    spec = METRICS.get(name.partition(":")[0])
    return spec is not None and spec.needs_labels
