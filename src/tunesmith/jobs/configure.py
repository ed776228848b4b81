"""A job's request → the `RunConfig` the worker trains, using only server-side paths.

OpenAI's hyperparameters map onto tunesmith's settings (docs/jobs.md): ``n_epochs`` →
``train.epochs``, ``batch_size`` → ``train.batch_size``, ``learning_rate_multiplier`` →
the method's default learning rate times the multiplier, ``beta`` → ``objective.beta``,
``seed`` → ``train.seed``; ``"auto"`` keeps tunesmith's default. ``method.type`` picks
the objective registered for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig, load_config
from tunesmith.methods import get_method
from tunesmith.objectives.registry import objective_for_openai_method

SIMPLE = {"n_epochs": "train.epochs", "batch_size": "train.batch_size", "beta": "objective.beta"}


def run_config(
    body: dict[str, Any], *, base_path: str, train_path: Path, validation_path: Path | None,
    run_dir: Path,
) -> RunConfig:  # fmt: skip
    """The config of the job's run (``run_dir``); raises `ConfigError` on a bad override."""
    method = body["method"]
    kind = method["type"]
    hyper = method[kind]["hyperparameters"]
    objective = objective_for_openai_method(kind)
    overrides = [
        f"model.name={base_path}",
        f"data.train=[{train_path}]",
        f"objective.name={objective.name}",
        f"output.dir={run_dir.parent}",
        f"output.name={run_dir.name}",
    ]
    if validation_path is not None:
        overrides.append(f"data.validation=[{validation_path}]")
    if body.get("seed") is not None:
        overrides.append(f"train.seed={body['seed']}")
    for name, key in SIMPLE.items():
        if hyper.get(name, "auto") != "auto":
            overrides.append(f"{key}={hyper[name]}")
    overrides += body["tunesmith"]["overrides"]
    config = load_config(overrides=overrides)
    multiplier = hyper.get("learning_rate_multiplier", "auto")
    if multiplier != "auto":
        default = get_method(config.method.name).default_learning_rate
        config.train.learning_rate = float(multiplier) * (config.train.learning_rate or default)
    return config
