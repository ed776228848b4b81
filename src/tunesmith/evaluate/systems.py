"""What every kind of evaluation shares: the two models it compares and the files it writes.

Conversation, preference and pretrain runs are scored differently, but each runs the base
next to the fine-tuned model (the same model with its adapter switched off, or a separate
copy), checks forgetting on general text the same way, and writes one ``results.json``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunesmith.evaluate.perplexity import ForgettingCheck, check_forgetting

RESULTS_NAME = "results.json"


@dataclass(frozen=True)
class Systems:
    """The fine-tuned model, and the base reached either through ``base_disabled_context``
    (for peft: ``model.disable_adapter``) or as a separate ``base_model``: exactly one."""

    fine_tuned: PreTrainedModel
    base_disabled_context: Callable[[], AbstractContextManager[object]] | None = None
    base_model: PreTrainedModel | None = None

    def __post_init__(self) -> None:
        if (self.base_disabled_context is None) == (self.base_model is None):
            raise ValueError("pass exactly one of base_disabled_context or base_model")

    @property
    def base(self) -> PreTrainedModel:
        """The model to call for the base; only valid inside `base_scope`."""
        return self.base_model if self.base_model is not None else self.fine_tuned

    def base_scope(self) -> AbstractContextManager[object]:
        """Where `base` answers as the base model (the adapter off, when it is shared)."""
        if self.base_disabled_context is not None:
            return self.base_disabled_context()
        return contextlib.nullcontext()

    def forgetting(
        self,
        tokenizer: PreTrainedTokenizerBase,
        enabled: bool,
        text_path: str | Path | None,
        threshold: float,
        batch_size: int,
    ) -> ForgettingCheck | None:
        """The general-text perplexity check of `check_forgetting`, or None when turned off."""
        if not enabled:
            return None
        return check_forgetting(
            self.fine_tuned,
            tokenizer,
            base_disabled_context=self.base_disabled_context,
            base_model=self.base_model,
            text_path=text_path,
            threshold=threshold,
            batch_size=batch_size,
        )


def write_results(out_dir: str | Path, results: dict[str, Any]) -> Path:
    """``results.json`` in ``out_dir`` (created), human-readable and UTF-8."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_NAME
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    return path
