"""What the run will push through the model, from the dataset's real tokenized examples.

The examples are batched exactly as the loop batches them (the same epoch order, packing
and split into forward pieces), so the widest forward pass the plan probes is one the run
will really execute, and the token counts are the run's, not a guess from a mean length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunesmith.config import TrainConfig
from tunesmith.data.batching import epoch_order
from tunesmith.engine.batches import BatchSettings
from tunesmith.engine.loop import StepPlan, planned_steps

SHAPE_EPOCHS = 3
"""Epochs over which the run's distinct forward shapes are counted: later epochs reorder
the same examples, so they add few new widths."""
SHAPE_SAMPLES = 16
"""Pieces of other shapes the run executes that the probe runs to measure what new shapes
leave resident (~0.4 s each at SmolLM2's size, 8 rows). Real shapes of the run, so the
kernels they build in a training process that plans first are the run's own."""


@dataclass(frozen=True)
class Workload:
    """One epoch of the run as forward pieces, and the widest piece among them."""

    examples: int
    real_tokens_per_epoch: int
    """Non-padding tokens (what a per-token API bills as trained tokens, per epoch)."""
    trained_tokens_per_epoch: int
    """Tokens that carry loss (assistant replies for chat data)."""
    slots_per_epoch: int
    """Tensor slots the forward passes compute, padding included."""
    pieces_per_epoch: int
    steps: int
    epochs: float
    largest_piece: Any
    largest_piece_rows: int
    largest_piece_width: int
    shapes: int = 1
    """Distinct (rows, width) forward shapes the run executes (counted over at most
    `SHAPE_EPOCHS` epochs). On CPU each new shape can build kernels of its own that stay
    resident (oneDNN's bf16 matmul primitives: ~25 MB a shape at SmolLM2's size)."""
    shape_samples: tuple[Any, ...] = ()
    """A piece of each of up to `SHAPE_SAMPLES` other shapes the run executes (each no
    wider in slots than the largest)."""

    @property
    def largest_piece_slots(self) -> int:
        return self.largest_piece_rows * self.largest_piece_width


def describe_workload(
    examples: Sequence[Any], objective: Any, batches: BatchSettings, train: TrainConfig
) -> Workload:
    """Collate one epoch of ``examples`` as the loop does and measure it."""
    lengths = [len(example) for example in examples]
    real = trained = slots = pieces = 0
    largest, largest_key = None, (-1, -1)
    kept: dict[tuple[int, int], Any] = {}  # a piece of each of the first few shapes
    executed: set[tuple[int, int]] = set()
    step_plan = StepPlan.of(train, len(examples), 1)
    steps = planned_steps(train, len(examples), 1)
    total = steps * step_plan.micro_batches_per_step
    for index, group in enumerate(epoch_order(lengths, train.batch_size, train.seed, 0)):
        batch = batches.collate(objective, [examples[i] for i in group])
        real += int(batch.real_tokens)
        trained += sum(objective.units(examples[i]) for i in group)
        for piece in batches.forward_pieces(batch):
            rows, width = _shape(piece)
            if index < total:
                executed.add((rows, width))
                if len(kept) <= SHAPE_SAMPLES:
                    kept.setdefault((rows, width), piece)
            pieces += 1
            slots += rows * width
            key = (rows * width, _trained_positions(piece))
            if key > largest_key:
                largest, largest_key = piece, key
    shapes = executed | _later_shapes(
        examples, lengths, objective, batches, train, step_plan.micro_batches_per_epoch, total
    )
    epochs = train.epochs
    if train.max_steps:
        per_epoch = planned_steps(train.model_copy(update={"max_steps": None, "epochs": 1}),
                                  len(examples), 1)  # fmt: skip
        epochs = train.max_steps / per_epoch
    rows, width = _shape(largest)
    samples = tuple(piece for shape, piece in kept.items() if shape != (rows, width))
    samples = samples[:SHAPE_SAMPLES]
    return Workload(
        len(examples), real, trained, slots, pieces, steps, epochs, largest, rows, width,
        shapes=max(1, len(shapes)), shape_samples=samples,
    )  # fmt: skip


def _later_shapes(
    examples: Sequence[Any],
    lengths: list[int],
    objective: Any,
    batches: BatchSettings,
    train: TrainConfig,
    per_epoch: int,
    total: int,
) -> set[tuple[int, int]]:
    """The forward shapes of the run's ``total`` micro-batches after the first epoch's
    ``per_epoch``."""
    epochs = min(SHAPE_EPOCHS, math.ceil(total / max(1, per_epoch)))
    shapes: set[tuple[int, int]] = set()
    done = per_epoch
    for epoch in range(1, epochs):
        for group in epoch_order(lengths, train.batch_size, train.seed, epoch):
            if done >= total:
                return shapes
            done += 1
            batch = batches.collate(objective, [examples[i] for i in group])
            shapes.update(_shape(piece) for piece in batches.forward_pieces(batch))
    return shapes


def _token_rows(piece: Any) -> Any:
    """The token-id tensor of a piece: its own, or its sequences' (preference pairs)."""
    ids = getattr(piece, "input_ids", None)
    if ids is None:
        ids = getattr(getattr(piece, "sequences", None), "input_ids", None)
    return ids


def _shape(piece: Any) -> tuple[int, int]:
    ids = _token_rows(piece)
    return (int(ids.shape[0]), int(ids.shape[1])) if ids is not None else (0, 0)


def _trained_positions(piece: Any) -> int:
    inner = piece if hasattr(piece, "input_ids") else getattr(piece, "sequences", piece)
    trained = getattr(inner, "trained_tokens", None)
    return int(trained) if isinstance(trained, int) else 0
