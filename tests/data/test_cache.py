"""The tokenization cache: hits skip tokenizing, any changed input misses, entries are safe."""

from __future__ import annotations

import copy
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from tunesmith.data.cache import (
    default_tokenized_cache_dir,
    load_examples,
    tokenization_fingerprint,
    tokenize_with_cache,
)
from tunesmith.data.records import Conversation, Message, Source
from tunesmith.data.tokenize import TokenizedExample
from tunesmith.objectives.sft import SFT


class CountingSFT(SFT):
    """The real SFT objective, counting how often it actually tokenizes."""

    def __init__(self) -> None:
        self.calls = 0

    def tokenize(self, *args, **kwargs):
        self.calls += 1
        return super().tokenize(*args, **kwargs)


def records(n: int = 6, file: str = "chat.jsonl") -> list[Conversation]:
    return [
        Conversation(
            (
                Message("user", f"What is {i} plus {i}?"),
                Message("assistant", f"{2 * i}. " + "The capital of France is Paris. " * (i % 3)),
            ),
            Source(file, i + 1),
        )
        for i in range(n)
    ]


def run(objective, tokenizer, data, cache_dir: Path, max_length: int = 256, policy: str = "drop"):
    return tokenize_with_cache(
        objective, tokenizer, data, max_length=max_length, on_overlength=policy, cache_dir=cache_dir
    )


def test_second_call_loads_from_cache_without_tokenizing(tiny_tokenizer, tmp_path) -> None:
    objective = CountingSFT()
    first = run(objective, tiny_tokenizer, records(), tmp_path)
    second = run(objective, tiny_tokenizer, records(), tmp_path)
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert objective.calls == 1
    assert second.examples == first.examples
    assert second.cache_file == first.cache_file and first.cache_file.parent == tmp_path
    assert [type(e) for e in second.examples] == [type(e) for e in first.examples]


def test_key_ignores_truncation_state_left_by_earlier_calls(tiny_tokenizer) -> None:
    tokenizer = copy.deepcopy(tiny_tokenizer)
    before = tokenization_fingerprint(
        "sft", tokenizer, records(), max_length=256, on_overlength="drop"
    )
    tokenizer("some text", truncation=True, max_length=4, padding="max_length")
    after = tokenization_fingerprint(
        "sft", tokenizer, records(), max_length=256, on_overlength="drop"
    )
    assert before == after


def test_drops_are_cached_with_their_reasons(tiny_tokenizer, tmp_path) -> None:
    objective = CountingSFT()
    first = run(objective, tiny_tokenizer, records(), tmp_path, max_length=40)
    second = run(objective, tiny_tokenizer, records(), tmp_path, max_length=40)
    assert first.dropped, "the fixture must produce over-length drops"
    assert second.cache_hit and second.dropped == first.dropped
    assert {reason for reason, _ in second.dropped} == {"over_length"}


def test_every_input_of_tokenization_is_in_the_key(tiny_tokenizer) -> None:
    def key(tokenizer=tiny_tokenizer, data=None, name="sft", max_length=256, policy="drop"):
        return tokenization_fingerprint(
            name, tokenizer, data or records(), max_length=max_length, on_overlength=policy
        )

    other_template = copy.deepcopy(tiny_tokenizer)
    other_template.chat_template = tiny_tokenizer.chat_template.replace("\n", " ")
    other_vocab = copy.deepcopy(tiny_tokenizer)
    other_vocab.add_tokens(["<newtoken>"])
    edited = records()
    edited[3] = Conversation(
        (edited[3].messages[0], Message("assistant", "changed")), edited[3].source
    )
    moved = records()
    moved[0] = Conversation(moved[0].messages, Source("chat.jsonl", 99))
    keys = [
        key(),
        key(name="dpo"),
        key(max_length=128),
        key(policy="truncate_prompt"),
        key(tokenizer=other_template),
        key(tokenizer=other_vocab),
        key(data=edited),
        key(data=moved),
        key(data=records(file="other.jsonl")),
        key(data=records()[::-1]),
    ]
    assert len(set(keys)) == len(keys)
    assert key() == key(data=records())


def test_entries_are_safetensors_written_atomically(tiny_tokenizer, tmp_path) -> None:
    result = run(SFT(), tiny_tokenizer, records(), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [result.cache_file.name]
    raw = result.cache_file.read_bytes()
    (header_size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_size])
    assert header["__metadata__"]["format"] == "tunesmith-tokenized-1"
    assert {"input_ids:values", "input_ids:offsets", "labels:values", "source:line"} <= set(header)


def test_corrupt_entry_is_a_miss_and_is_rewritten(tiny_tokenizer, tmp_path) -> None:
    objective = CountingSFT()
    first = run(objective, tiny_tokenizer, records(), tmp_path)
    first.cache_file.write_bytes(first.cache_file.read_bytes()[:100])
    again = run(objective, tiny_tokenizer, records(), tmp_path)
    assert not again.cache_hit and objective.calls == 2
    assert again.examples == first.examples
    assert run(objective, tiny_tokenizer, records(), tmp_path).cache_hit


def test_entry_stored_under_another_key_is_not_served(tiny_tokenizer, tmp_path) -> None:
    first = run(SFT(), tiny_tokenizer, records(), tmp_path)
    assert load_examples(first.cache_file, "0" * 32) is None


def test_empty_split_round_trips(tiny_tokenizer, tmp_path) -> None:
    run(SFT(), tiny_tokenizer, [], tmp_path)
    result = run(SFT(), tiny_tokenizer, [], tmp_path)
    assert result.cache_hit and result.examples == [] and result.dropped == []


def test_default_dir_follows_tunesmith_cache(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path))
    assert default_tokenized_cache_dir() == tmp_path / "tokenized"
    monkeypatch.delenv("TUNESMITH_CACHE")
    assert default_tokenized_cache_dir() == Path.home() / ".cache" / "tunesmith" / "tokenized"


@dataclass(frozen=True)
class PairExample:
    chosen_ids: list[int]
    rejected_ids: list[int]
    prompt_length: int
    source: Source


@dataclass(frozen=True)
class NestedPair:
    chosen: TokenizedExample
    rejected: TokenizedExample
    source: Source


class NestedPairObjective:
    """Examples holding other examples, as preference pairs do."""

    name = "nested-pairs"

    def tokenize(self, tokenizer, records, *, max_length, on_overlength):
        examples, dropped = SFT().tokenize(
            tokenizer, records, max_length=max_length, on_overlength=on_overlength
        )
        return [NestedPair(e, examples[0], e.source) for e in examples], dropped


@dataclass(frozen=True)
class TextExample:
    text: str
    source: Source


class PairObjective:
    """An objective whose examples are another dataclass of int lists, ints and a Source."""

    name = "pairs"

    def tokenize(self, tokenizer, records, *, max_length, on_overlength):
        examples = [
            PairExample([1, 2, 3][: 1 + i % 3], [4] * i, i, r.source) for i, r in enumerate(records)
        ]
        return examples, [("no_trainable_tokens", Source("x.jsonl", 7))]


class TextObjective:
    name = "texts"

    def tokenize(self, tokenizer, records, *, max_length, on_overlength):
        return [TextExample("not ints", r.source) for r in records], []


def test_other_example_dataclasses_round_trip(tiny_tokenizer, tmp_path) -> None:
    first = run(PairObjective(), tiny_tokenizer, records(), tmp_path)
    second = run(PairObjective(), tiny_tokenizer, records(), tmp_path)
    assert second.cache_hit
    assert second.examples == first.examples and second.dropped == first.dropped
    assert any(e.rejected_ids == [] for e in second.examples)


def test_nested_example_dataclasses_round_trip(tiny_tokenizer, tmp_path) -> None:
    first = run(NestedPairObjective(), tiny_tokenizer, records(), tmp_path, max_length=40)
    second = run(NestedPairObjective(), tiny_tokenizer, records(), tmp_path, max_length=40)
    assert second.cache_hit and first.dropped
    assert second.examples == first.examples and second.dropped == first.dropped
    assert all(type(e.chosen) is TokenizedExample for e in second.examples)


def test_examples_that_are_not_ints_bypass_the_cache(tiny_tokenizer, tmp_path) -> None:
    first = run(TextObjective(), tiny_tokenizer, records(), tmp_path)
    second = run(TextObjective(), tiny_tokenizer, records(), tmp_path)
    assert first.cache_file is None and not second.cache_hit
    assert list(tmp_path.iterdir()) == []
    assert second.examples == first.examples


@pytest.mark.parametrize("policy", ["drop", "truncate_prompt"])
def test_policy_changes_are_separate_entries(tiny_tokenizer, tmp_path, policy) -> None:
    result = run(SFT(), tiny_tokenizer, records(), tmp_path, max_length=40, policy=policy)
    other = "truncate_prompt" if policy == "drop" else "drop"
    assert not run(
        SFT(), tiny_tokenizer, records(), tmp_path, max_length=40, policy=other
    ).cache_hit
    assert run(SFT(), tiny_tokenizer, records(), tmp_path, max_length=40, policy=policy).cache_hit
    assert result.cache_file.is_file()
