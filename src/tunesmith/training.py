"""The parts of a training run that `api.train` composes, each with one job.

Preparing the data (read, validate, split, tokenize, report), building the trainable
model (base + method + the objective's own modules), and writing `final/`. The loop,
checkpoints and the resume contract live in `engine/`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunesmith.config import RunConfig
from tunesmith.data.cache import tokenize_with_cache
from tunesmith.data.load import prepare_configured_records
from tunesmith.data.report import DataReport
from tunesmith.engine.loop import TrainingError
from tunesmith.engine.parallel import Parallel, Processes, Replicated
from tunesmith.manifest import write_manifest
from tunesmith.methods import Method, get_method
from tunesmith.models import load_base_model
from tunesmith.objectives import (
    Objective,
    attach_objective_parameters,
    build_objective,
    save_objective_parameters,
)
from tunesmith.runs import RunPaths


@dataclass
class TrainSummary:
    run_dir: Path
    rank: int
    final_dir: Path
    steps: int
    resumed_at_step: int | None
    """The checkpoint's step when the run continued one; ``steps`` counts from zero."""
    seconds: float
    real_tokens_per_second: float
    val_loss_before: float | None
    val_loss_after: float | None
    best_step: int | None
    trainable: int
    total: int
    stopped_early: bool
    stopped_by_signal: bool
    warnings: list[str] = field(default_factory=list)
    predicted_peak_bytes: int | None = None
    """The plan's peak before the first step (None when it could not be made)."""
    measured_peak_bytes: int | None = None
    """Peak RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA (`peak_memory_source`)."""
    peak_memory_source: str | None = None
    predicted_tokens_per_second: float | None = None

    def to_json(self) -> str:
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        return json.dumps(data, indent=2)


@dataclass
class TrainingData:
    train: list[Any]
    validation: list[Any]
    report: DataReport

    @property
    def fingerprint(self) -> str:
        """Changes whenever any training example does: a resume must see the same data."""
        digest = hashlib.sha256()
        for example in self.train:
            digest.update(json.dumps(dataclasses.asdict(example), default=str).encode())
        return digest.hexdigest()[:16]


def prepare_training_data(
    config: RunConfig,
    objective: Objective,
    tokenizer: PreTrainedTokenizerBase,
    paths: RunPaths,
    *,
    write_report: bool,
) -> TrainingData:
    """Read, validate, split and tokenize the run's data; write `data_report.json`."""
    prepared = prepare_configured_records(config.data)
    report = prepared.report
    examples = {}
    for split, records in (("train", prepared.train), ("validation", prepared.validation)):
        examples[split], dropped, _hit, _file = tokenize_with_cache(
            objective,
            tokenizer,
            records,
            max_length=config.data.max_length,
            on_overlength=config.data.on_overlength,
        )
        for reason, source in dropped:
            report.add_dropped(reason, source)
    train = examples["train"]
    report.set_token_stats([len(e) for e in train], [objective.units(e) for e in train])
    report.check_row_invariant()
    if write_report:
        report.write(paths.root)
    if not train:
        raise TrainingError(
            f"no training examples left after tokenization; see {paths.data_report} for why."
        )
    return TrainingData(train, examples["validation"], report)


@dataclass
class TrainableModel:
    """The model the loop trains, and how to build it again (for a sharded run's export)."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    method: Method
    objective: Objective
    rebuild: Callable[[], nn.Module]


def build_trainable_model(
    config: RunConfig, *, device: torch.device, dtype: torch.dtype
) -> TrainableModel:
    """Base model + the method's trainable parts + the objective's own modules, seeded."""
    method = get_method(config.method.name)

    def load(name: str, **options: object):
        return load_base_model(
            name, device=device, dtype=dtype, cache_dir=config.model.cache_dir, **options
        )

    objective = build_objective(
        config.objective,
        model_loader=lambda name: load(name).model,
        base_model=config.model.name,
    )

    def build() -> tuple[nn.Module, PreTrainedTokenizerBase]:
        torch.manual_seed(config.train.seed)
        loaded = load(
            config.model.name,
            trust_remote_code=config.model.trust_remote_code,
            **method.base_load_options(config.method),
        )
        model = method.attach(loaded.model, config.method)
        attach_objective_parameters(objective, model)
        return model, loaded.tokenizer

    model, tokenizer = build()
    return TrainableModel(model, tokenizer, method, objective, rebuild=lambda: build()[0])


def write_final(
    trainable: TrainableModel, parallel: Parallel, processes: Processes, final_dir: Path
) -> None:
    """Write `final/` (the method's artifact, the objective's modules, the tokenizer).

    A sharded model has no whole copy to save from: every process gathers the weights
    and rank 0 rebuilds a whole model to hold them.
    """
    whole = trainable.model
    if not isinstance(parallel, Replicated):
        weights = parallel.trainable_state()
        if processes.rank == 0:
            whole = trainable.rebuild()
            Replicated(whole, trainable.objective, Processes()).load_trainable_state(weights)
    if processes.rank == 0:
        trainable.method.save(whole, final_dir)
        save_objective_parameters(trainable.objective, whole, final_dir)
        trainable.tokenizer.save_pretrained(final_dir)
        write_manifest(final_dir)


def logged_val_loss_before_training(metrics: Path) -> float | None:
    """The validation loss the run measured at step 0, before the stop it resumes from."""
    if not metrics.exists():
        return None
    first = metrics.read_text(encoding="utf-8").partition("\n")[0]
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        return None
    return record.get("val_loss") if record.get("step") == 0 else None
