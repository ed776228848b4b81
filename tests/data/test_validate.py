"""One fixture per problem code: the exact code, line (and column/offset) must be reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.data.formats import read_file
from tunesmith.data.load import prepare_records
from tunesmith.data.validate import DataError, Problem

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def problems_of(path: Path, **kwargs) -> list[Problem]:
    return read_file(path, **kwargs).problems


def codes(problems: list[Problem]) -> list[tuple[str, int | None]]:
    return [(p.code, p.line) for p in problems]


def test_malformed_line_7_is_reported_with_line_and_column(write_lines):
    lines = [json.dumps(GOOD)] * 6 + ['{"messages": ['] + [json.dumps(GOOD)] * 3 + ["{bad"]
    path = write_lines("chat.jsonl", lines)
    result = read_file(path)
    bad = [p for p in result.problems if p.code == "invalid_json"]
    assert [(p.line, p.column) for p in bad] == [(7, 15), (11, 2)]
    assert bad[0].location == f"{path}:7:15"
    assert len(result.records) == 9
    assert [s.line for s in result.invalid] == [7, 11]


def test_invalid_json_makes_the_run_fail_with_every_bad_line(write_lines, chat):
    lines = [json.dumps(chat(i)) for i in range(20)]
    lines[6] = '{"messages": ['
    lines[12] = "not json"
    path = write_lines("chat.jsonl", lines)
    with pytest.raises(DataError) as caught:
        prepare_records([path])
    assert [(p.code, p.line) for p in caught.value.errors] == [
        ("invalid_json", 7),
        ("invalid_json", 13),
    ]
    assert caught.value.report.dropped["invalid"][0].line == 7


def test_latin1_bytes_are_an_encoding_error_with_the_byte_offset(tmp_path):
    path = tmp_path / "latin1.jsonl"
    first = json.dumps(GOOD).encode() + b"\n"
    second = '{"text": "caf\xe9"}'.encode("latin-1") + b"\n"
    path.write_bytes(first + second)
    (problem,) = problems_of(path, format="chat")
    assert (problem.code, problem.line, problem.severity) == ("encoding", 2, "error")
    assert f"byte offset {len(first) + 13}" in problem.message
    assert "0xe9" in problem.message


def test_latin1_csv_names_the_line_and_offset(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"text,label\nfine,a\ncaf\xe9,b\n")
    (problem,) = problems_of(path)
    assert (problem.code, problem.line) == ("encoding", 3)
    assert "byte offset 21" in problem.message


def test_bom_and_crlf_are_warnings_and_rows_still_read(tmp_path):
    path = tmp_path / "win.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(GOOD) + "\r\n").encode() * 2)
    result = read_file(path)
    assert len(result.records) == 2
    assert sorted((p.code, p.severity) for p in result.problems) == [
        ("crlf_line_endings", "warning"),
        ("utf8_bom", "warning"),
    ]


BAD_ROWS = [
    ({"messages": "hi"}, "missing_messages_list", "messages"),
    ({"messages": []}, "missing_messages_list", "messages"),
    ({"messages": [{"role": "user"}]}, "message_missing_key", "messages[0].content"),
    (
        {"messages": [{"role": "user", "content": "a", "tool_calls": []}]},
        "message_unrecognized_key",
        "messages[0].tool_calls",
    ),
    (
        {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "b"}]},
        "missing_content",
        "messages[0].content",
    ),
    (
        {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "b"}]},
        "data_type",
        "messages[0].content",
    ),
    ({"messages": ["hello"]}, "data_type", "messages[0]"),
    (
        {"messages": [{"role": "bot", "content": "a"}, {"role": "assistant", "content": "b"}]},
        "unrecognized_role",
        "messages[0].role",
    ),
    (
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}]},
        "empty_assistant_content",
        "messages[1].content",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b", "weight": 2},
            ]
        },
        "invalid_weight",
        "messages[1].weight",
    ),
    ({"prompt": "q", "chosen": "same", "rejected": "same "}, "identical_preference_pair", "chosen"),
    ({"instruction": "do it"}, "missing_field", "output"),
    ({"prompt": "q"}, "unknown_format", None),
    ({"text": "a", "messages": GOOD["messages"]}, "ambiguous_format", None),
]


@pytest.mark.parametrize(("row", "code", "field"), BAD_ROWS, ids=[c for _, c, _ in BAD_ROWS])
def test_each_error_code_is_reported_on_its_line(write, row, code, field):
    first = {"prompt": "q0", "chosen": "a", "rejected": "b"} if "chosen" in row else GOOD
    if "instruction" in row:
        first = {"instruction": "q", "output": "a"}
    path = write("data.jsonl", [first, row])
    problems = [p for p in problems_of(path) if p.severity == "error"]
    assert (problems[0].code, problems[0].line, problems[0].field) == (code, 2, field)
    assert problems[0].fix


def test_a_row_that_is_not_an_object_is_a_data_type_error(write_lines):
    path = write_lines("data.jsonl", [json.dumps(GOOD), "[1, 2]"])
    assert codes(problems_of(path)) == [("data_type", 2)]


def test_all_problems_of_a_row_are_collected_not_only_the_first(write):
    row = {
        "messages": [
            {"role": "user", "content": "a", "extra": 1},
            {"role": "robot", "content": "b"},
            {"role": "assistant"},
        ]
    }
    path = write("data.jsonl", [row])
    assert sorted(p.code for p in problems_of(path)) == [
        "message_missing_key",
        "message_unrecognized_key",
        "unrecognized_role",
    ]


def msgs(*roles: str) -> dict:
    return {"messages": [{"role": r, "content": f"{r} text"} for r in roles]}


ROLE_ORDER = [
    (
        msgs("user", "system", "assistant"),
        "system_not_first",
        "System message at index 1 in messages, but system messages must come first.",
    ),
    (
        msgs("user", "user", "assistant"),
        "consecutive_user_messages",
        "Two consecutive user messages at index 1 and 0 in messages.",
    ),
    (
        msgs("system", "assistant", "user", "assistant"),
        "assistant_before_user",
        "Assistant message before expected user message at index 1 in messages.",
    ),
    (
        msgs("user", "assistant", "user"),
        "last_message_not_assistant",
        "The conversation ends with a user message at index 2, not an assistant message.",
    ),
    (
        msgs("system", "user"),
        "example_missing_assistant_message",
        "The example has no assistant message, so there is nothing to train on.",
    ),
]


@pytest.mark.parametrize(("row", "code", "message"), ROLE_ORDER, ids=[c for _, c, _ in ROLE_ORDER])
def test_role_order_errors_name_the_message_index(write, row, code, message):
    path = write("data.jsonl", [GOOD, GOOD, row])
    (problem,) = problems_of(path)
    assert (problem.code, problem.line, problem.message) == (code, 3, message)


def test_empty_assistant_reply_is_allowed_with_weight_zero(write):
    row = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": " ", "weight": 0},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "c"},
        ]
    }
    result = read_file(write("data.jsonl", [row]))
    assert result.problems == []
    assert [m.weight for m in result.records[0].messages] == [1, 0, 1, 1]


def test_unknown_top_level_keys_warn_once_per_key(write):
    rows = [{**GOOD, "id": i} for i in range(7)]
    result = read_file(write("data.jsonl", rows))
    (problem,) = result.problems
    assert (problem.code, problem.severity, problem.field, problem.line) == (
        "unknown_key",
        "warning",
        "id",
        1,
    )
    assert "7 row(s)" in problem.message
    assert len(result.records) == 7


def test_nine_examples_is_an_error_and_twenty_a_warning(write, chat):
    with pytest.raises(DataError) as caught:
        prepare_records([write("nine.jsonl", [chat(i) for i in range(9)])])
    assert [p.code for p in caught.value.errors] == ["too_few_examples"]
    prepared = prepare_records([write("twenty.jsonl", [chat(i) for i in range(20)])])
    assert [(p.code, p.severity) for p in prepared.report.problems] == [
        ("too_few_examples", "warning")
    ]


def test_data_error_lists_at_most_50_problems_then_the_rest_count(write_lines):
    path = write_lines("bad.jsonl", ["{"] * 60)
    with pytest.raises(DataError) as caught:
        prepare_records([path])
    text = str(caught.value)
    lines = text.splitlines()
    assert len(lines) == 1 + 50 + 1
    assert lines[-1] == "… and 11 more"
    assert lines[1].startswith(f"{path}:1:2: error invalid_json")
