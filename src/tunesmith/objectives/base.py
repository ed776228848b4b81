"""The shape every training objective has."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunesmith.data.records import Record, Source


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
