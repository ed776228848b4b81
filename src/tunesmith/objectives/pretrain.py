"""Continued pretraining: next-token loss on every token of raw text, packed like SFT."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from tunesmith.data.records import Record, Source, Text
from tunesmith.data.tokenize import TokenizedExample, tokenize_texts
from tunesmith.objectives.record_kinds import require_record_kinds
from tunesmith.objectives.sft import SFT


class Pretrain(SFT):
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
