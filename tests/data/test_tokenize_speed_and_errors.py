"""Tokenization: every failing record reported at once (D10, D5), batched work, same labels."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tunesmith.data.cache import tokenize_with_cache
from tunesmith.data.records import Conversation, Message, Source
from tunesmith.data.tokenize import (
    CHUNK,
    IGNORE_INDEX,
    TokenizeError,
    render_with_spans,
    tokenize_conversations,
)
from tunesmith.data.validate import DataError
from tunesmith.objectives.sft import SFT

from .conftest import shared_file

MISTRAL_LIKE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)


def chat(line: int, *turns: tuple[str, str], file: str = "data.jsonl", weights=None):
    weights = weights or {}
    return Conversation(
        tuple(Message(role, text, weights.get(i, 1)) for i, (role, text) in enumerate(turns)),
        Source(file, line),
    )


def simple(line: int, answer: str = "Paris") -> Conversation:
    return chat(line, ("user", f"capital of France? ({line})"), ("assistant", answer))


def trained_text(tokenizer, example) -> str:
    pairs = zip(example.input_ids, example.labels, strict=True)
    return tokenizer.decode([token for token, label in pairs if label != IGNORE_INDEX])


def with_template(tokenizer, template: str):
    other = copy.deepcopy(tokenizer)
    other.chat_template = template
    return other


def test_template_errors_name_every_failing_record(tiny_tokenizer) -> None:
    tokenizer = with_template(tiny_tokenizer, MISTRAL_LIKE)
    records = [simple(1), simple(3), simple(5)]
    records.insert(1, chat(2, ("system", "Be brief."), ("user", "hi"), ("assistant", "hello")))
    records.append(chat(9, ("system", "Be brief."), ("user", "bye"), ("assistant", "goodbye")))
    with pytest.raises(TokenizeError) as caught:
        tokenize_conversations(tokenizer, records, max_length=256)
    error = caught.value
    assert isinstance(error, DataError)
    assert [(p.code, p.location) for p in error.problems] == [
        ("template_render_failed", "data.jsonl:2"),
        ("template_render_failed", "data.jsonl:9"),
    ]
    assert all("Conversation roles must alternate" in p.message for p in error.problems)
    assert all("system message into the first user turn" in p.fix for p in error.problems)
    text = str(error)
    assert "2 record(s) cannot be tokenized" in text
    assert "data.jsonl:2: [template_render_failed]" in text and "Traceback" not in text


def test_records_the_template_accepts_still_tokenize(tiny_tokenizer) -> None:
    tokenizer = with_template(tiny_tokenizer, MISTRAL_LIKE)
    outcome = tokenize_conversations(tokenizer, [simple(1), simple(2)], max_length=256)
    assert len(outcome.examples) == 2
    (example, _) = outcome.examples
    assert trained_text(tokenizer, example) == "Paris<|im_end|>"


def test_a_template_that_rewrites_earlier_turns_is_reported(tiny_tokenizer) -> None:
    unstable = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}"
        "{% if loop.last %}<|im_end|>{% else %}\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(TokenizeError) as caught:
        tokenize_conversations(
            with_template(tiny_tokenizer, unstable), [simple(4), simple(7)], max_length=256
        )
    assert [(p.code, p.line, p.field) for p in caught.value.problems] == [
        ("template_render_failed", 4, "messages[1]"),
        ("template_render_failed", 7, "messages[1]"),
    ]
    assert "differently" in caught.value.problems[0].message


def test_templates_render_in_the_sandbox(tiny_tokenizer, tmp_path) -> None:
    marker = tmp_path / "pwned"
    payload = "{{ lipsum.__globals__['os'].popen('touch " + str(marker) + "').read() }}"
    with pytest.raises(TokenizeError) as caught:
        render_with_spans(
            with_template(tiny_tokenizer, payload), simple(1).messages, Source("d.jsonl", 1)
        )
    (problem,) = caught.value.problems
    assert problem.code == "template_render_failed" and "unsafe" in problem.message
    assert not marker.exists()


def test_a_tokenizer_without_chat_template_is_one_clear_error(tiny_tokenizer) -> None:
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = None
    with pytest.raises(TokenizeError) as caught:
        tokenize_conversations(tokenizer, [simple(i) for i in range(1, 30)], max_length=256)
    (problem,) = caught.value.problems
    assert "no chat template" in problem.message


def test_overlength_error_lists_every_long_record(tiny_tokenizer) -> None:
    long = "The capital of France is Paris. " * 10
    records = [simple(1), simple(2, long), simple(3), simple(4, long), simple(5, long)]
    with pytest.raises(TokenizeError) as caught:
        tokenize_conversations(tiny_tokenizer, records, max_length=40, on_overlength="error")
    problems = caught.value.problems
    assert [(p.code, p.line) for p in problems] == [("over_length", n) for n in (2, 4, 5)]
    assert all("data.max_length=40" in p.message for p in problems)


def test_render_failures_and_overlength_come_in_one_listing(tiny_tokenizer) -> None:
    tokenizer = with_template(tiny_tokenizer, MISTRAL_LIKE)
    records = [
        simple(1, "The capital of France is Paris. " * 10),
        chat(2, ("system", "x"), ("user", "y"), ("assistant", "z")),
        simple(3),
    ]
    with pytest.raises(TokenizeError) as caught:
        tokenize_conversations(tokenizer, records, max_length=40, on_overlength="error")
    assert sorted((p.line, p.code) for p in caught.value.problems) == [
        (1, "over_length"),
        (2, "template_render_failed"),
    ]


def reference_labels(tokenizer, record: Conversation) -> list[int]:
    """One render and encode per record and a scan over every token: the plain definition."""
    text, spans = render_with_spans(tokenizer, record.messages, record.source)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [
        token if any(a <= start < b for a, b in spans) else IGNORE_INDEX
        for token, (start, _) in zip(encoding["input_ids"], encoding["offset_mapping"], strict=True)
    ]


def test_batched_tokenization_matches_the_plain_definition(tiny_tokenizer) -> None:
    records = [
        simple(1),
        chat(2, ("system", "Answer with one word."), ("user", "café ünïcödé 東京?"),
             ("assistant", "Tōkyō — 東京 ✓"), ("user", "and Italy?"), ("assistant", "Rome")),
        chat(3, ("user", "wrong?"), ("assistant", "Rome"), ("user", "again"),
             ("assistant", "Paris"), weights={1: 0}),
        chat(4, ("user", "emoji 🙂🙂"), ("assistant", "🙂 ok\n\n  spaced  ")),
    ]  # fmt: skip
    outcome = tokenize_conversations(tiny_tokenizer, records, max_length=512)
    assert [e.labels for e in outcome.examples] == [
        reference_labels(tiny_tokenizer, r) for r in records
    ]


def test_rendering_and_encoding_are_batched_per_chunk(tiny_tokenizer, monkeypatch) -> None:
    calls = []
    real = tiny_tokenizer.apply_chat_template

    def counting(*args, **kwargs):
        calls.append(len(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny_tokenizer, "apply_chat_template", counting)
    n = 2 * CHUNK + 5
    outcome = tokenize_conversations(tiny_tokenizer, [simple(i) for i in range(n)], max_length=256)
    assert len(outcome.examples) == n
    assert len(calls) == 2 * 3  # per chunk: one call for full renders, one for prompts
    assert sum(calls) == 2 * n


def test_truncate_prompt_keeps_the_longest_tail_that_fits(tiny_tokenizer) -> None:
    turns = [("system", "Answer with one word.")]
    for k in range(6):
        turns += [("user", f"question {k}: capital of France?"), ("assistant", f"Paris {k}")]
    record = chat(1, *turns)

    def length_from(k: int) -> int:
        tail = chat(1, turns[0], *turns[1 + 2 * k :])
        return len(tokenize_conversations(tiny_tokenizer, [tail], max_length=4096).examples[0])

    limit = length_from(3)
    assert length_from(2) > limit
    (example,) = tokenize_conversations(
        tiny_tokenizer, [record], max_length=limit, on_overlength="truncate_prompt"
    ).examples
    text = tiny_tokenizer.decode(example.input_ids)
    assert len(example) == limit
    assert "Answer with one word." in text and "question 3:" in text
    assert "question 2:" not in text and text.rstrip().endswith("Paris 5<|im_end|>")


@pytest.mark.e2e
def test_smollm2_on_gsm8k_masks_answers_and_caches(tmp_path) -> None:
    from transformers import AutoTokenizer

    from tunesmith.models.loading import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m-instruct"))
    rows = [
        json.loads(line)
        for line in shared_file("gsm8k/train.jsonl").read_text().splitlines()[:1000]
    ]
    records = [
        chat(i + 1, ("user", r["question"]), ("assistant", r["answer"]), file="gsm8k.jsonl")
        for i, r in enumerate(rows)
    ]

    def tokenize(cache_dir: Path):
        return tokenize_with_cache(
            SFT(), tokenizer, records, max_length=1024, on_overlength="drop", cache_dir=cache_dir
        )

    cold = tokenize(tmp_path)
    render = tokenizer.apply_chat_template

    def no_rendering(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cache hit rendered a chat again")

    tokenizer.apply_chat_template = no_rendering  # a hit must not tokenize at all
    try:
        warm = tokenize(tmp_path)
    finally:
        tokenizer.apply_chat_template = render
    # Throughput is benchmarks/data_prepare.py's to measure: timed assertions here failed on
    # busy machines twice (a hit's 0.43 s against 0.69 s cold when alone, more when not).
    assert not cold.cache_hit and warm.cache_hit and warm.examples == cold.examples
    for row, example in zip(rows, cold.examples, strict=True):
        assert trained_text(tokenizer, example) == row["answer"] + "<|im_end|>\n"
