"""Training objectives: each turns a batch into a summed loss and the count it is normalised by."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from tunesmith.data.batching import Batch
from tunesmith.objectives.sft import SFT


class Objective(Protocol):
    name: str

    def loss_sum(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        """Loss summed over the batch's units (tokens or pairs) and the number of units."""
        ...


_REGISTERED: tuple[Objective, ...] = (SFT(),)
OBJECTIVES: dict[str, Objective] = {objective.name: objective for objective in _REGISTERED}


class ObjectiveError(Exception):
    """An objective that is unknown or cannot run with the given data/method."""


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ObjectiveError(
            f"objective {name!r} is not available yet; available: {', '.join(sorted(OBJECTIVES))}."
        ) from None


__all__ = ["OBJECTIVES", "Objective", "ObjectiveError", "get_objective"]
