"""Fixtures for the method tests: a briefly pretrained tiny base and a memorisable batch.

The shared tiny model is random with weights of std 0.02, so its activations are
nearly flat: methods that rescale or steer them (IA3, prompt and prefix tuning)
barely move its loss in a few steps. A few hundred milliseconds of full training
on general text give the base real structure, as a pretrained model has, and
every method then shows a clear loss drop on the memorisable set.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, LlamaForCausalLM, PretrainedConfig, PreTrainedTokenizerFast

_GENERAL_TEXT = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Answer with one word. Translate to French: hello, goodbye, thank you.",
    "What is two plus two? Four. What is three plus five? Eight.",
    "You are a helpful assistant. Reply in JSON with keys intent and slots.",
]

MEMORISABLE_TEXT = [
    "Paris is in France. Rome is in Italy.",
    "Two plus five is seven.",
    "The intent is GetWeather.",
    "9 8 7 6 5 4 3 2 1 0",
]


@pytest.fixture(scope="package", autouse=True)
def single_thread_torch() -> Iterator[None]:
    """Tiny models gain nothing from threads; on a shared CPU extra threads cost ~20x."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def encode(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask, and labels = input_ids with padding masked out."""
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "labels": labels,
    }


def _pretrained(
    config: PretrainedConfig, tokenizer: PreTrainedTokenizerFast, directory: Path
) -> Path:
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).train()
    batch = encode(tokenizer, _GENERAL_TEXT)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="package")
def pretrained_tiny_dir(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_dir: Path,
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> Path:
    """The shared tiny LLaMA's architecture after 40 full-training steps on general text."""
    config = AutoConfig.from_pretrained(tiny_model_dir)
    return _pretrained(config, tiny_tokenizer, tmp_path_factory.mktemp("pretrained-tiny"))


@pytest.fixture(scope="package")
def pretrained_tiny64_dir(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_dir: Path,
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> Path:
    """As `pretrained_tiny_dir` with hidden size 64 (key/value width 32).

    bitsandbytes' CPU inference kernel for 4-bit layers (used on AVX512-BF16 CPUs
    when the layer is not told otherwise) needs output widths divisible by 32; the
    tiny model's key/value width is 16.
    """
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.hidden_size, config.intermediate_size, config.head_dim = 64, 128, 16
    return _pretrained(config, tiny_tokenizer, tmp_path_factory.mktemp("pretrained-tiny64"))


@pytest.fixture(scope="package")
def memorisable_batch(tiny_tokenizer: PreTrainedTokenizerFast) -> dict[str, torch.Tensor]:
    return encode(tiny_tokenizer, MEMORISABLE_TEXT)
