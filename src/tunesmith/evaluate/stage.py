"""Evaluate a run directory: the fine-tuned model against its base model on held-out data.

The held-out items are the run's own test split, re-derived from its resolved
config (splits are deterministic), or a test file the user names.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from tunesmith.config import RunConfig
from tunesmith.data.load import prepare_configured_records
from tunesmith.data.records import Conversation
from tunesmith.evaluate.run import EvalResult, evaluate_models
from tunesmith.models import load_base_model
from tunesmith.runs import RunError, RunPaths, load_trained


def _conversations(records: Sequence[object]) -> list[Conversation]:
    return [r for r in records if isinstance(r, Conversation)]


def held_out_items(
    config: RunConfig, test_files: Sequence[Path] | None
) -> tuple[list[Conversation], list[Conversation]]:
    """(test items, training items for the few-shot prompt) of a run."""
    prepared = prepare_configured_records(config.data, test=test_files)
    return _conversations(prepared.test), _conversations(prepared.train)


def evaluate_run(
    run_dir: Path,
    *,
    test_files: Sequence[Path] | None = None,
    metrics: Sequence[str] | None = None,
    max_items: int | None = None,
    trust_remote_code: bool = False,
    on_notice: Callable[[str], None] | None = None,
) -> EvalResult:
    """Score base zero-shot, base few-shot and the fine-tuned model; write `eval/` in the run.

    ``trust_remote_code`` is this caller's decision, never the run directory's; what the
    loader has to tell the user (say, a stored ``trust_remote_code`` it ignored) goes to
    ``on_notice``.
    """
    paths = RunPaths(run_dir)
    trained = load_trained(run_dir, trust_remote_code=trust_remote_code)
    for notice in trained.notices:
        if on_notice is None:
            warnings.warn(notice, stacklevel=2)
        else:
            on_notice(notice)
    config = trained.config
    test_items, train_items = held_out_items(config, test_files)
    if not test_items:
        raise RunError(
            f"{run_dir}: no conversation test items to evaluate on. Pass --test FILE or set "
            "data.split with a test fraction above 0."
        )
    limit = max_items if max_items is not None else config.eval.max_items
    if limit is not None:
        test_items = test_items[:limit]
    base_options: dict[str, object] = {}
    if hasattr(trained.model, "disable_adapter"):
        base_options["base_disabled_context"] = trained.model.disable_adapter
    else:
        base_options["base_model"] = load_base_model(
            config.model.name,
            device=trained.device,
            cache_dir=config.model.cache_dir,
            trust_remote_code=trust_remote_code,
        ).model.eval()
    return evaluate_models(
        trained.model,
        trained.tokenizer,
        test_items,
        train_items,
        out_dir=paths.eval,
        metrics=metrics or config.eval.metrics,
        k_shot=config.eval.k_shot,
        max_new_tokens=config.eval.max_new_tokens,
        forgetting_text=config.eval.forgetting_text,
        forgetting_threshold=config.eval.forgetting_threshold,
        metrics_jsonl_path=paths.metrics if paths.metrics.is_file() else None,
        **base_options,
    )
