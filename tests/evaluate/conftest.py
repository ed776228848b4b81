"""Offline fixtures for evaluation tests: a small trained BPE chat tokenizer and tiny LLaMAs.

Named apart from tests/conftest.py (``chat_tokenizer``, ``tiny_llama``) so nothing is shadowed.
"""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tunesmith.data.records import Conversation, Message, Source

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TRAINING_SENTENCES = [
    "the movie was great and the actors were wonderful",
    "the film was terrible and boring, a waste of time",
    "what is two plus three? the answer is #### 5",
    "classify the sentiment of this review: positive or negative",
    "user assistant system question answer label",
    "a quiet river runs through the old town at night",
    '{"name": "Ada", "age": 36, "tags": ["math", "code"]}',
]
SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; on a shared 2-core machine extra threads only
    spin against other processes (a 256-token training step took 0.4 s with 2 threads under
    load and 0.01 s with 1)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def chat_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained here, in-process, with a ChatML template."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TRAINING_SENTENCES, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
    )
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped


def build_tiny_llama(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer, 32-wide random LLaMA sized to the test tokenizer's vocabulary."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_llama(chat_tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    return build_tiny_llama(chat_tokenizer)


def conversation(prompt: str, reply: str, label: str | None = None, line: int = 1) -> Conversation:
    """A one-turn test item: the user prompt and the reference assistant reply."""
    return Conversation(
        messages=(Message("user", prompt), Message("assistant", reply)),
        source=Source("test.jsonl", line),
        label=label,
    )


@pytest.fixture
def make_conversation():
    return conversation


@pytest.fixture
def make_tiny_llama():
    return build_tiny_llama
