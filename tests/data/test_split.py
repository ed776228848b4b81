"""Deterministic, stratified, leakage-free splits; exact and near-duplicate detection."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from tunesmith.data.load import prepare_records
from tunesmith.data.records import Conversation, Message, Source, Text
from tunesmith.data.split import (
    MinHasher,
    connected_groups,
    content_hash,
    exact_duplicate_groups,
    similar_pairs,
    split_without_leakage,
)
from tunesmith.data.validate import DataError

SENTENCE = (
    "the quick brown fox jumps over the lazy dog while the farmer watches from the old red "
    "barn and wonders whether the rain will come before the harvest is finished this year; "
    "meanwhile in the village the baker counts loaves and the children run along the river "
    "shouting at the ducks that float past the mill under a pale and windy autumn sky"
)


def sources(records):
    return [r.source for r in records]


def test_same_seed_same_split_and_other_seed_differs(write, chat):
    path = write("data.jsonl", [chat(i) for i in range(100)])
    first = prepare_records([path], seed=7)
    again = prepare_records([path], seed=7)
    other = prepare_records([path], seed=8)
    for name in ("train", "validation", "test"):
        assert sources(getattr(first, name)) == sources(getattr(again, name))
    assert sources(first.validation) != sources(other.validation)
    assert (len(first.train), len(first.validation), len(first.test)) == (80, 10, 10)
    assert first.report.carved == ["validation", "test"]


def test_split_is_stratified_by_label(write):
    rows = [{"text": f"message number {i} " + "x" * i, "label": "spam"} for i in range(30)]
    rows += [{"text": f"note {i} " + "y" * i, "label": "ham"} for i in range(170)]
    prepared = prepare_records([write("data.jsonl", rows)], seed=3)
    assert Counter(r.label for r in prepared.validation) == {"ham": 17, "spam": 3}
    assert Counter(r.label for r in prepared.test) == {"ham": 17, "spam": 3}
    assert Counter(r.label for r in prepared.train) == {"ham": 136, "spam": 24}


def test_groups_stay_in_one_split():
    groups = [0, 0, 0, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    for seed in range(20):
        parts = split_without_leakage(groups, [None] * 12, (0.5, 0.25, 0.25), seed)
        where = {i: name for name in ("train", "validation", "test") for i in getattr(parts, name)}
        assert len(where) == 12
        assert where[0] == where[1] == where[2]


def test_exact_duplicates_normalise_case_and_whitespace():
    def record(text: str, line: int) -> Text:
        return Text(text, Source("f", line))

    hashes = [
        content_hash(record(t, i)) for i, t in enumerate(["Hello  World", "hello world\n", "x"])
    ]
    assert exact_duplicate_groups(hashes) == [[0, 1]]


def test_three_copies_are_two_duplicates_and_dedup_keeps_the_first(write, chat):
    rows = [chat(i) for i in range(20)] + [chat(3), chat(3)]
    path = write("data.jsonl", rows)
    kept = prepare_records([path])
    assert [[s.line for s in g] for g in kept.report.duplicate_groups] == [[4, 21, 22]]
    warning = next(p for p in kept.report.problems if p.code == "duplicate_example")
    assert "2 duplicate(s)" in warning.message
    assert kept.report.rows_kept == 22

    deduped = prepare_records([path], dedup=True)
    assert [s.line for s in deduped.report.dropped["duplicate"]] == [21, 22]
    assert deduped.report.rows_kept == 20
    deduped.report.check_row_invariant()


def test_minhash_finds_a_near_duplicate_and_ignores_unrelated_text():
    texts = [SENTENCE, SENTENCE.replace("lazy", "sleepy"), "completely different words " * 5, ""]
    signatures = MinHasher().signatures(texts)
    assert np.array_equal(signatures, MinHasher().signatures(texts))
    pairs = similar_pairs(signatures, threshold=0.6)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]
    assert 0.6 <= pairs[0][2] < 1.0


def test_connected_groups_join_chains():
    assert connected_groups(5, [(0, 3), (3, 4)]) == [0, 1, 2, 0, 0]


def test_planted_exact_copy_in_the_test_file_is_an_error_naming_both_lines(write, chat):
    train = write("train.jsonl", [chat(i) for i in range(30)])
    test = write("test.jsonl", [chat(100), chat(101), chat(12)])
    with pytest.raises(DataError) as caught:
        prepare_records([train], test=[test])
    (error,) = caught.value.errors
    assert (error.code, error.file, error.line) == ("train_eval_overlap", str(test), 3)
    assert f"{train}:13" in error.message
    leak = caught.value.report.leaks[0]
    assert (leak.kind, leak.split, leak.train.line, leak.other.line) == ("exact", "test", 13, 3)


def test_planted_near_duplicate_in_validation_is_a_warning_listing_both(write, chat):
    def long_row(text: str) -> dict:
        return {
            "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]
        }

    train_rows = [chat(i) for i in range(30)] + [long_row(SENTENCE)]
    validation_rows = [chat(200), long_row(SENTENCE.replace("harvest", "harvests"))]
    train = write("train.jsonl", train_rows)
    validation = write("validation.jsonl", validation_rows)
    prepared = prepare_records([train], validation=[validation], split=(0.9, 0.1, 0.0))
    (warning,) = [p for p in prepared.report.problems if p.code == "train_eval_near_duplicate"]
    assert (warning.severity, warning.file, warning.line) == ("warning", str(validation), 2)
    assert f"{train}:31" in warning.message
    assert prepared.report.carved == []
    assert prepared.test == []
    assert sources(prepared.validation) == [Source(str(validation), 1), Source(str(validation), 2)]


def test_carved_splits_never_separate_near_duplicates(write, chat):
    rows = [chat(i) for i in range(40)]
    rows += [
        {
            "messages": [
                {"role": "user", "content": SENTENCE + f" {k}"},
                {"role": "assistant", "content": "a"},
            ]
        }
        for k in range(6)
    ]
    path = write("data.jsonl", rows)
    for seed in range(5):
        prepared = prepare_records([path], seed=seed)
        assert prepared.report.leaks == []
        near_lines = {41, 42, 43, 44, 45, 46}
        homes = {
            name
            for name in ("train", "validation", "test")
            for r in getattr(prepared, name)
            if r.source.line in near_lines
        }
        assert len(homes) == 1
    assert [len(g) for g in prepared.report.near_duplicate_groups] == [6]


def test_conversations_differing_only_in_the_reply_hash_differently():
    prompt = (Message("user", "q"),)
    a = Conversation((*prompt, Message("assistant", "x")), Source("f", 1))
    b = Conversation((*prompt, Message("assistant", "y")), Source("f", 2))
    assert content_hash(a) != content_hash(b)
