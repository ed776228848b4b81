"""Instruction tuning and continued pretraining: next-token loss on the trained tokens.

Conversations train on assistant turns (masks from the data stage); raw text
trains on every token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunesmith.data.batching import Batch, collate
from tunesmith.data.records import Conversation, Record, Source, Text
from tunesmith.data.tokenize import (
    TokenizedExample,
    tokenize_conversations,
    tokenize_texts,
)
from tunesmith.objectives.losses import causal_lm_nll_sum
from tunesmith.objectives.registry import ModelSource, ObjectiveSettings, Registration, register


class SFT:
    name = "sft"

    def tokenize(
        self,
        tokenizer: PreTrainedTokenizerBase,
        records: Sequence[Record],
        *,
        max_length: int,
        on_overlength: str,
    ) -> tuple[list[TokenizedExample], list[tuple[str, Source]]]:
        conversations = [r for r in records if isinstance(r, Conversation)]
        texts = [r for r in records if isinstance(r, Text)]
        examples: list[TokenizedExample] = []
        dropped: list[tuple[str, Source]] = []
        if conversations:
            outcome = tokenize_conversations(
                tokenizer, conversations, max_length=max_length, on_overlength=on_overlength
            )
            examples.extend(outcome.examples)
            dropped.extend(outcome.dropped)
        if texts:
            examples.extend(tokenize_texts(tokenizer, texts, max_length=max_length))
        return examples, dropped

    def units(self, example: TokenizedExample) -> int:
        return example.trained_tokens

    def collate(
        self,
        examples: Sequence[TokenizedExample],
        *,
        pad_token_id: int,
        pack: bool,
        row_length: int,
    ) -> Batch:
        return collate(examples, pad_token_id=pad_token_id, pack=pack, row_length=row_length)

    def loss_sum(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        return causal_lm_nll_sum(model, batch)


class SftSettings(ObjectiveSettings):
    name: Literal["sft"] = "sft"


def _build(settings: ObjectiveSettings, models: ModelSource | None) -> SFT:
    return SFT()


register(
    Registration(
        "sft", SftSettings, _build, verdict="task", shardable=True, openai_method="supervised"
    )
)
