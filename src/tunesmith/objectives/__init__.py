"""Training objectives: each owns how its records become batches and a summed loss.

The loop only calls `tokenize`, `units`, `collate` and `loss_sum`, so adding an
objective means one module here and one line in `_REGISTERED`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunesmith.data.records import Record, Source
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
