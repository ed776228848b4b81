"""The run's own training inputs: what "no drift" means for this model.

They are re-derived exactly as training derived them (`prepare_configured_records`
on the run's stored data settings), so the monitor compares live traffic with the
very train split the model learned from, and with the validation prompts it never
saw (the reference for perplexity).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunesmith.data.load import prepare_configured_records
from tunesmith.monitor.errors import MonitorError
from tunesmith.monitor.texts import answer_text, prompt_text
from tunesmith.runs import read_run_config

MIN_REFERENCE = 40
"""Fewer training inputs than this cannot give a null distribution worth the name."""


@dataclass
class Reference:
    prompts: list[str]
    answers: list[str | None]
    validation_prompts: list[str]
    labelled: bool
    """True when the training records carry labels (classification data)."""


def read_reference(run_dir: Path) -> Reference:
    """Training and validation prompts of a run; `MonitorError` if the run has none usable."""
    config = read_run_config(run_dir)
    if not config.data.train:
        raise MonitorError(
            f"{run_dir}/config.yaml: the run names no training data (data.train is empty), so "
            "there is nothing to compare live inputs with. Fix: monitor a run trained with --data."
        )
    prepared = prepare_configured_records(config.data)
    prompts = [prompt_text(record) for record in prepared.train]
    kept = [i for i, text in enumerate(prompts) if text.strip()]
    if len(kept) < MIN_REFERENCE:
        raise MonitorError(
            f"{run_dir}: the run's training data has {len(kept)} input(s) with a user turn; the "
            f"monitor needs at least {MIN_REFERENCE} to calibrate its tests. Fix: monitor a run "
            "trained on more (or on chat / classification) data."
        )
    answers = [answer_text(prepared.train[i]) for i in kept]
    labelled = all(getattr(prepared.train[i], "label", None) is not None for i in kept)
    validation = [prompt_text(record) for record in prepared.validation]
    return Reference(
        [prompts[i] for i in kept], answers, [t for t in validation if t.strip()], labelled
    )
