"""Evaluate a run directory: the fine-tuned model against its base model on held-out data.

The held-out items are the run's own test split, re-derived from its resolved
config (splits are deterministic), or a test file the user names. What is measured
follows the kind of record the run trained on:

- conversations: base zero-shot, base few-shot and fine-tuned, on label-ranked
  accuracy and macro-F1 when the replies form a closed set (classification), on
  generated replies otherwise (`evaluate.run`);
- preference pairs (dpo, ipo, orpo, reward, rlhf): preference accuracy and margin
  (`evaluate.preference`);
- raw text (pretrain): held-out perplexity (`evaluate.pretrain`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from tunesmith.config import RunConfig
from tunesmith.data.load import prepare_configured_records
from tunesmith.data.records import Conversation, Preference, Record, Text
from tunesmith.evaluate.metrics import check_metric_names
from tunesmith.evaluate.perplexity import DEFAULT_WINDOW
from tunesmith.evaluate.preference import evaluate_preference_models
from tunesmith.evaluate.pretrain import evaluate_text_models
from tunesmith.evaluate.run import EvalResult, evaluate_models
from tunesmith.methods import get_method
from tunesmith.models import load_base_model
from tunesmith.objectives import registration
from tunesmith.objectives.reward import REWARD_HEAD_FILE
from tunesmith.runs import RunError, RunPaths, TrainedModel, load_trained


def _conversations(records: Sequence[object]) -> list[Conversation]:
    return [r for r in records if isinstance(r, Conversation)]


def held_out_items(
    config: RunConfig, test_files: Sequence[Path] | None
) -> tuple[list[Conversation], list[Conversation]]:
    """(test items, training items for the few-shot prompt) of a run."""
    prepared = prepare_configured_records(config.data, test=test_files)
    return _conversations(prepared.test), _conversations(prepared.train)


def _base_for(trained: TrainedModel, config: RunConfig) -> dict[str, Any]:
    """How evaluation reaches the base model of a run: the one place that decides it.

    A method that can switch its adapter off (``switches_off``) computes the base with the
    adapter off (``base_disabled_context``); any other changed or hooked the base weights,
    so the base is loaded on its own (``base_model``).
    """
    method = get_method(config.method.name)
    if method.switches_off:
        return {"base_disabled_context": trained.model.disable_adapter}
    base = load_base_model(
        config.model.name,
        device=trained.device,
        dtype=trained.precision.weights,
        cache_dir=config.model.cache_dir,
        trust_remote_code=config.model.trust_remote_code,
        **method.base_load_options(config.method),
    ).model.eval()
    return {"base_model": base}


def _reward_head(paths: RunPaths, model: nn.Module) -> nn.Linear:
    """The trained reward head saved next to a reward run's artifact, on the model's device."""
    head_file = paths.final / REWARD_HEAD_FILE
    if not head_file.is_file():
        raise RunError(
            f"{head_file} is missing: a reward run saves its head there when training ends. "
            "Train the run to the end (tunesmith train --resume auto) before evaluating it."
        )
    weights = load_file(str(head_file))
    head = nn.Linear(weights["weight"].shape[1], 1)
    head.load_state_dict(weights)
    return head.to(next(model.parameters()).device, dtype=torch.float32).eval()


def _kind_of(records: Sequence[Record]) -> type:
    kinds = {type(record) for record in records}
    return kinds.pop() if len(kinds) == 1 else Conversation


def evaluate_run(
    run_dir: Path,
    *,
    test_files: Sequence[Path] | None = None,
    metrics: Sequence[str] | None = None,
    max_items: int | None = None,
    n_resamples: int | None = None,
    trust_remote_code: bool = False,
    on_notice: Callable[[str], None] | None = None,
) -> EvalResult:
    """Score the fine-tuned model against its base on held-out data; write `eval/` in the run.

    ``trust_remote_code`` is this caller's decision, never the run directory's; what the
    loader has to tell the user (say, a stored ``trust_remote_code`` it ignored) goes to
    ``on_notice``. ``n_resamples`` overrides the bootstrap's resample count (fewer is
    faster, for tests).
    """
    check_metric_names(metrics)
    paths = RunPaths(run_dir)
    trained = load_trained(run_dir, trust_remote_code=trust_remote_code)
    for notice in trained.notices:
        if on_notice is None:
            warnings.warn(notice, stacklevel=2)
        else:
            on_notice(notice)
    config = trained.config
    metrics = list(metrics) if metrics else config.eval.metrics
    check_metric_names(metrics)
    prepared = prepare_configured_records(config.data, test=test_files)
    test_records = list(prepared.test)
    if not test_records:
        raise RunError(
            f"{run_dir}: no test items to evaluate on. Pass --test FILE (tunesmith eval), set "
            "data.test, or give data.split a test fraction above 0."
        )
    limit = max_items if max_items is not None else config.eval.max_items
    common: dict[str, Any] = {
        "out_dir": paths.eval,
        "metrics": metrics,
        "forgetting_text": config.eval.forgetting_text,
        "forgetting_threshold": config.eval.forgetting_threshold,
        "metrics_jsonl_path": paths.metrics if paths.metrics.is_file() else None,
        **_base_for(trained, config),
    }
    if n_resamples is not None:
        common["n_resamples"] = n_resamples
    kind = _kind_of(test_records)
    if limit is not None and kind is not Preference:  # pairs are capped once tokenized
        test_records = test_records[:limit]
    # The run's precision rule, as in training: what was validated is what is scored.
    with trained.precision.autocast(trained.device):
        return _score(trained, paths, kind, test_records, list(prepared.train), limit, common)


def _score(
    trained: TrainedModel,
    paths: RunPaths,
    kind: type,
    test_records: list[Any],
    train_records: list[Any],
    limit: int | None,
    common: dict[str, Any],
) -> EvalResult:
    """Score the fine-tuned model and its base the way the test records' kind is judged."""
    config = trained.config
    if kind is Preference:
        # A run not trained on pairs (sft on a pair test file) is scored by its likelihood.
        score = registration(config.objective.name).pair_score or "mean_logprob"
        return evaluate_preference_models(
            trained.model,
            trained.tokenizer,
            [r for r in test_records if isinstance(r, Preference)],
            objective=config.objective.name,
            score=score,
            beta=getattr(config.objective, "beta", 1.0),  # scales dpo's implicit reward only
            reward_head=_reward_head(paths, trained.model) if score == "reward_head" else None,
            max_length=config.data.max_length,
            on_overlength=config.data.on_overlength,
            max_items=limit,
            max_new_tokens=config.eval.max_new_tokens,
            **common,
        )
    if kind is Text:
        return evaluate_text_models(
            trained.model,
            trained.tokenizer,
            [r for r in test_records if isinstance(r, Text)],
            window=min(config.data.max_length, DEFAULT_WINDOW),
            **common,
        )
    return evaluate_models(
        trained.model,
        trained.tokenizer,
        _conversations(test_records),
        _conversations(train_records),
        k_shot=config.eval.k_shot,
        max_new_tokens=config.eval.max_new_tokens,
        **common,
    )
