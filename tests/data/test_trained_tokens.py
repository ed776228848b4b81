"""Trained tokens are counted in one place: `tunesmith data show`, the data report and the
loss's normaliser agree, for conversations and for raw text (whose first token is labelled
but never predicted)."""

from __future__ import annotations

import io
import re

import pytest
import torch
from rich.console import Console

from tunesmith.cli_data import print_example
from tunesmith.data.records import Conversation, Message, Source, Text
from tunesmith.data.tokenize import tokenize_conversations, tokenize_texts
from tunesmith.objectives import get_objective
from tunesmith.objectives.losses import causal_lm_nll_sum

RECORDS = {
    "conversations": [
        Conversation(
            (Message("user", "capital of France?"), Message("assistant", "Paris")),
            Source("chat.jsonl", 1),
        ),
        Conversation(
            (Message("user", "two plus two?"), Message("assistant", "Four. Eight.")),
            Source("chat.jsonl", 2),
        ),
    ],
    "raw text": [
        Text("The capital of Italy is Rome.", Source("notes.txt", 1)),
        Text("What is three plus five? Eight.", Source("notes.txt", 2)),
    ],
}


def shown_trained_count(tokenizer, example) -> int:
    """The ``trained N`` that `tunesmith data show` prints for ``example``."""
    stream = io.StringIO()
    print_example(Console(file=stream, force_terminal=False, width=200), tokenizer, example)
    return int(re.search(r"trained (\d+)", stream.getvalue()).group(1))


@pytest.mark.parametrize("kind", list(RECORDS))
def test_data_show_counts_what_the_loss_normalises_by(tiny_tokenizer, tiny_model, kind) -> None:
    if kind == "conversations":
        examples = tokenize_conversations(tiny_tokenizer, RECORDS[kind], max_length=128).examples
    else:
        examples = tokenize_texts(tiny_tokenizer, RECORDS[kind], max_length=128)
    assert len(examples) == 2
    objective = get_objective("sft" if kind == "conversations" else "pretrain")
    for example in examples:
        batch = objective.collate([example], pad_token_id=3, pack=True, row_length=128)
        with torch.no_grad():
            _loss, loss_count = causal_lm_nll_sum(tiny_model, batch)
        units = objective.units(example)
        assert 0 < units == loss_count == batch.trained_tokens
        assert shown_trained_count(tiny_tokenizer, example) == units
