"""Real intent data in the most common chat shape: a system prompt naming the labels.

Snips requests (CC0; tests/fixtures/README.md) become conversations of a system
prompt listing the intents, the request, and the intent as the reply. Carved
80/10/10, each intent must be within one record of its share in every split, and
the near-duplicates found must be the very ones found without the prompt: the
prompt, shared by every record, causes none. The fixture slice always runs; the
full 2,100 training requests run where ``shared/data`` is present.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tunesmith.data.load import prepare_records

from .conftest import SHARED_DATA

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "snips_requests.jsonl"
SNIPS = SHARED_DATA / "snips_nlu"
FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def fixture_requests() -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
    return [(row["text"], row["intent"]) for row in rows]


def shared_requests() -> list[tuple[str, str]]:
    files = sorted(SNIPS.glob("train_*.json"))
    if not files:
        pytest.skip(f"{SNIPS} has no train_*.json: the full snips set is in shared/data only")
    requests = []
    for path in files:
        ((intent, queries),) = json.loads(path.read_text(encoding="utf-8")).items()
        for query in queries:
            requests.append(("".join(chunk["text"] for chunk in query["data"]).strip(), intent))
    return requests


def write_chats(path: Path, requests: list[tuple[str, str]], prompt: str | None) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for text, intent in requests:
            messages = [{"role": "system", "content": prompt}] if prompt else []
            messages += [
                {"role": "user", "content": text},
                {"role": "assistant", "content": intent},
            ]
            out.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    return path


def intents_prompt(intents: list[str]) -> str:
    return (
        "You are the intent classifier of a voice assistant. Read the user's request and "
        "reply with exactly one intent from this list, and nothing else: "
        + ", ".join(intents)
        + ". Never explain the answer, never add punctuation and never invent an intent."
    )


def check_carved_split(tmp_path: Path, requests: list[tuple[str, str]]) -> None:
    intents = sorted({intent for _, intent in requests})
    prompted = write_chats(tmp_path / "prompted.jsonl", requests, intents_prompt(intents))
    bare = write_chats(tmp_path / "bare.jsonl", requests, None)
    with_prompt = prepare_records([prompted], split=(0.8, 0.1, 0.1))
    without_prompt = prepare_records([bare], split=(0.8, 0.1, 0.1))

    report = with_prompt.report
    assert report.stratified_by == "assistant reply"
    totals = Counter(intent for _, intent in requests)
    for name, fraction in FRACTIONS.items():
        counts = Counter(r.messages[-1].content for r in getattr(with_prompt, name))
        for intent, total in totals.items():
            assert abs(counts[intent] - total * fraction) <= 1, (name, intent, counts[intent])
    assert report.split_warnings() == []

    def lines(prepared) -> list[list[int]]:
        return [[s.line for s in group] for group in prepared.report.near_duplicate_groups]

    assert lines(with_prompt) == lines(without_prompt)
    near = [p for p in report.problems if p.code == "near_duplicate"]
    assert len(near) == len(lines(without_prompt)) < len(requests) // 50
    assert [p for p in report.problems if p.code == "group_kept_in_train"] == []


def test_snips_fixture_under_an_intent_prompt_splits_80_10_10_per_intent(tmp_path):
    requests = fixture_requests()
    assert len(requests) == 329 and len({i for _, i in requests}) == 7
    check_carved_split(tmp_path, requests)


def test_full_snips_train_under_an_intent_prompt_splits_80_10_10_per_intent(tmp_path):
    requests = shared_requests()
    assert len(requests) == 2100
    check_carved_split(tmp_path, requests)
