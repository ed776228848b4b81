"""Shared pieces of the objective tests: memorisable preference pairs and a short training run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.config import TrainConfig
from tunesmith.data.records import Message, Preference, Source
from tunesmith.engine.batches import BatchSettings
from tunesmith.engine.loop import LoopOutput, LoopResult, LoopSettings, run_loop
from tunesmith.engine.progress import TrainingProgress
from tunesmith.methods import get_method, method_settings
from tunesmith.objectives import Objective

PAIRS = [
    ("What is two plus two?", "Four.", "Eight."),
    ("capital of France?", "Paris", "Rome"),
    ("capital of Italy?", "Rome", "Paris and the capital of France"),
    ("Translate to French: hello", "bonjour", "goodbye thank you"),
    ("What is three plus five?", "Eight.", "Four."),
    ("Reply in JSON", '{"intent": "GetWeather"}', "spam ham"),
    ("one word", "spam", "positive negative"),
    ("another word", "ham", "the a an of to in"),
]


def preference_records(file: str = "pairs.jsonl") -> list[Preference]:
    return [
        Preference(
            (Message("user", prompt),),
            Message("assistant", chosen),
            Message("assistant", rejected),
            Source(file, line),
        )
        for line, (prompt, chosen, rejected) in enumerate(PAIRS, start=1)
    ]


def lora_model(model: nn.Module) -> nn.Module:
    """LoRA on the tiny model, with embeddings large enough for an adapter to steer
    (at the init std of 0.02 the tied-embedding logits are all near zero)."""
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(10)
    return get_method("lora").attach(model, method_settings(r=8, alpha=32, dropout=0.0))


def train(
    model: nn.Module,
    objective: Objective,
    examples: Sequence[Any],
    tmp_path: Path,
    *,
    steps: int,
    learning_rate: float = 1e-2,
    batch_size: int = 4,
    pad_token_id: int = 3,
) -> LoopResult:
    """`steps` optimizer steps of the real loop (no validation, constant learning rate)."""
    settings = TrainConfig(
        max_steps=steps,
        batch_size=batch_size,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        early_stopping_patience=None,
    )
    with TrainingProgress(steps, enabled=False) as progress:
        return run_loop(
            model,
            objective,
            examples,
            [],
            settings=LoopSettings(settings, learning_rate),
            batches=BatchSettings.of(
                settings,
                pad_token_id=pad_token_id,
                pack=True,
                row_length=128,
                device=torch.device("cpu"),
            ),
            output=LoopOutput(tmp_path / "metrics.jsonl", progress),
        )
