"""The runtime prompt format is measured from the template, including what trips runtimes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from transformers import PreTrainedTokenizerFast

from tunesmith.export.chat_format import read_chat_format, runtime_template
from tunesmith.export.errors import ExportError

SMOLLM_LIKE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
BOS_PREAMBLE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '[' + message['role'] + '] ' + message['content'] + '<|im_end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '[assistant] ' }}{% endif %}"
)


@pytest.fixture
def tokenizer(tiny_tokenizer: PreTrainedTokenizerFast) -> Iterator[PreTrainedTokenizerFast]:
    original = tiny_tokenizer.chat_template
    yield tiny_tokenizer
    tiny_tokenizer.chat_template = original


def test_chatml_turns_stop_token_and_no_bos_preamble(tokenizer: PreTrainedTokenizerFast) -> None:
    chat = read_chat_format(tokenizer)
    assert chat.prefixes["user"] == "<|im_start|>user\n"
    assert chat.suffixes["assistant"] == "<|im_end|>\n"
    assert chat.generation_prompt == "<|im_start|>assistant\n"
    assert chat.end_of_turn_ids == (tokenizer.convert_tokens_to_ids("<|im_end|>"),)
    assert chat.preamble == "" and chat.default_system is None
    # <|im_start|> is this tokenizer's BOS and opens every turn: the template writes it, so
    # a runtime must not add another.
    assert chat.template_writes_bos


def test_default_system_prompt_is_found(tokenizer: PreTrainedTokenizerFast) -> None:
    tokenizer.chat_template = SMOLLM_LIKE
    chat = read_chat_format(tokenizer)
    assert chat.default_system == "You are a helpful AI assistant."
    messages = [{"role": "user", "content": "hi"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat.render(messages) == rendered


def test_bos_written_once_is_a_preamble(tokenizer: PreTrainedTokenizerFast) -> None:
    tokenizer.chat_template = BOS_PREAMBLE
    chat = read_chat_format(tokenizer)
    assert chat.preamble == tokenizer.bos_token
    assert chat.prefixes["user"] == "[user] "


def test_generation_tags_are_removed_for_runtimes() -> None:
    template = "{% generation %}{{ m }}{%- endgeneration -%}x"
    assert runtime_template(template) == "{{ m }}x"


def test_a_template_that_rewrites_contents_is_refused(tokenizer: PreTrainedTokenizerFast) -> None:
    tokenizer.chat_template = (
        "{% for message in messages %}{{ message['content'] | upper }}{% endfor %}"
    )
    with pytest.raises(ExportError, match="verbatim"):
        read_chat_format(tokenizer)
