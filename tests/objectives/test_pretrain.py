"""Continued pretraining: every token of raw text trains; other record kinds are errors."""

from __future__ import annotations

import pytest
import torch

from tests.objectives.helpers import lora_model, train
from tunesmith.data.records import Conversation, Message, Source, Text
from tunesmith.data.tokenize import TokenizeError
from tunesmith.objectives import get_objective

TEXTS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "What is two plus two? Four. What is three plus five? Eight.",
    "Answer with one word. Translate to French: hello, goodbye, thank you.",
    "You are a helpful assistant. Reply in JSON with keys intent and slots.",
]


def test_pretrain_trains_every_token_and_the_loss_falls(tiny_tokenizer, tiny_model, tmp_path):
    objective = get_objective("pretrain")
    records = [Text(text, Source("corpus.txt", i)) for i, text in enumerate(TEXTS, start=1)]
    examples, dropped = objective.tokenize(
        tiny_tokenizer, records, max_length=16, on_overlength="drop"
    )
    assert dropped == []
    assert len(examples) > len(TEXTS)  # long documents become several blocks, none dropped
    assert all(e.labels == e.input_ids for e in examples)
    assert sum(objective.units(e) for e in examples) == sum(len(e) - 1 for e in examples)
    result = train(lora_model(tiny_model), objective, examples, tmp_path, steps=20)
    losses = [loss for _, loss in result.state.train_history]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4


def test_pretrain_names_every_record_that_is_not_raw_text(tiny_tokenizer) -> None:
    records = [
        Text(TEXTS[0], Source("corpus.txt", 1)),
        Conversation((Message("user", "hi"), Message("assistant", "hello")), Source("c.jsonl", 3)),
    ]
    with pytest.raises(TokenizeError) as caught:
        get_objective("pretrain").tokenize(
            tiny_tokenizer, records, max_length=64, on_overlength="drop"
        )
    (problem,) = caught.value.problems
    assert (problem.code, problem.location) == ("wrong_record_kind", "c.jsonl:3")
    assert "raw text" in str(caught.value) and "objective sft" in str(caught.value)
