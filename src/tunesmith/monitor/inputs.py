"""Live inputs: the server's request log, or any file in a format tunesmith reads.

The request log (`tunesmith serve --log-requests DIR`) is chat JSONL with extra keys
(``answer``, ``timestamp``, …), so the ordinary data readers read it; the extra keys
the monitor needs (the timestamp) are taken from the same lines. Only the prompt, the
answer and the time of each input are kept, never the parsed records (they are
streamed, one at a time), so a large log costs little more than its text.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tunesmith.data.formats import read_file
from tunesmith.data.records import Record
from tunesmith.data.validate import Problem
from tunesmith.monitor.errors import MonitorError
from tunesmith.monitor.texts import answer_text, prompt_text


@dataclass
class LiveInputs:
    """Parallel lists, one entry per input, in file order."""

    file: str
    prompts: list[str]
    answers: list[str | None]
    lines: list[int]
    timestamps: list[datetime | None]

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, keep: list[int]) -> LiveInputs:
        return LiveInputs(
            self.file,
            [self.prompts[i] for i in keep],
            [self.answers[i] for i in keep],
            [self.lines[i] for i in keep],
            [self.timestamps[i] for i in keep],
        )


def read_live_inputs(path: Path, *, since: datetime | None = None) -> LiveInputs:
    """Read the inputs to monitor; bad files raise `MonitorError` naming file:line and the fix.

    Records are streamed: each is reduced to its prompt, answer and line as it is
    read, so the parsed records of a 100k-line log never exist at once. ``since``
    keeps the inputs logged at or after that time (request logs only).
    """
    inputs = LiveInputs(str(path), [], [], [], [])

    def keep(record: Record) -> None:
        inputs.prompts.append(prompt_text(record))
        inputs.answers.append(answer_text(record))
        inputs.lines.append(record.source.line)

    read = read_file(path, on_record=keep, prompts=True)
    errors = [p for p in read.problems if p.severity == "error"]
    if errors:
        raise MonitorError(_first_error_line(errors))
    if not inputs.prompts:
        raise MonitorError(
            f"{path}: no inputs to monitor (the file is empty). Pass the server's request log "
            "(tunesmith serve --log-requests DIR writes DIR/requests.jsonl) or a data file."
        )
    inputs.timestamps = _timestamps(path, read.file_type, inputs.lines)
    if since is None:
        return inputs
    return _since(inputs, since)


def _first_error_line(errors: list[Problem]) -> str:
    first = errors[0]
    more = f" ({len(errors) - 1} more problem(s) like it)" if len(errors) > 1 else ""
    return f"{first.location}: {first.message} Fix: {first.fix}{more}"


def _timestamps(path: Path, file_type: str | None, lines: list[int]) -> list[datetime | None]:
    """The ``timestamp`` of each JSONL line the records came from (None where absent)."""
    if file_type != "jsonl":
        return [None] * len(lines)
    wanted = set(lines)
    found: dict[int, datetime | None] = {}
    for number, raw in _numbered_lines(path):
        if number in wanted:
            found[number] = _parse_stamp(raw, path, number)
    return [found.get(line) for line in lines]


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", errors="replace") as stream:
        yield from enumerate(stream, start=1)


def _parse_stamp(raw: str, path: Path, number: int) -> datetime | None:
    if '"timestamp"' not in raw:
        return None
    value = json.loads(raw).get("timestamp")
    if value is None:
        return None
    try:
        return as_utc(datetime.fromisoformat(str(value)))
    except ValueError:
        raise MonitorError(
            f"{path}:{number}: timestamp {value!r} is not an ISO 8601 time. Fix: write it as "
            "the request log does, e.g. 2026-01-31T12:00:00.000+00:00."
        ) from None


def as_utc(moment: datetime) -> datetime:
    """Times without a zone are taken as UTC (what the request log writes)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def parse_since(value: str) -> datetime:
    """``--since``: an ISO 8601 time (``2026-01-31`` or ``2026-01-31T12:00``), UTC if no zone."""
    try:
        return as_utc(datetime.fromisoformat(value))
    except ValueError:
        raise MonitorError(
            f"--since {value!r} is not an ISO 8601 time. Fix: pass e.g. --since 2026-01-31 or "
            "--since 2026-01-31T12:00:00+00:00."
        ) from None


def _since(inputs: LiveInputs, since: datetime) -> LiveInputs:
    missing = [
        line for line, stamp in zip(inputs.lines, inputs.timestamps, strict=True) if stamp is None
    ]
    if missing:
        raise MonitorError(
            f"{inputs.file}:{missing[0]}: --since needs a timestamp on every input and this "
            "line has none. Fix: pass the server's request log, or drop --since."
        )
    keep = [i for i, stamp in enumerate(inputs.timestamps) if stamp is not None and stamp >= since]
    if not keep:
        raise MonitorError(
            f"{inputs.file}: no input was logged at or after --since {since.isoformat()}. "
            "Fix: pass an earlier --since."
        )
    return inputs.select(keep)
