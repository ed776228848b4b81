"""How a run's examples become the tensors of its forward passes: one value, used everywhere.

Training, validation before and after training, and every evaluation pass collate with the
same padding, packing and row width, in micro-batches of the same size, split to the same
bound on tokens per forward, on the same device. They read it from one `BatchSettings`, so
no caller can pass one of them differently from the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tunesmith.config import TrainConfig

NO_SPLIT = 1 << 30
"""``max_tokens_per_forward`` that never splits a micro-batch."""


@dataclass(frozen=True)
class BatchSettings:
    """Collation and placement of a run's micro-batches.

    ``pack`` puts several examples in one row of at most ``row_length`` tokens (objectives
    that pad pairs or prompts ignore it); ``max_tokens_per_forward`` bounds the tensor slots of
    one forward pass, so a micro-batch runs as several passes with the same summed loss.
    """

    pad_token_id: int
    pack: bool
    row_length: int
    batch_size: int
    device: torch.device
    max_tokens_per_forward: int = NO_SPLIT

    @classmethod
    def of(
        cls,
        settings: TrainConfig,
        *,
        pad_token_id: int,
        pack: bool,
        row_length: int,
        device: torch.device,
    ) -> BatchSettings:
        """The batches a run's ``train`` settings ask for; ``pack`` is what the method allows."""
        return cls(
            pad_token_id=pad_token_id,
            pack=pack,
            row_length=row_length,
            batch_size=settings.batch_size,
            device=device,
            max_tokens_per_forward=settings.max_tokens_per_forward,
        )

    def collate(self, objective: Any, examples: Sequence[Any]) -> Any:
        """One micro-batch of ``examples`` as ``objective`` batches them, on the device."""
        batch = objective.collate(
            examples, pad_token_id=self.pad_token_id, pack=self.pack, row_length=self.row_length
        )
        return batch.to(self.device)

    def forward_pieces(self, batch: Any) -> list[Any]:
        """The passes one micro-batch runs as (itself, when its kind of batch cannot split)."""
        return batch.split(self.max_tokens_per_forward) if hasattr(batch, "split") else [batch]
