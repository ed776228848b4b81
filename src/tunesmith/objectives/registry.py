"""Where objectives register themselves: one `register(...)` call at the end of each file.

A registration carries the objective's settings model (its `objective:` section of the
run config), a factory that builds it from those settings, and what the rest of tunesmith
asks about it instead of testing its name. `tunesmith.objectives` imports every public
module of the package, so a new objective is one new file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict
from torch import nn

from tunesmith.objectives.base import Objective
from tunesmith.objectives.errors import ObjectiveError
from tunesmith.registry import Registry

DEFAULT_OBJECTIVE = "sft"

PairScore = Literal["log_ratio_sum", "log_ratio_per_token", "mean_logprob", "reward_head"]
"""How a pairwise objective scores one reply of a held-out pair, as it trains it: the
implicit reward β·(log π − log π_base) summed (dpo) or per token (ipo), the mean token
log-probability (orpo, rlhf), or the reward head's score (reward)."""

Verdict = Literal["task", "preference", "perplexity"]
"""How a finished run is judged against its base: task metrics on held-out conversations,
preference accuracy on held-out pairs, or perplexity on held-out text."""


class ObjectiveSettings(BaseModel):
    """The knobs of one objective; each registers a subclass with ``name: Literal[...]``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str


@dataclass(frozen=True)
class ModelSource:
    """How an objective gets the second model it needs (teacher, reference, reward model).

    ``load`` loads a causal LM by name or dir on the training device; ``base_model`` is the
    run's ``model.name`` (the frozen reference of dpo/ipo/rlhf for non-adapter methods).
    """

    load: Callable[[str], nn.Module]
    base_model: str


Factory = Callable[[ObjectiveSettings, ModelSource | None], Objective]
"""Builds the objective; with no ModelSource it must load nothing (tokenizing only)."""


@dataclass(frozen=True)
class Registration:
    name: str
    settings: type[ObjectiveSettings]
    build: Factory
    verdict: Verdict
    shardable: bool
    """FSDP2 can run it: its loss is a fixed sequence of forward passes (no sampling)."""
    pair_score: PairScore | None = None
    """For ``verdict="preference"``: how a held-out reply is scored."""
    openai_method: str | None = None
    """The ``method.type`` of OpenAI's fine-tuning API that this objective implements
    (``tunesmith serve --jobs`` maps a job onto it)."""


_OBJECTIVES: Registry[Registration] = Registry("objective", ObjectiveError)


def register(entry: Registration) -> Registration:
    """Make the objective available to configs and every entry point under its name."""
    return _OBJECTIVES.add(entry.name, entry, entry.settings)


def registered_objectives() -> dict[str, Registration]:
    return _OBJECTIVES.all()


def objective_for_openai_method(method_type: str) -> Registration | None:
    """The objective behind OpenAI's ``method.type`` (supervised, dpo), or None."""
    for entry in _OBJECTIVES.all().values():
        if entry.openai_method == method_type:
            return entry
    return None


def registration(name: str) -> Registration:
    return _OBJECTIVES.get(name)


def objective_settings(name: str = DEFAULT_OBJECTIVE, **values: object) -> ObjectiveSettings:
    """Validated settings of objective `name` (defaults for every knob not given)."""
    return registration(name).settings(name=name, **values)


def get_objective(name: str) -> Objective:
    """Objective `name` with default settings and no second model loaded.

    Every one tokenizes and collates (what `tunesmith data` needs). For training, use
    `build_objective`: it applies the settings and gives distill its teacher, rlhf its
    reward model, and dpo/ipo/rlhf a frozen reference for methods that are not adapters.
    """
    entry = registration(name)
    return entry.build(entry.settings(), None)


def build_objective(
    settings: ObjectiveSettings, *, model_loader: Callable[[str], nn.Module], base_model: str
) -> Objective:
    """The objective `settings` asks for, with any model it needs.

    Models are loaded lazily, on first use, except the reward model of rlhf (loaded here
    so a bad ``objective.reward_model`` fails before training starts).
    """
    entry = registration(settings.name)
    return entry.build(settings, ModelSource(model_loader, base_model))
