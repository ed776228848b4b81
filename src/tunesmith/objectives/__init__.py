"""Training objectives: each owns how its records become batches and a summed loss.

The loop only calls `tokenize`, `units`, `collate` and `loss_sum`, so adding an
objective means one module here and one line in `_REGISTERED` (and, for an
objective with settings or a second model, one branch in `build_objective`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunesmith.config import ObjectiveConfig
from tunesmith.data.records import Record, Source
from tunesmith.objectives.distill import Distillation
from tunesmith.objectives.errors import ObjectiveError
from tunesmith.objectives.preference import PREFERENCE_LOSSES, PreferenceOptimization
from tunesmith.objectives.pretrain import Pretrain
from tunesmith.objectives.reference import ReferenceModel
from tunesmith.objectives.reward import RewardModelling, load_reward_model
from tunesmith.objectives.rlhf import GroupRelativePolicyOptimization
from tunesmith.objectives.sft import SFT


class Objective(Protocol):
    name: str

    def tokenize(
        self,
        tokenizer: PreTrainedTokenizerBase,
        records: Sequence[Record],
        *,
        max_length: int,
        on_overlength: str,
    ) -> tuple[list[Any], list[tuple[str, Source]]]:
        """Examples to train on, and (reason, source) of every record dropped."""
        ...

    def units(self, example: Any) -> int:
        """What the loss of one example is normalised by (trained tokens, or pairs)."""
        ...

    def collate(
        self, examples: Sequence[Any], *, pad_token_id: int, pack: bool, row_length: int
    ) -> Any:
        """One micro-batch; it has `.to(device)`, `.sources` and `.real_tokens`."""
        ...

    def loss_sum(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        """Loss summed over the batch's units, and the number of units."""
        ...


@runtime_checkable
class OwnsParameters(Protocol):
    """An objective that trains weights of its own (the reward head) next to the method's."""

    def attach_parameters(self, model: nn.Module) -> None:
        """Add the objective's trainable modules to `model` (before the optimizer is built)."""
        ...

    def save_parameters(self, model: nn.Module, out_dir: Path) -> None:
        """Write them as safetensors into the run's final artifact dir."""
        ...


_REGISTERED: tuple[Objective, ...] = (
    SFT(),
    Pretrain(),
    *(PreferenceOptimization(name) for name in PREFERENCE_LOSSES),
    RewardModelling(),
    Distillation(),
    GroupRelativePolicyOptimization(),
)
OBJECTIVES: dict[str, Objective] = {objective.name: objective for objective in _REGISTERED}


def get_objective(name: str) -> Objective:
    """A registered objective with default settings and no second model loaded.

    Every one tokenizes and collates (what `tunesmith data` needs). For training, use
    `build_objective`: it applies the config and gives distill its teacher, rlhf its reward
    model, and dpo/ipo/rlhf a frozen reference for methods that are not peft adapters.
    """
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ObjectiveError(
            f"objective {name!r} is not available; available: {', '.join(sorted(OBJECTIVES))}."
        ) from None


def build_objective(
    config: ObjectiveConfig,
    *,
    model_loader: Callable[[str], nn.Module],
    base_model: str,
) -> Objective:
    """The objective ``config`` asks for, with its settings and any model it needs.

    ``model_loader`` loads a causal LM by name or dir on the training device (frozen
    copies are made from it); ``base_model`` is ``model.name``, loaded as the frozen
    reference of dpo/ipo/rlhf only when the method is not a peft adapter. Models are
    loaded lazily, on first use, except the reward model of rlhf (loaded here so a bad
    ``objective.reward_model`` fails before training starts).
    """
    reference = ReferenceModel(lambda: model_loader(base_model))
    if config.name in PREFERENCE_LOSSES:
        return PreferenceOptimization(config.name, beta=config.beta, reference=reference)
    if config.name == "distill":
        teacher = config.teacher
        if teacher is None:
            raise ObjectiveError(
                "objective distill needs objective.teacher: a model name or local model dir "
                "with the same tokenizer as model.name."
            )
        return Distillation(
            lambda: model_loader(teacher), temperature=config.temperature, alpha=config.alpha
        )
    if config.name == "rlhf":
        if config.reward_model is None:
            raise ObjectiveError(
                "objective rlhf needs objective.reward_model: the run directory of a finished "
                "run with objective reward."
            )
        return GroupRelativePolicyOptimization(
            load_reward_model(config.reward_model, model_loader),
            reference=reference,
            beta=config.beta,
            group_size=config.group_size,
            max_new_tokens=config.max_new_tokens,
            clip_range=config.clip_range,
        )
    return get_objective(config.name)


def attach_objective_parameters(objective: Objective, model: nn.Module) -> None:
    """Give `model` the objective's own trainable modules, if it has any."""
    if isinstance(objective, OwnsParameters):
        objective.attach_parameters(model)


def save_objective_parameters(objective: Objective, model: nn.Module, out_dir: Path) -> None:
    """Save the objective's own trained modules next to the method's artifact, if any."""
    if isinstance(objective, OwnsParameters):
        objective.save_parameters(model, out_dir)


__all__ = [
    "OBJECTIVES",
    "Objective",
    "ObjectiveError",
    "OwnsParameters",
    "attach_objective_parameters",
    "build_objective",
    "get_objective",
    "save_objective_parameters",
]
