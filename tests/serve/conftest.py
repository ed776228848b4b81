"""Tiny LoRA runs trained once per session, and real servers over them on 127.0.0.1."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tunesmith import api
from tunesmith.config import load_config
from tunesmith.serve import Limits, build_state, start_in_background
from tunesmith.serve.server import BackgroundServer

from ..conftest import FACTS, build_tiny_tokenizer

API_KEY = "test-key-0123456789abcdef"


def train_tiny_run(
    workdir: Path, model_dir: Path, name: str, *, method: str = "{name: lora, r: 4, alpha: 8}",
    seed: int = 0, steps: int = 40, rotate_answers: int = 0,
) -> Path:  # fmt: skip
    """Training on the memorisable facts: seconds on the tiny model. ``rotate_answers``
    pairs each question with another fact's answer, so two runs answer differently."""
    data = workdir / f"{name}.jsonl"
    answers = [a for _, a in FACTS]
    answers = answers[rotate_answers:] + answers[:rotate_answers]
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"{q} ({i})"},
                {"role": "assistant", "content": a},
            ]
        }
        for i in range(2)
        for (q, _), a in zip(FACTS, answers, strict=True)
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = workdir / f"{name}.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            model: {{name: "{model_dir}"}}
            data: {{train: {data.name}, split: [0.8, 0.2, 0.0], max_length: 64}}
            method: {method}
            train: {{max_steps: {steps}, batch_size: 4, learning_rate: 0.03, seed: {seed},
                     eval_every: 100, early_stopping_patience: null}}
            eval: {{enabled: false}}
            output: {{dir: "{workdir}", name: {name}}}
            """
        )
    )
    summary = api.train(load_config(config), show_progress=False)
    return summary.run_dir


@pytest.fixture(scope="session")
def serve_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny LLaMA of tests/conftest.py, wider and with larger initial weights.

    The shared tiny model's logits are nearly uniform (loss ≈ ln 400 that LoRA cannot
    move), so its greedy answers are decided by float noise: no basis for "batched ==
    one at a time". This one learns the facts in 40 steps and answers decisively.
    """
    directory = tmp_path_factory.mktemp("serve-base")
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, tie_word_embeddings=True, initializer_range=0.1,
        bos_token_id=1, eos_token_id=2, pad_token_id=3,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory, serve_base_dir: Path) -> list[Path]:
    """Two LoRA runs on one tiny base that learned different answers to the same questions."""
    workdir = tmp_path_factory.mktemp("serve-runs")
    return [
        train_tiny_run(workdir, serve_base_dir, "alpha", seed=1),
        train_tiny_run(workdir, serve_base_dir, "beta", seed=2, rotate_answers=3),
    ]


@pytest.fixture(scope="session")
def server(tiny_runs: list[Path]) -> Iterator[BackgroundServer]:
    """One server with a key over the base and both runs, shared by the read-only tests."""
    state = build_state(tiny_runs, keys=[API_KEY], max_batch=8, device="cpu")
    with start_in_background(state) as running:
        yield running


def open_server(runs: list[Path], **options) -> BackgroundServer:
    limits = options.pop("limits", Limits())
    state = build_state(runs, limits=limits, device="cpu", **options)
    return start_in_background(state)
