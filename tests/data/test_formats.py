"""Every record format read from every file type that can hold it, into the same records."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from tunesmith.data.formats import read_file
from tunesmith.data.records import Conversation, Message, Preference, Text

from .conftest import shared_file

U, A, S = "user", "assistant", "system"


def conv(*turns: tuple[str, str], label: str | None = None) -> tuple:
    return tuple(Message(r, c) for r, c in turns), label


FLAT = {
    "alpaca": (
        [
            {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
            {"instruction": "Translate.", "input": "chat", "output": "cat"},
        ],
        [conv((U, "Add 2 and 3."), (A, "5")), conv((U, "Translate.\n\nchat"), (A, "cat"))],
    ),
    "prompt_completion": (
        [{"prompt": "Capital of France?", "completion": "Paris"}],
        [conv((U, "Capital of France?"), (A, "Paris"))],
    ),
    "preference": (
        [{"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away."}],
        [((Message(U, "Say hi"),), Message(A, "Hi!"), Message(A, "Go away."))],
    ),
    "classification": (
        [{"text": "win a prize now", "label": "spam"}, {"text": "see you at 5", "label": "ham"}],
        [
            conv((U, "win a prize now"), (A, "spam"), label="spam"),
            conv((U, "see you at 5"), (A, "ham"), label="ham"),
        ],
    ),
    "text": (
        [{"text": "Once upon a time."}, {"text": "The end."}],
        ["Once upon a time.", "The end."],
    ),
}

NESTED = {
    "chat": (
        [
            {
                "messages": [
                    {"role": S, "content": "Be brief."},
                    {"role": U, "content": "Hi"},
                    {"role": A, "content": "Hello", "weight": 0},
                    {"role": U, "content": "Bye"},
                    {"role": A, "content": "Bye!"},
                ]
            }
        ],
        [
            (
                (
                    Message(S, "Be brief."),
                    Message(U, "Hi"),
                    Message(A, "Hello", 0),
                    Message(U, "Bye"),
                    Message(A, "Bye!"),
                ),
                None,
            )
        ],
    ),
    "sharegpt": (
        [
            {
                "conversations": [
                    {"from": "system", "value": "Be kind."},
                    {"from": "human", "value": "Hi"},
                    {"from": "gpt", "value": "Hello"},
                ]
            }
        ],
        [conv((S, "Be kind."), (U, "Hi"), (A, "Hello"))],
    ),
    "openai_preference": (
        [
            {
                "input": {"messages": [{"role": U, "content": "2+2?"}]},
                "preferred_output": [{"role": A, "content": "4"}],
                "non_preferred_output": [{"role": A, "content": "5"}],
            }
        ],
        [((Message(U, "2+2?"),), Message(A, "4"), Message(A, "5"))],
    ),
    "preference_messages": (
        [
            {
                "chosen": [{"role": U, "content": "Tea?"}, {"role": A, "content": "Yes"}],
                "rejected": [{"role": U, "content": "Tea?"}, {"role": A, "content": "No"}],
            }
        ],
        [((Message(U, "Tea?"),), Message(A, "Yes"), Message(A, "No"))],
    ),
    "prompt_completion_messages": (
        [{"prompt": [{"role": U, "content": "Hi"}], "completion": [{"role": A, "content": "Yo"}]}],
        [conv((U, "Hi"), (A, "Yo"))],
    ),
}

ANY_TYPE = ["jsonl", "json", "jsonl.gz", "json.gz", "parquet"]
FLAT_TYPES = [*ANY_TYPE, "csv", "tsv", "csv.gz"]


def expected_records(kind: str, expected: list, path: Path, lines: list[int]) -> list:
    built = []
    for item, line in zip(expected, lines, strict=True):
        source = (str(path), line)
        if kind.startswith("text"):
            built.append(Text(item, _source(*source)))
        elif "preference" in kind:
            built.append(Preference(*item, _source(*source)))
        else:
            built.append(Conversation(item[0], _source(*source), label=item[1]))
    return built


def _source(file: str, line: int):
    from tunesmith.data.records import Source

    return Source(file, line)


def row_lines(path: Path, file_type: str, n: int) -> list[int]:
    """Where each row starts: the object's line in a JSON list, after the header for CSV/TSV,
    the line for JSONL and the row for Parquet."""
    if file_type.startswith("json") and not file_type.startswith("jsonl"):
        data = path.read_bytes()
        text = (gzip.decompress(data) if path.name.endswith(".gz") else data).decode()
        return [i + 1 for i, line in enumerate(text.splitlines()) if line == "  {"][:n]
    if file_type.startswith(("csv", "tsv")):
        return [i + 2 for i in range(n)]
    return [i + 1 for i in range(n)]


CASES = [(k, t) for k in FLAT for t in FLAT_TYPES] + [(k, t) for k in NESTED for t in ANY_TYPE]


@pytest.mark.parametrize(("kind", "file_type"), CASES, ids=[f"{k}-{t}" for k, t in CASES])
def test_every_format_from_every_file_type(write, kind, file_type):
    rows, expected = {**FLAT, **NESTED}[kind]
    path = write(f"data.{file_type}", rows)
    result = read_file(path)
    assert [p for p in result.problems if p.severity == "error"] == []
    assert result.format == kind.removesuffix("_messages")
    lines = row_lines(path, file_type, len(rows))
    assert result.records == expected_records(kind, expected, path, lines)


def test_json_list_rows_carry_the_line_their_object_starts_on(write):
    path = write("data.json", FLAT["classification"][0])
    assert [r.source.line for r in read_file(path).records] == [2, 6]


def test_txt_file_is_one_document_per_paragraph_block(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("First para\nstill first.\n\n\nSecond para.\n  \nThird.\n")
    result = read_file(path)
    assert result.records == [
        Text("First para\nstill first.", _source(str(path), 1)),
        Text("Second para.", _source(str(path), 5)),
        Text("Third.", _source(str(path), 7)),
    ]


def test_explicit_format_reads_rows_that_would_be_ambiguous(write):
    rows = [
        {"text": "ignored", "messages": [{"role": U, "content": "a"}, {"role": A, "content": "b"}]}
    ]
    path = write("data.jsonl", rows)
    assert [p.code for p in read_file(path).problems] == ["ambiguous_format"]
    result = read_file(path, format="chat")
    assert len(result.records) == 1
    assert [(p.code, p.severity, p.field) for p in result.problems] == [
        ("unknown_key", "warning", "text")
    ]


def test_a_file_fitting_two_formats_is_rejected_naming_both(write):
    row = {"text": "t", "messages": [{"role": U, "content": "a"}, {"role": A, "content": "b"}]}
    result = read_file(write("data.jsonl", [row, row]))
    assert result.records == []
    assert [(p.code, p.line) for p in result.problems] == [
        ("ambiguous_format", 1),
        ("ambiguous_format", 2),
    ]
    assert "chat, text" in result.problems[0].message


def test_rows_of_another_format_in_the_same_file_are_errors(write):
    rows = [{"text": "plain"}, {"instruction": "i", "output": "o"}]
    result = read_file(write("data.jsonl", rows))
    assert [(p.code, p.line) for p in result.problems] == [("mixed_formats", 2)]


def test_column_mapping_renames_columns_and_checks_they_exist(tmp_path, write):
    path = write("data.csv", [{"sentence": "good film", "polarity": "pos"}])
    result = read_file(path, columns={"text": "sentence", "label": "polarity"})
    assert result.format == "classification"
    assert result.records[0].label == "pos"
    missing = read_file(path, columns={"text": "review"})
    assert [(p.code, p.line) for p in missing.problems] == [("missing_column", 1)]
    assert "'sentence', 'polarity'" in missing.problems[0].message


def test_tsv_keeps_quotes_as_text_and_csv_unquotes(tmp_path):
    tsv = tmp_path / "d.tsv"
    tsv.write_text('label\ttext\nham\t"Hi" she said, "bye"\n')
    assert read_file(tsv).records[0].messages[0].content == '"Hi" she said, "bye"'
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('label,text\nham,"Hi, there\nsecond line"\nspam,x\n')
    records = read_file(csv_path).records
    assert records[0].messages[0].content == "Hi, there\nsecond line"
    assert [r.source.line for r in records] == [2, 4]


def test_csv_row_with_wrong_field_count_is_reported(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,b\nc,d,e\n")
    result = read_file(path)
    assert [(p.code, p.line) for p in result.problems] == [("csv_field_count", 3)]


def test_preference_replies_must_follow_the_same_conversation(write):
    row = {
        "chosen": [{"role": U, "content": "A?"}, {"role": A, "content": "x"}],
        "rejected": [{"role": U, "content": "B?"}, {"role": A, "content": "y"}],
    }
    result = read_file(write("data.jsonl", [row]))
    assert [p.code for p in result.problems] == ["preference_prompt_mismatch"]


def test_unknown_file_type_and_missing_file_are_problems_not_crashes(tmp_path):
    odd = tmp_path / "data.bin"
    odd.write_text("hello world\n")
    assert [p.code for p in read_file(odd).problems] == ["unknown_file_type"]
    assert [p.code for p in read_file(tmp_path / "nope.jsonl").problems] == ["file_not_found"]


def test_jsonl_content_in_a_json_file_is_read_with_a_warning(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"text": "b"}) + "\n")
    result = read_file(path)
    assert len(result.records) == 2
    assert [(p.code, p.severity) for p in result.problems] == [("jsonl_in_json_file", "warning")]


def test_real_sms_spam_tsv_with_a_column_mapping(fixtures):
    path = fixtures / "sms_spam" / "SMSSpamCollection"
    result = read_file(path, columns={"text": "SMS", "label": "Label"})
    assert result.file_type == "tsv"
    assert result.problems == []
    assert Counter(r.label for r in result.records) == {"ham": 167, "spam": 33}
    first = result.records[0]
    assert first.source.line == 2
    assert first.messages[1] == Message(A, "ham")


def test_the_whole_sms_spam_collection_reads_without_a_problem():
    result = read_file(
        shared_file("sms_spam/SMSSpamCollection"), columns={"text": "SMS", "label": "Label"}
    )
    assert result.problems == []
    assert Counter(r.label for r in result.records) == {"ham": 4827, "spam": 747}


def test_real_orca_dpo_pairs_in_openai_preference_format(fixtures):
    path = fixtures / "orca_dpo_pairs_sample" / "validation.jsonl"
    result = read_file(path)
    assert result.format == "openai_preference"
    assert result.problems == []
    assert len(result.records) == 20
    pair = result.records[0]
    assert [m.role for m in pair.prompt] == [S, U]
    assert pair.chosen.content.startswith("Step 1: Identify the names")
    assert pair.chosen != pair.rejected


def test_all_orca_dpo_pairs_read_without_a_problem():
    result = read_file(shared_file("orca_dpo_pairs_sample/validation.jsonl"))
    assert result.problems == [] and len(result.records) == 284


def test_a_corrupt_gzip_file_is_a_problem_not_a_crash(tmp_path):
    path = tmp_path / "data.jsonl.gz"
    path.write_text('{"text": "not compressed"}\n')
    assert [p.code for p in read_file(path).problems] == ["unreadable_file"]
