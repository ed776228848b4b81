"""Continued pretraining: next-token loss on every token of raw text, packed like SFT."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunesmith.data.batching import Batch
from tunesmith.data.records import Record, Source, Text
from tunesmith.data.tokenize import TokenizedExample, tokenize_texts
from tunesmith.objectives.record_kinds import require_record_kinds
from tunesmith.objectives.sft import SFT

_NEXT_TOKEN = SFT()


class Pretrain:
    """SFT's batching and loss on `Text` records only; long documents become several blocks."""

    name = "pretrain"

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
        return _NEXT_TOKEN.units(example)

    def collate(
        self,
        examples: Sequence[TokenizedExample],
        *,
        pad_token_id: int,
        pack: bool,
        row_length: int,
    ) -> Batch:
        return _NEXT_TOKEN.collate(
            examples, pad_token_id=pad_token_id, pack=pack, row_length=row_length
        )

    def loss_sum(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        return _NEXT_TOKEN.loss_sum(model, batch)
