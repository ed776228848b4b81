"""Continued pretraining: next-token loss on every token of raw text, packed like SFT."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunesmith.data.batching import Batch
from tunesmith.data.records import Record, Source, Text
from tunesmith.data.tokenize import TokenizedExample, tokenize_texts
from tunesmith.objectives.record_kinds import require_record_kinds
from tunesmith.objectives.registry import ModelSource, ObjectiveSettings, Registration, register
from tunesmith.objectives.sft import SFT


class Pretrain:
    """SFT's batching and loss on `Text` records only; long documents become several blocks."""

    name = "pretrain"

    def __init__(self) -> None:
        self._sft = SFT()  # batching and loss are SFT's; only the records differ

    def tokenize(
        self,
        tokenizer: PreTrainedTokenizerBase,
        records: Sequence[Record],
        *,
        max_length: int,
        on_overlength: str,
    ) -> tuple[list[TokenizedExample], list[tuple[str, Source]]]:
        require_record_kinds(
            records,
            (Text,),
            objective=self.name,
            expected="raw text",
            fix="Give pretrain plain text (.txt files or JSONL rows with a 'text' key), "
            "or use objective sft for conversations and dpo for preference pairs.",
        )
        texts = [record for record in records if isinstance(record, Text)]
        return tokenize_texts(tokenizer, texts, max_length=max_length), []

    def units(self, example: TokenizedExample) -> int:
        return self._sft.units(example)

    def collate(
        self,
        examples: Sequence[TokenizedExample],
        *,
        pad_token_id: int,
        pack: bool,
        row_length: int,
    ) -> Batch:
        return self._sft.collate(
            examples, pad_token_id=pad_token_id, pack=pack, row_length=row_length
        )

    def loss_sum(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        return self._sft.loss_sum(model, batch)


class PretrainSettings(ObjectiveSettings):
    name: Literal["pretrain"] = "pretrain"


def _build(settings: ObjectiveSettings, models: ModelSource | None) -> Pretrain:
    return Pretrain()


register(Registration("pretrain", PretrainSettings, _build, verdict="perplexity", shardable=True))
