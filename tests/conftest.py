"""Shared fixtures: a tiny random LLaMA and a real (small) BPE tokenizer, built offline.

Unit tests never touch the network or the bundled 135M model: the tiny model
trains a step in milliseconds, so behaviour (loss falls, frozen weights stay put,
save/load round trips) is checked on every method in seconds.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run fastest on one thread; more only adds contention on small CPUs. The
# environment variable also reaches the training runs and subprocesses the tests start.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Answer with one word. Translate to French: hello, goodbye, thank you.",
    "What is two plus two? Four. What is three plus five? Eight.",
    "You are a helpful assistant. Reply in JSON with keys intent and slots.",
    '{"intent": "GetWeather", "slots": {"city": "Paris"}} spam ham positive negative',
    "0 1 2 3 4 5 6 7 8 9 #### the a an of to in is it for on with as be by",
]


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
    )
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped


def build_tiny_model(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny model + tokenizer dir, usable anywhere a model name or dir is accepted."""
    directory = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(len(tokenizer)).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def tiny_model(tiny_tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    return build_tiny_model(len(tiny_tokenizer))


FACTS = [
    ("What is two plus two?", "Four."),
    ("capital of France?", "Paris"),
    ("capital of Italy?", "Rome"),
    ("Translate to French: hello", "bonjour"),
    ("What is three plus five?", "Eight."),
    ("Reply in JSON", '{"intent": "GetWeather"}'),
    ("one word", "spam"),
    ("another word", "ham"),
    ("say thank you", "thank you"),
    ("say goodbye", "goodbye"),
    ("a number", "7"),
    ("two numbers", "4 5"),
]


@pytest.fixture
def run_setup(tmp_path: Path, tiny_model_dir: Path) -> tuple[Path, Path]:
    """A memorisable chat file and a small LoRA config on the tiny model, in tmp_path."""
    data = tmp_path / "facts.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"{q} ({i})"},
                {"role": "assistant", "content": a},
            ]
        }
        for i in range(2)
        for q, a in FACTS
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "resume.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            model: {{name: "{tiny_model_dir}"}}
            data: {{train: facts.jsonl, split: [0.8, 0.2, 0.0], max_length: 64}}
            method: {{name: lora, r: 4, alpha: 8, dropout: 0.1}}
            train:
              max_steps: 6
              batch_size: 4
              gradient_accumulation: 2
              learning_rate: 0.01
              eval_every: 2
              early_stopping_patience: null
            eval: {{enabled: false}}
            """
        )
    )
    return config, tmp_path
