"""Deterministic, stratified, leakage-free splits; exact and near-duplicate detection."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from rich.console import Console

from tunesmith.data.load import prepare_records
from tunesmith.data.records import Conversation, Message, Source, Text
from tunesmith.data.report import print_report
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


LABELS = [f"intent_{name}" for name in ["alpha", "beta", "gamma", "delta", "epsilon"]]
PROMPT = (
    "You are the intent classifier of a voice assistant. Read the request of the user and "
    "answer with exactly one label from the following list, with no other words, no "
    "punctuation and no explanation: " + ", ".join(LABELS) + ". If the request fits none "
    "of them, answer with the label that fits best; never invent a new label."
)
WORDS = [
    "play",
    "book",
    "rate",
    "find",
    "add",
    "check",
    "weather",
    "music",
    "movie",
    "table",
    "song",
    "list",
]


def under_prompt(user: str, label: str, prompt: str = PROMPT) -> dict:
    return {
        "messages": [
            {"role": "system", "content": prompt},
            {"role": "user", "content": user},
            {"role": "assistant", "content": label},
        ]
    }


def request(i: int) -> str:
    """A short request, distinct from the others (few words, like real intent data)."""
    return f"{WORDS[i % 12]} the {WORDS[(i // 12) % 12]} number {i} for me"


def near_duplicate_warnings(prepared) -> list:
    return [p for p in prepared.report.problems if p.code == "near_duplicate"]


def test_a_shared_system_prompt_makes_no_near_duplicates(write):
    rows = [under_prompt(request(i), LABELS[i % 5]) for i in range(60)]
    prepared = prepare_records([write("data.jsonl", rows)])
    assert prepared.report.near_duplicate_groups == []
    assert near_duplicate_warnings(prepared) == []
    assert (len(prepared.train), len(prepared.validation), len(prepared.test)) == (48, 6, 6)
    (shared,) = prepared.report.shared_text
    assert shared.records == 60 and shared.messages == [" ".join(PROMPT.casefold().split())]


def test_near_copies_of_a_user_message_under_the_prompt_are_still_found(write):
    rows = [under_prompt(request(i), LABELS[i % 5]) for i in range(60)]
    rows += [
        under_prompt(SENTENCE, LABELS[0]),
        under_prompt(SENTENCE.replace("lazy", "old"), LABELS[0]),
    ]
    prepared = prepare_records([write("data.jsonl", rows)])
    assert [[s.line for s in g] for g in prepared.report.near_duplicate_groups] == [[61, 62]]
    (warning,) = near_duplicate_warnings(prepared)
    assert "lines 61, 62" in warning.message or "line 61, line 62" in warning.message


def test_a_fixed_instruction_inside_the_user_message_is_left_out_too(write):
    instruction = (
        "Classify the following customer message into one of the categories listed in the "
        "handbook and answer with the category name only, nothing else: "
    )
    rows = [
        {
            "messages": [
                {"role": "user", "content": instruction + request(i)},
                {"role": "assistant", "content": LABELS[i % 5]},
            ]
        }
        for i in range(40)
    ]
    prepared = prepare_records([write("data.jsonl", rows)])
    assert prepared.report.near_duplicate_groups == []
    (shared,) = prepared.report.shared_text
    assert shared.messages == [] and shared.shingles > 10


def test_exact_duplicates_still_compare_whole_records(write):
    rows = [under_prompt(request(i), LABELS[i % 5]) for i in range(30)]
    rows += [under_prompt(request(3), LABELS[3]), under_prompt(request(4), LABELS[4], "Be brief.")]
    prepared = prepare_records([write("data.jsonl", rows)])
    assert [[s.line for s in g] for g in prepared.report.duplicate_groups] == [[4, 31]]


def template_rows(copies: int, others: int) -> list[dict]:
    """``others`` distinct requests, then ``copies`` near copies of one long message."""
    rows = [under_prompt(request(i), LABELS[i % 5]) for i in range(others)]
    return rows + [under_prompt(f"{SENTENCE} copy {k}", LABELS[0]) for k in range(copies)]


def test_a_group_larger_than_the_evaluation_share_stays_in_train_with_a_warning(write):
    path = write("data.jsonl", template_rows(copies=40, others=60))
    for seed in range(5):
        prepared = prepare_records([path], seed=seed)
        assert (len(prepared.train), len(prepared.validation), len(prepared.test)) == (80, 10, 10)
        assert {r.source.line for r in prepared.train} >= set(range(61, 101))
    (warning,) = [p for p in prepared.report.problems if p.code == "group_kept_in_train"]
    assert (warning.severity, warning.line) == ("warning", 61)
    assert "40 records" in warning.message and "lines 61-100" in warning.message
    assert "validation share (10 records)" in warning.message
    assert prepared.report.split_warnings() == []
    assert prepared.report.to_dict()["groups_kept_in_train"] == [
        {"size": 40, "lines": f"{path} lines 61-100"}
    ]


def test_a_split_off_its_fractions_is_a_warning_naming_the_cause(write):
    path = write("data.jsonl", template_rows(copies=45, others=55))
    prepared = prepare_records([path], split=(0.4, 0.3, 0.3))
    report = prepared.report
    assert (len(prepared.train), len(prepared.validation), len(prepared.test)) == (45, 30, 25)
    (message,) = report.split_warnings()
    assert "train 45 (45.0%, asked 40%)" in message and "test 25 (25.0%, asked 30%)" in message
    assert "validation" not in message.split("Cause")[0]
    assert "too large for an evaluation split stayed in train (sizes 45" in message
    assert f"{path} lines 56-100" in message
    data = report.to_dict()
    assert data["split_warnings"] == [message]
    assert data["split_requested"] == {"train": 0.4, "validation": 0.3, "test": 0.3}
    (problem,) = [p for p in data["problems"] if p["code"] == "split_off_target"]
    assert (problem["severity"], problem["message"]) == ("warning", message)
    codes = sorted(p.code for p in report.warnings)
    assert codes == ["group_kept_in_train", "near_duplicate", "split_off_target"]
    assert data["warnings"] == 3
    # Wide enough that no cell wraps, whatever the length of the temporary path.
    console = Console(record=True, width=4000)
    print_report(report, console)
    printed = console.export_text()
    assert "split_off_target" in printed and "test 25 (25.0%, asked 30%)" in printed


def test_records_dropped_after_the_split_are_named_as_the_cause(write, chat):
    report = prepare_records([write("data.jsonl", [chat(i) for i in range(60)])]).report
    assert report.split_warnings() == []
    validation = [s for s, name in report._split_of.items() if name == "validation"]
    for source in validation[:4]:
        report.add_dropped("over_length", source)
    (message,) = report.split_warnings()
    assert "validation 2 (3.6%, asked 10%)" in message
    assert "4 validation record(s) dropped after the split (4 over_length)" in message


def test_no_split_warning_when_nothing_is_carved(write, chat):
    train = write("train.jsonl", [chat(i) for i in range(30)])
    validation = write("validation.jsonl", [chat(i) for i in range(100, 190)])
    prepared = prepare_records([train], validation=[validation], split=(0.9, 0.1, 0.0))
    assert prepared.report.split_warnings() == []


def test_chat_classification_data_is_stratified_by_its_replies(write):
    rows = [under_prompt(request(i), LABELS[0]) for i in range(17)]
    rows += [under_prompt(request(i), LABELS[1]) for i in range(17, 100)]
    prepared = prepare_records([write("data.jsonl", rows)], seed=1)
    assert prepared.report.stratified_by == "assistant reply"
    for name, wanted in (("validation", 0.1), ("test", 0.1), ("train", 0.8)):
        counts = Counter(r.messages[-1].content for r in getattr(prepared, name))
        assert abs(counts[LABELS[0]] - 17 * wanted) < 1
        assert abs(counts[LABELS[1]] - 83 * wanted) < 1
