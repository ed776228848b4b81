"""Preference pairs become two sequences with the same prompt tokens and loss on the reply only."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.objectives.helpers import PAIRS, preference_records
from tunesmith.data.formats import read_file
from tunesmith.data.preference import PreferenceExample, tokenize_preferences
from tunesmith.data.records import Conversation, Message, Preference, Source, Text
from tunesmith.data.tokenize import IGNORE_INDEX, TokenizedExample, TokenizeError
from tunesmith.objectives import get_objective

ORCA_PAIRS = (
    Path(__file__).resolve().parents[2]
    / ".."
    / "shared"
    / "data"
    / "orca_dpo_pairs_sample"
    / "validation.jsonl"
)


def trained_text(tokenizer, example: TokenizedExample) -> str:
    return tokenizer.decode(
        [
            t
            for t, label in zip(example.input_ids, example.labels, strict=True)
            if label != IGNORE_INDEX
        ]
    )


def prompt_ids(example: TokenizedExample) -> list[int]:
    first_trained = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    return example.input_ids[:first_trained]


def assert_reply_only(tokenizer, pair: PreferenceExample, record: Preference) -> None:
    assert trained_text(tokenizer, pair.chosen) == record.chosen.content + "<|im_end|>\n"
    assert trained_text(tokenizer, pair.rejected) == record.rejected.content + "<|im_end|>\n"
    rendered_prompt = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in record.prompt],
        tokenize=False,
        add_generation_prompt=True,
    )
    expected = tokenizer(rendered_prompt, add_special_tokens=False)["input_ids"]
    assert prompt_ids(pair.chosen) == prompt_ids(pair.rejected) == expected
    # Trained tokens are one contiguous run at the end: the reply and its end-of-turn.
    for sequence in (pair.chosen, pair.rejected):
        start = len(prompt_ids(sequence))
        assert sequence.labels[start:] == sequence.input_ids[start:]


def test_only_reply_tokens_carry_loss_and_both_replies_share_the_prompt(tiny_tokenizer) -> None:
    records = preference_records()
    outcome = tokenize_preferences(tiny_tokenizer, records, max_length=128)
    assert outcome.dropped == []
    assert len(outcome.examples) == len(PAIRS)
    for pair, record in zip(outcome.examples, records, strict=True):
        assert pair.source == record.source
        assert_reply_only(tiny_tokenizer, pair, record)


def test_assistant_turns_inside_the_prompt_are_context_not_trained(tiny_tokenizer) -> None:
    record = Preference(
        (
            Message("system", "Answer with one word."),
            Message("user", "capital of France?"),
            Message("assistant", "Paris"),
            Message("user", "capital of Italy?"),
        ),
        Message("assistant", "Rome"),
        Message("assistant", "Paris"),
        Source("multi.jsonl", 3),
    )
    (pair,) = tokenize_preferences(tiny_tokenizer, [record], max_length=128).examples
    assert_reply_only(tiny_tokenizer, pair, record)


def long_pair(line: int) -> Preference:
    return Preference(
        (Message("user", "capital of France?"),),
        Message("assistant", "Paris"),
        Message("assistant", "Rome " * 60),
        Source("long.jsonl", line),
    )


def test_an_over_long_pair_is_dropped_with_its_reason(tiny_tokenizer) -> None:
    records = [*preference_records(), long_pair(9)]
    outcome = tokenize_preferences(tiny_tokenizer, records, max_length=40, on_overlength="drop")
    assert outcome.dropped == [("over_length", Source("long.jsonl", 9))]
    assert len(outcome.examples) == len(PAIRS)
    assert all(max(len(p.chosen), len(p.rejected)) <= 40 for p in outcome.examples)


def test_error_policy_lists_every_over_long_pair_by_file_and_line(tiny_tokenizer) -> None:
    records = [long_pair(4), *preference_records(), long_pair(11)]
    with pytest.raises(TokenizeError) as caught:
        tokenize_preferences(tiny_tokenizer, records, max_length=40, on_overlength="error")
    assert [(p.code, p.location) for p in caught.value.problems] == [
        ("over_length", "long.jsonl:4"),
        ("over_length", "long.jsonl:11"),
    ]


def test_truncate_prompt_drops_the_oldest_turns_and_keeps_the_system_turn(tiny_tokenizer) -> None:
    history = tuple(
        message
        for question, answer in [("What is two plus two?", "Four."), ("capital of Italy?", "Rome")]
        for message in (Message("user", question), Message("assistant", answer))
    )
    record = Preference(
        (Message("system", "Be brief."), *history, Message("user", "capital of France?")),
        Message("assistant", "Paris"),
        Message("assistant", "Rome"),
        Source("history.jsonl", 1),
    )
    full = tokenize_preferences(tiny_tokenizer, [record], max_length=256).examples[0]
    limit = len(full.chosen) - 5
    (pair,) = tokenize_preferences(
        tiny_tokenizer, [record], max_length=limit, on_overlength="truncate_prompt"
    ).examples
    assert max(len(pair.chosen), len(pair.rejected)) <= limit
    text = tiny_tokenizer.decode(pair.chosen.input_ids)
    assert text.startswith("<|im_start|>system\nBe brief.")
    assert "two plus two" not in text and "capital of France?" in text
    assert trained_text(tiny_tokenizer, pair.chosen) == "Paris<|im_end|>\n"


@pytest.mark.parametrize("name", ["dpo", "ipo", "orpo", "reward"])
def test_preference_objectives_reject_other_records_with_file_and_line(
    tiny_tokenizer, name
) -> None:
    records = [
        *preference_records(),
        Conversation(
            (Message("user", "hi"), Message("assistant", "hello")), Source("chat.jsonl", 2)
        ),
        Text("plain text", Source("notes.txt", 7)),
    ]
    with pytest.raises(TokenizeError) as caught:
        get_objective(name).tokenize(tiny_tokenizer, records, max_length=128, on_overlength="drop")
    problems = caught.value.problems
    assert [(p.code, p.location) for p in problems] == [
        ("wrong_record_kind", "chat.jsonl:2"),
        ("wrong_record_kind", "notes.txt:7"),
    ]
    assert "preference pairs" in str(caught.value)


def test_real_orca_pairs_tokenize_with_loss_on_the_replies_only(tiny_tokenizer) -> None:
    read = read_file(ORCA_PAIRS)
    records = read.records[:8]
    assert len(records) == 8 and all(isinstance(r, Preference) for r in records)
    outcome = tokenize_preferences(tiny_tokenizer, records, max_length=100_000)
    assert len(outcome.examples) == 8
    for pair, record in zip(outcome.examples, records, strict=True):
        assert pair.source.file.endswith("validation.jsonl")
        assert_reply_only(tiny_tokenizer, pair, record)
    # The same pairs under a realistic limit: the long ones are dropped, each with its reason.
    limit = sorted(max(len(p.chosen), len(p.rejected)) for p in outcome.examples)[3]
    capped = tokenize_preferences(tiny_tokenizer, records, max_length=limit)
    assert len(capped.examples) == 4
    assert [reason for reason, _ in capped.dropped] == ["over_length"] * 4
