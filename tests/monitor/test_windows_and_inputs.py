"""Windows by count and time, --since, and the request log read as live inputs."""

from __future__ import annotations

import json
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tunesmith.data.formats import read_file
from tunesmith.data.records import Record
from tunesmith.monitor.errors import MonitorError
from tunesmith.monitor.inputs import parse_since, read_live_inputs
from tunesmith.monitor.windows import count_windows, make_windows, parse_window
from tunesmith.serve.requestlog import RequestLog


def test_count_windows_fold_a_short_tail_into_the_last_window() -> None:
    windows = count_windows(110, 50, "f")
    assert [len(w.positions) for w in windows] == [50, 60]
    assert [len(w.positions) for w in count_windows(130, 50, "f")] == [50, 50, 30]


def test_parse_window_takes_counts_and_durations() -> None:
    assert parse_window("500") == 500
    assert parse_window("90m") == timedelta(minutes=90)
    for bad in ("5", "1w", "abc", "0h"):
        with pytest.raises(MonitorError, match="--window"):
            parse_window(bad)


def test_the_server_request_log_is_read_with_its_timestamps(tmp_path: Path) -> None:
    log = RequestLog(tmp_path)
    for i in range(30):
        log.write(
            model="m", messages=[{"role": "system", "content": "be brief"},
                                 {"role": "user", "content": f"question {i}"}],
            answer=f"answer {i}", latency_s=0.1, prompt_tokens=3, completion_tokens=2,
            finish_reason="stop",
        )  # fmt: skip
    live = read_live_inputs(log.path)
    assert live.prompts[3] == "question 3"  # the system prompt is not part of the input
    assert live.answers[3] == "answer 3"
    assert all(stamp is not None and stamp.tzinfo is not None for stamp in live.timestamps)
    with pytest.raises(MonitorError, match="no input was logged at or after --since"):
        read_live_inputs(log.path, since=datetime.now(UTC) + timedelta(hours=1))


def test_bare_prompts_are_inputs_to_monitor_but_not_examples_to_train_on(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(5)]
    rows.append({"messages": [{"role": "assistant", "content": "no question before me"}]})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(MonitorError, match="assistant") as refused:
        read_live_inputs(path)  # a malformed chat is still refused, naming its line
    assert ":6" in str(refused.value)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows[:5]))
    live = read_live_inputs(path)
    assert live.prompts == [f"q{i}" for i in range(5)]
    assert live.answers == [None] * 5
    training = read_file(path)
    assert training.invalid and training.problems[0].code == "example_missing_assistant_message"


def test_since_keeps_later_inputs_and_time_windows_group_them(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    lines = []
    for i in range(60):
        stamp = (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i)).isoformat()
        row = {
            "messages": [
                {"role": "user", "content": f"q{i}"},
                {"role": "assistant", "content": "a"},
            ],
            "timestamp": stamp,
        }
        lines.append(json.dumps(row) + "\n")
    path.write_text("".join(lines))
    live = read_live_inputs(path, since=parse_since("2026-01-01T00:30:00"))
    assert len(live) == 30 and live.prompts[0] == "q30"
    windows = make_windows(read_live_inputs(path), timedelta(minutes=25), largest=1000)
    assert [len(w.positions) for w in windows] == [25, 25, 10]
    assert [w.tested for w in windows] == [True, True, False]


def test_records_can_be_streamed_instead_of_kept(tmp_path: Path) -> None:
    """The live reader keeps only each record's text: read_file must not hold them all."""
    path = tmp_path / "log.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(50)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + "not json\n")
    kept = read_file(path)
    seen: list[Record] = []
    streamed = read_file(path, on_record=seen.append)
    assert streamed.records == [] and streamed.streamed == 50
    assert seen == kept.records and streamed.rows_in == kept.rows_in == 51
    assert [p.location for p in streamed.problems] == [p.location for p in kept.problems]


def test_reading_a_request_log_never_holds_all_its_parsed_records(tmp_path: Path) -> None:
    log = RequestLog(tmp_path)
    for i in range(3000):
        log.write(
            model="m", messages=[{"role": "user", "content": f"play song {i} on my playlist"}],
            answer="PlayMusic", latency_s=0.1, prompt_tokens=6, completion_tokens=2,
            finish_reason="stop",
        )  # fmt: skip

    def peak(read) -> int:
        tracemalloc.start()
        try:
            read()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    whole = peak(lambda: read_file(log.path))
    streamed = peak(lambda: read_live_inputs(log.path))
    assert streamed < 0.8 * whole, (streamed, whole)
