"""Turn tokenized examples into training batches with as little padding as possible.

A micro-batch is always `batch_size` examples, so an optimizer step sees the same
examples whatever the packing setting (batch 8 x accumulation 1 == 2 x 4).
Examples of similar length are grouped, then packed into rows of at most
`row_length` tokens. Position ids restart at each example and no attention mask
is passed, which makes transformers attend only within each example (block
diagonal), so packed loss equals per-example loss.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tunesmith.data.records import Source
from tunesmith.data.tokenize import IGNORE_INDEX, TokenizedExample


@dataclass
class Batch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    sources: list[Source]
    real_tokens: int
    row_fill: list[int] | None = None

    @property
    def trained_tokens(self) -> int:
        """Tokens whose prediction carries loss (labels are shifted by one)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    @property
    def padded_tokens(self) -> int:
        return self.input_ids.numel()

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.labels.to(device),
            self.position_ids.to(device),
            None if self.attention_mask is None else self.attention_mask.to(device),
            self.sources,
            self.real_tokens,
            self.row_fill,
        )

    def split(self, max_tokens: int) -> list[Batch]:
        """Consecutive rows in pieces of at most `max_tokens` tensor slots (at least one row),
        each trimmed to its own longest row.

        Running the pieces one after another gives the same summed loss and gradients with
        activation memory bounded by `max_tokens` instead of the whole micro-batch.
        """
        fill = self.row_fill or [self.input_ids.shape[1]] * self.input_ids.shape[0]
        pieces: list[Batch] = []
        start = 0
        while start < len(fill):
            stop = start + 1
            while (
                stop < len(fill) and (stop + 1 - start) * max(fill[start : stop + 1]) <= max_tokens
            ):
                stop += 1
            width = max(fill[start:stop])
            rows = slice(start, stop)
            pieces.append(
                Batch(
                    self.input_ids[rows, :width],
                    self.labels[rows, :width],
                    self.position_ids[rows, :width],
                    None if self.attention_mask is None else self.attention_mask[rows, :width],
                    self.sources if start == 0 else [],
                    sum(fill[start:stop]),
                    fill[start:stop],
                )
            )
            start = stop
        return pieces


def epoch_order(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True
) -> list[list[int]]:
    """Example indices for each micro-batch of one epoch; a pure function of (seed, epoch),
    so a resumed run regenerates exactly the same order."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        window = batch_size * 32
        grouped: list[int] = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True)
            grouped.extend(chunk)
        order = grouped
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def _first_fit_decreasing(sizes: Sequence[int], capacity: int) -> list[list[int]]:
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(sizes)), key=lambda i: sizes[i], reverse=True):
        for row, free in enumerate(room):
            if sizes[index] <= free:
                rows[row].append(index)
                room[row] -= sizes[index]
                break
        else:
            rows.append([index])
            room.append(max(capacity, sizes[index]) - sizes[index])
    return rows


def _pack_rows(examples: Sequence[TokenizedExample], row_length: int) -> list[list[int]]:
    """Indices of the examples sharing each row, choosing the row width (up to `row_length`)
    that leaves the fewest padded slots in the batch tensor."""
    sizes = [len(example) for example in examples]
    best: list[list[int]] | None = None
    best_slots = None
    for capacity in range(max(sizes), max(row_length, max(sizes)) + 1, 16):
        rows = _first_fit_decreasing(sizes, capacity)
        slots = len(rows) * max(sum(sizes[i] for i in row) for row in rows)
        if best_slots is None or slots < best_slots:
            best, best_slots = rows, slots
    assert best is not None
    return best


def collate(
    examples: Sequence[TokenizedExample], *, pad_token_id: int, pack: bool, row_length: int
) -> Batch:
    """Build one micro-batch. Each example's first label is masked: nothing in the row before
    it may predict it, exactly as when it stands alone."""
    if pack:  # longest rows first, so `split` pieces group rows of similar width
        groups = _pack_rows(examples, row_length)
        groups.sort(key=lambda group: sum(len(examples[i]) for i in group), reverse=True)
    else:  # one example per row, in order: callers may rely on row i being example i
        groups = [[i] for i in range(len(examples))]
    width = max(sum(len(examples[i]) for i in group) for group in groups)
    input_ids = torch.full((len(groups), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(groups), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(groups), width), dtype=torch.long)
    attention_mask = None if pack else torch.zeros((len(groups), width), dtype=torch.long)
    for row, group in enumerate(groups):
        cursor = 0
        for index in group:
            example = examples[index]
            size = len(example)
            input_ids[row, cursor : cursor + size] = torch.tensor(example.input_ids)
            row_labels = torch.tensor(example.labels)
            row_labels[0] = IGNORE_INDEX
            labels[row, cursor : cursor + size] = row_labels
            position_ids[row, cursor : cursor + size] = torch.arange(size)
            if attention_mask is not None:
                attention_mask[row, cursor : cursor + size] = 1
            cursor += size
        # Padding continues its own position run so it forms a separate (ignored) segment.
        position_ids[row, cursor:] = torch.arange(width - cursor)
    return Batch(
        input_ids=input_ids,
        labels=labels,
        position_ids=position_ids,
        attention_mask=attention_mask,
        sources=[e.source for e in examples],
        real_tokens=sum(len(e) for e in examples),
        row_fill=[sum(len(examples[i]) for i in group) for group in groups],
    )
