"""The report accounts for every row: rows_in == rows_kept + Σ dropped, always."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from tunesmith.data.load import prepare_records
from tunesmith.data.records import Source
from tunesmith.data.report import DataReport, FileSummary, RowCountMismatch, print_report
from tunesmith.data.validate import DataError

LINE_KINDS = st.sampled_from(["good", "duplicate", "bad_json", "empty_reply", "blank"])


def render(kind: str, i: int) -> str:
    reply = {"role": "assistant", "content": f"answer {i} " + "z" * (i % 7)}
    if kind == "duplicate":
        return json.dumps(
            {"messages": [{"role": "user", "content": "same"}, {**reply, "content": "a"}]}
        )
    if kind == "bad_json":
        return '{"messages": ['
    if kind == "empty_reply":
        reply["content"] = " "
    if kind == "blank":
        return ""
    words = " ".join(f"v{i}k{k}" for k in range(6))
    return json.dumps({"messages": [{"role": "user", "content": f"q {words}"}, reply]})


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kinds=st.lists(LINE_KINDS, min_size=1, max_size=40), dedup=st.booleans(), seed=st.integers(0, 9)
)
def test_every_row_is_kept_or_dropped_exactly_once(tmp_path_factory, kinds, dedup, seed):
    path = tmp_path_factory.mktemp("prop") / "data.jsonl"
    path.write_text("\n".join(render(k, i) for i, k in enumerate(kinds)) + "\n")
    try:
        report = prepare_records([path], dedup=dedup, seed=seed, min_examples=1).report
    except DataError as error:
        report = error.report
    report.check_row_invariant()
    assert report.rows_in == sum(k != "blank" for k in kinds)
    assert len(report.dropped.get("invalid", [])) == sum(
        k in ("bad_json", "empty_reply") for k in kinds
    )
    assert report.to_dict()["rows_kept"] == report.rows_kept


def small_report(write, chat) -> DataReport:
    return prepare_records([write("data.jsonl", [chat(i) for i in range(60)])]).report


def test_add_dropped_moves_a_kept_record_out_of_its_split(write, chat):
    report = small_report(write, chat)
    victim = next(iter(report._split_of))
    split = report._split_of[victim]
    before = report.split_sizes[split]
    report.add_dropped("over_length", victim)
    assert report.split_sizes[split] == before - 1
    assert report.dropped["over_length"] == [victim]
    report.check_row_invariant()
    with pytest.raises(RowCountMismatch):
        report.add_dropped("over_length", victim)


def test_a_broken_count_is_detected():
    report = DataReport(files=[FileSummary("f", "train", "jsonl", "chat", 3, 3)])
    report.assign_splits({"train": [Source("f", 1), Source("f", 2)]})
    with pytest.raises(RowCountMismatch, match="rows_in 3 != rows_kept 2"):
        report.check_row_invariant()


def test_token_stats_and_files_written_next_to_each_other(tmp_path, write, chat):
    report = small_report(write, chat)
    report.set_token_stats(list(range(1, 101)), [n // 2 for n in range(1, 101)])
    stats = report.token_stats
    assert stats["total_tokens"]["min"] == 1 and stats["total_tokens"]["max"] == 100
    assert stats["total_tokens"]["median"] == pytest.approx(50.5)
    assert stats["total_tokens"]["p95"] == pytest.approx(95.05)
    assert stats["trained_share"] == pytest.approx(sum(n // 2 for n in range(1, 101)) / 5050)
    path = report.write(tmp_path / "run")
    assert path.name == "data_report.json"
    assert (tmp_path / "run" / "token_lengths.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads(path.read_text())["token_stats"]["examples"] == 100


def test_report_json_schema(write, chat):
    data = json.loads(small_report(write, chat).to_json())
    assert sorted(data) == [
        "carved_from_train",
        "dropped",
        "duplicates",
        "errors",
        "files",
        "groups_kept_in_train",
        "leakage",
        "problems",
        "rows_dropped",
        "rows_in",
        "rows_kept",
        "split_requested",
        "split_warnings",
        "splits",
        "stratified_by",
        "token_stats",
        "warnings",
    ]
    assert data["splits"] == {"train": 48, "validation": 6, "test": 6}
    assert sorted(data["files"][0]) == ["file", "file_type", "format", "records", "role", "rows_in"]


def test_rich_printer_lists_problems_with_location_and_fix(write_lines, chat):
    lines = [json.dumps(chat(i)) for i in range(12)] + ['{"messages": [']
    path = write_lines("data.jsonl", lines)
    with pytest.raises(DataError) as caught:
        prepare_records([path])
    console = Console(record=True, width=400)
    print_report(caught.value.report, console)
    text = console.export_text()
    assert f"{Path(path)}:13:15" in text
    assert "invalid_json" in text
    assert "Fix the JSON syntax" in text
