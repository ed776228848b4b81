"""Training objectives: each owns how its records become batches and a summed loss.

The loop only calls `tokenize`, `units`, `collate` and `loss_sum`. Adding an objective
means one file here: the objective, its settings model, a factory and a `register(...)`
call. Every public module of this package is imported below, so nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from torch import nn

from tunesmith.objectives.base import Objective, OwnsParameters
from tunesmith.objectives.errors import ObjectiveError
from tunesmith.objectives.registry import (
    DEFAULT_OBJECTIVE,
    ModelSource,
    ObjectiveSettings,
    Registration,
    build_objective,
    get_objective,
    objective_settings,
    registered_objectives,
    registration,
)

_NOT_OBJECTIVES = {"base", "registry", "errors", "losses", "record_kinds", "reference"}
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name not in _NOT_OBJECTIVES:
        importlib.import_module(f"{__name__}.{_module.name}")

OBJECTIVES: dict[str, Registration] = registered_objectives()


def attach_objective_parameters(objective: Objective, model: nn.Module) -> None:
    """Give `model` the objective's own trainable modules, if it has any."""
    if isinstance(objective, OwnsParameters):
        objective.attach_parameters(model)


def save_objective_parameters(objective: Objective, model: nn.Module, out_dir: Path) -> None:
    """Save the objective's own trained modules next to the method's artifact, if any."""
    if isinstance(objective, OwnsParameters):
        objective.save_parameters(model, out_dir)


__all__ = [
    "DEFAULT_OBJECTIVE",
    "OBJECTIVES",
    "ModelSource",
    "Objective",
    "ObjectiveError",
    "ObjectiveSettings",
    "OwnsParameters",
    "attach_objective_parameters",
    "build_objective",
    "get_objective",
    "objective_settings",
    "registration",
]
