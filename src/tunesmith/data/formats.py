"""Readers for every input format, producing canonical records with their `Source`.

Two independent choices describe an input file:

* the **file type** (how rows are stored): JSONL, JSON (a list of objects),
  CSV, TSV, Parquet or plain text, each optionally gzipped (``.jsonl.gz``).
  It comes from the file name; a name without a known suffix is sniffed
  (``{`` → JSONL, ``[`` → JSON, a tab in the first line → TSV).
* the **record format** (what a row means), detected from the row's keys or
  named explicitly:

  ================== ========================================================
  ``chat``           ``{"messages": [{"role", "content"[, "weight"]}, ...]}``
  ``sharegpt``       ``{"conversations": [{"from": "human"|"gpt"|"system", "value"}]}``
  ``alpaca``         ``{"instruction", "input"?, "output", "system"?}``
  ``prompt_completion`` ``{"prompt", "completion"}`` (strings or message lists)
  ``preference``     ``{"prompt"?, "chosen", "rejected"}`` (strings or message lists)
  ``openai_preference`` ``{"input": {"messages"}, "preferred_output": [msg],
                     "non_preferred_output": [msg]}`` (OpenAI DPO)
  ``classification`` ``{"text", "label"}`` → user=text, assistant=label
  ``text``           ``{"text"}`` for continued pretraining
  ================== ========================================================

A row whose keys fit two formats (say ``text`` and ``messages``) is an error,
never a guess. ``columns`` renames the file's keys onto ours first, e.g.
``{"text": "SMS", "label": "Label"}`` for a TSV with header ``Label<TAB>SMS``.

Plain ``.txt`` files hold one document per paragraph block (lines separated by
one or more blank lines), so a corpus keeps document boundaries that packing
can respect; the block's first line is its `Source` line.

Line numbers: JSONL/CSV/TSV/TXT give the file line where the row starts, JSON
lists give the line where the object starts, Parquet gives the 1-based row.
TSV is read without quote processing (a literal ``"`` stays text), as TSV
exports such as the UCI SMS corpus expect; CSV uses standard quoting.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow
import pyarrow.parquet as pq

from tunesmith.data.records import Conversation, Message, Preference, Record, Source, Text
from tunesmith.data.validate import (
    Problem,
    RowChecker,
    bom_warning,
    check_message,
    check_preference_pair,
    check_role_order,
    check_string,
    crlf_warning,
    decode_utf8,
    encoding_problem,
    invalid_json,
    type_name,
)

FORMATS: tuple[str, ...] = (
    "chat",
    "sharegpt",
    "alpaca",
    "prompt_completion",
    "preference",
    "openai_preference",
    "classification",
    "text",
)

FORMAT_KEYS: dict[str, tuple[str, ...]] = {
    "chat": ("messages",),
    "sharegpt": ("conversations", "system"),
    "alpaca": ("instruction", "input", "output", "system"),
    "prompt_completion": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "openai_preference": ("input", "preferred_output", "non_preferred_output"),
    "classification": ("text", "label"),
    "text": ("text",),
}
"""Top-level keys each format reads; any other key is reported (warning) and ignored."""

FILE_TYPES: dict[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "txt",
}

SHAREGPT_ROLES: dict[str, str] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}

_SNIFF_BYTES = 65536
_PARQUET_BATCH_ROWS = 4096


@dataclass(frozen=True)
class RawRow:
    """A parsed row before interpretation: where it starts and what it holds."""

    line: int
    value: Any


@dataclass(frozen=True)
class RowFailure:
    """A row that could not even be parsed (bad JSON, bad bytes, wrong CSV width)."""

    line: int
    problem: Problem


@dataclass
class FileRead:
    """Everything learned from one file: its records, its problems, and what was not usable."""

    file: str
    file_type: str | None
    format: str | None
    records: list[Record] = field(default_factory=list)
    invalid: list[Source] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    streamed: int = 0
    """Records handed to ``on_record`` instead of being kept in ``records``."""

    @property
    def rows_in(self) -> int:
        return len(self.records) + self.streamed + len(self.invalid)


def read_file(
    path: Path,
    *,
    format: str = "auto",
    columns: Mapping[str, str] | None = None,
    on_record: Callable[[Record], None] | None = None,
    prompts: bool = False,
) -> FileRead:
    """Read one file into canonical records; never raises for bad data, reports it instead.

    ``format`` is ``"auto"`` or one of `FORMATS`. ``columns`` maps our key names to
    the file's (``{"text": "SMS"}``). Rows with error-level problems produce no
    record; their `Source` is in ``invalid`` so the caller can count them.
    ``on_record`` receives each record as it is read instead of ``records`` holding
    them all: a large file (a request log) then costs only what the caller keeps.
    ``prompts`` accepts chats that end on a user turn (inputs to monitor, not to train on).
    """
    name = str(path)
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose auto or one of {', '.join(FORMATS)}")
    if not path.is_file():
        problem = Problem(
            "file_not_found",
            name,
            None,
            None,
            f"No such file: {name}.",
            "Check the path (it is relative to the current directory).",
        )
        return FileRead(name, None, None, problems=[problem])

    try:
        return _read_existing_file(path, name, format, columns, on_record, prompts)
    except (OSError, EOFError, zlib.error, pyarrow.ArrowException) as exc:
        problem = Problem(
            "unreadable_file",
            name,
            None,
            None,
            f"The file could not be read: {exc}.",
            "Check that the file is complete and that its name matches its content "
            "(.gz only for gzipped files, .parquet only for Parquet).",
        )
        return FileRead(name, None, None, problems=[problem])


def _read_existing_file(
    path: Path,
    name: str,
    format: str,
    columns: Mapping[str, str] | None,
    on_record: Callable[[Record], None] | None,
    prompts: bool = False,
) -> FileRead:
    file_type, notice = detect_file_type(path)
    result = FileRead(name, file_type, None if format == "auto" else format)
    if notice is not None:
        result.problems.append(notice)
    if file_type is None:
        return result
    if file_type == "txt" and format not in ("auto", "text"):
        result.problems.append(
            Problem(
                "format_mismatch",
                name,
                None,
                None,
                f"A .txt file holds plain text, but format {format!r} was requested.",
                "Use format text (or auto) for .txt files, or convert the file to JSONL.",
            )
        )
        return result

    unknown_keys: dict[str, list[int]] = {}
    for item in _iter_rows(path, file_type, name, columns, result.problems):
        if isinstance(item, RowFailure):
            result.problems.append(item.problem)
            result.invalid.append(Source(name, item.line))
            continue
        check = RowChecker(name, item.line, prompts=prompts)
        record = _interpret(item.value, check, result, unknown_keys, explicit=format != "auto")
        result.problems.extend(check.problems)
        if record is None or not check.ok:
            result.invalid.append(Source(name, item.line))
        elif on_record is not None:
            on_record(record)
            result.streamed += 1
        else:
            result.records.append(record)
    result.problems.extend(_unknown_key_warnings(name, result.format, unknown_keys))
    return result


def detect_file_type(path: Path) -> tuple[str | None, Problem | None]:
    """File type from the suffix (``.gz`` stripped), else from the first bytes."""
    name = path.name.lower()
    stem = name.removesuffix(".gz")
    suffix = Path(stem).suffix
    if suffix in FILE_TYPES:
        file_type = FILE_TYPES[suffix]
        if file_type == "parquet" and name.endswith(".gz"):
            return None, _unreadable(path, "Parquet files cannot be gzipped as a whole.")
        if file_type == "json" and _first_char(path) == "{":
            return "jsonl", Problem(
                "jsonl_in_json_file",
                str(path),
                None,
                None,
                "The .json file holds one object per line; it was read as JSONL.",
                "Rename it to .jsonl (a .json file should hold one list of objects).",
                "warning",
            )
        return file_type, None
    first = _first_char(path)
    if first == "{":
        return "jsonl", None
    if first == "[":
        return "json", None
    with _open_binary(path) as fh:
        first_line = fh.readline(_SNIFF_BYTES)
    if b"\t" in first_line:
        return "tsv", None
    return None, _unreadable(
        path, "The file type could not be told from its name or its first line."
    )


def _unreadable(path: Path, why: str) -> Problem:
    return Problem(
        "unknown_file_type",
        str(path),
        None,
        None,
        why,
        "Name the file .jsonl, .json, .csv, .tsv, .parquet or .txt (optionally .gz).",
    )


def _first_char(path: Path) -> str:
    with _open_binary(path) as fh:
        head = fh.read(_SNIFF_BYTES)
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    return chr(text[0]) if text else ""


def _open_binary(path: Path) -> IO[bytes]:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return path.open("rb")


def _apply_columns(value: Any, columns: Mapping[str, str] | None) -> Any:
    if not columns or not isinstance(value, dict):
        return value
    renamed = dict(value)
    for ours, theirs in columns.items():
        if theirs in renamed:
            renamed[ours] = renamed.pop(theirs)
    return renamed


def _iter_rows(
    path: Path,
    file_type: str,
    name: str,
    columns: Mapping[str, str] | None,
    notices: list[Problem],
) -> Iterator[RawRow | RowFailure]:
    readers: dict[str, Callable[[Path, str, list[Problem]], Iterator[RawRow | RowFailure]]] = {
        "jsonl": _iter_jsonl,
        "json": _iter_json_list,
        "csv": lambda p, n, ns: _iter_delimited(p, n, ns, "csv"),
        "tsv": lambda p, n, ns: _iter_delimited(p, n, ns, "tsv"),
        "parquet": _iter_parquet,
        "txt": _iter_text_blocks,
    }
    if columns and file_type in ("csv", "tsv", "parquet"):
        header = _header(path, file_type)
        missing = [theirs for theirs in columns.values() if theirs not in header]
        if missing:
            notices.append(
                Problem(
                    "missing_column",
                    name,
                    1,
                    None,
                    f"Column(s) {', '.join(map(repr, missing))} named in the column mapping are "
                    f"not in the file; it has {', '.join(map(repr, header))}.",
                    "Fix the column mapping (ours=theirs) to name columns the file has.",
                )
            )
            return
    for item in readers[file_type](path, name, notices):
        if isinstance(item, RawRow):
            yield RawRow(item.line, _apply_columns(item.value, columns))
        else:
            yield item


def _iter_lines(path: Path, name: str, notices: list[Problem]) -> Iterator[tuple[int, int, bytes]]:
    """Yield (line number, byte offset, line bytes without EOL); warns once on BOM / CRLF."""
    crlf_count, crlf_first = 0, 0
    offset = 0
    with _open_binary(path) as fh:
        for number, raw in enumerate(fh, start=1):
            start = offset
            offset += len(raw)
            line = raw.removesuffix(b"\n")
            if line.endswith(b"\r"):
                line = line[:-1]
                crlf_count += 1
                crlf_first = crlf_first or number
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                notices.append(bom_warning(name))
                line = line[3:]
                start += 3
            yield number, start, line
    if crlf_count:
        notices.append(crlf_warning(name, crlf_count, crlf_first))


def _iter_jsonl(path: Path, name: str, notices: list[Problem]) -> Iterator[RawRow | RowFailure]:
    for number, offset, raw in _iter_lines(path, name, notices):
        if not raw.strip():
            continue
        text = decode_utf8(raw, name, number, offset)
        if isinstance(text, Problem):
            yield RowFailure(number, text)
            continue
        try:
            yield RawRow(number, json.loads(text))
        except json.JSONDecodeError as exc:
            yield RowFailure(number, invalid_json(name, number, exc.colno, exc.msg))


def _read_text(path: Path, name: str, notices: list[Problem]) -> str | Problem:
    """The whole file as text (JSON lists and CSV need it); a bad byte names its line."""
    with _open_binary(path) as fh:
        data = fh.read()
    skipped = 0
    if data.startswith(b"\xef\xbb\xbf"):
        notices.append(bom_warning(name))
        data, skipped = data[3:], 3
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return encoding_problem(name, line, skipped + exc.start, data[exc.start], exc.reason)


def _iter_json_list(path: Path, name: str, notices: list[Problem]) -> Iterator[RawRow | RowFailure]:
    """Decode the list one object at a time, so each row knows the line it starts on."""
    text = _read_text(path, name, notices)
    if isinstance(text, Problem):
        yield RowFailure(text.line or 1, text)
        return
    decoder = json.JSONDecoder()
    pos = _skip_space(text, 0)
    line, line_pos = 1, 0

    def line_at(index: int) -> int:
        nonlocal line, line_pos
        line += text.count("\n", line_pos, index)
        line_pos = index
        return line

    if pos >= len(text) or text[pos] != "[":
        value = text[pos : pos + 20]
        notices.append(
            Problem(
                "data_type",
                name,
                line_at(pos),
                None,
                f"A .json file must hold a list of objects; it starts with {value!r}.",
                "Wrap the objects in [ ... ], or write one object per line in a .jsonl file.",
            )
        )
        return
    pos = _skip_space(text, pos + 1)
    if text.startswith("]", pos):
        return
    while True:
        start_line = line_at(pos)
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            rest = " The rest of the file was not read."
            yield RowFailure(start_line, invalid_json(name, exc.lineno, exc.colno, exc.msg, rest))
            return
        yield RawRow(start_line, value)
        pos = _skip_space(text, end)
        if text.startswith(",", pos):
            pos = _skip_space(text, pos + 1)
            continue
        if text.startswith("]", pos):
            return
        where = line_at(pos)
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        yield RowFailure(
            where,
            invalid_json(
                name, where, column, "Expecting ',' or ']'", " The rest of the file was not read."
            ),
        )
        return


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _csv_reader(stream: IO[str], file_type: str) -> Iterator[list[str]]:
    if file_type == "tsv":
        return csv.reader(stream, delimiter="\t", quoting=csv.QUOTE_NONE)
    return csv.reader(stream)


def _header(path: Path, file_type: str) -> list[str]:
    if file_type == "parquet":
        return list(pq.ParquetFile(path).schema_arrow.names)
    with _open_binary(path) as fh:
        first = fh.readline().decode("utf-8", errors="replace").removeprefix("\ufeff")
    return next(_csv_reader(io.StringIO(first), file_type), [])


def _iter_delimited(
    path: Path, name: str, notices: list[Problem], file_type: str
) -> Iterator[RawRow | RowFailure]:
    """CSV/TSV with a header row; each later row becomes a dict of strings."""
    text = _read_text(path, name, notices)
    if isinstance(text, Problem):
        yield RowFailure(text.line or 1, text)
        return
    stream = io.StringIO(text, newline="")
    reader = _csv_reader(stream, file_type)
    header = next(reader, None)
    if header is None:
        return
    header = [h.strip() for h in header]
    start = reader.line_num + 1
    for row in reader:
        line, start = start, reader.line_num + 1
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield RowFailure(
                line,
                Problem(
                    "csv_field_count",
                    name,
                    line,
                    None,
                    f"Row has {len(row)} field(s) but the header has {len(header)}.",
                    "Quote fields that contain the delimiter, or fix the row's field count.",
                ),
            )
            continue
        yield RawRow(line, dict(zip(header, row, strict=True)))


def _iter_parquet(path: Path, name: str, notices: list[Problem]) -> Iterator[RawRow | RowFailure]:
    """Stream record batches; a null value counts as an absent key."""
    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=_PARQUET_BATCH_ROWS):
        for row in batch.to_pylist():
            number += 1
            yield RawRow(number, _without_nulls(row))


def _without_nulls(value: Any) -> Any:
    """Parquet fills keys a row lacks with null (also inside structs); drop them again."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _iter_text_blocks(
    path: Path, name: str, notices: list[Problem]
) -> Iterator[RawRow | RowFailure]:
    """One row per blank-line-separated block, as ``{"text": block}``."""
    block: list[str] = []
    block_line = 0
    bad_block = False
    for number, offset, raw in _iter_lines(path, name, notices):
        if not raw.strip():
            if block and not bad_block:
                yield RawRow(block_line, {"text": "\n".join(block)})
            block, bad_block = [], False
            continue
        if not block and not bad_block:
            block_line = number
        text = decode_utf8(raw, name, number, offset)
        if isinstance(text, Problem):
            if not bad_block:
                yield RowFailure(block_line, text)
            bad_block = True
            continue
        block.append(text)
    if block and not bad_block:
        yield RawRow(block_line, {"text": "\n".join(block)})


def matching_formats(keys: set[str]) -> list[str]:
    """Every format whose distinguishing keys appear; more than one means ambiguous."""
    found = []
    if "messages" in keys:
        found.append("chat")
    if "conversations" in keys:
        found.append("sharegpt")
    if "instruction" in keys:
        found.append("alpaca")
    if "completion" in keys:
        found.append("prompt_completion")
    if keys & {"chosen", "rejected"}:
        found.append("preference")
    if keys & {"preferred_output", "non_preferred_output"}:
        found.append("openai_preference")
    if "text" in keys:
        found.append("classification" if "label" in keys else "text")
    return found


def _interpret(
    value: Any,
    check: RowChecker,
    result: FileRead,
    unknown_keys: dict[str, list[int]],
    *,
    explicit: bool,
) -> Record | None:
    """Pick the row's format (named, or detected and equal to the file's) and build its record."""
    if not isinstance(value, dict):
        check.error(
            "data_type",
            None,
            f"Each row must be a JSON object, got {type_name(value)}.",
            'Write each row as an object such as {"messages": [...]}.',
        )
        return None
    if explicit:
        fmt = result.format
    else:
        fmt = _detect_row_format(value, check)
        if fmt is None:
            return None
        if result.format is None:
            result.format = fmt
        elif fmt != result.format:
            check.error(
                "mixed_formats",
                None,
                f"The row looks like {fmt}, but earlier rows of this file are {result.format}.",
                "Keep one format per file (split the file, or convert the rows).",
            )
            return None
    assert fmt is not None
    for key in value:
        if key not in FORMAT_KEYS[fmt]:
            unknown_keys.setdefault(key, []).append(check.line)
    return _PARSERS[fmt](value, check, Source(check.file, check.line))


def _detect_row_format(value: dict[str, Any], check: RowChecker) -> str | None:
    found = matching_formats(set(value))
    if len(found) == 1:
        return found[0]
    keys = ", ".join(map(repr, value)) or "no keys"
    if not found:
        check.error(
            "unknown_format",
            None,
            f"The row's keys ({keys}) match no known format.",
            f"Use the keys of one of: {', '.join(FORMATS)}; map other column names with "
            "--column ours=theirs (e.g. --column text=sentence).",
        )
    else:
        check.error(
            "ambiguous_format",
            None,
            f"The row fits several formats ({', '.join(found)}) because of keys {keys}.",
            f"Keep only the keys of one format, or name the format (--format {found[0]}).",
        )
    return None


def _parse_chat(value: dict[str, Any], check: RowChecker, source: Source) -> Record | None:
    messages = value.get("messages")
    if not isinstance(messages, list) or not messages:
        check.error(
            "missing_messages_list",
            "messages",
            "'messages' must be a non-empty list of messages, got "
            f"{type_name(messages) if 'messages' in value else 'nothing'}.",
            'Write the row as {"messages": [{"role": "user", "content": ...}, ...]}.',
        )
        return None
    return _conversation(check, messages, "messages", source)


def _conversation(
    check: RowChecker,
    messages: list[Any],
    field: str,
    source: Source,
    *,
    keys: tuple[str, str] = ("role", "content"),
    allowed: tuple[str, ...] | None = None,
    role_names: dict[str, str] | None = None,
    leading: tuple[Message, ...] = (),
) -> Conversation | None:
    parsed = [
        check_message(
            check,
            m,
            f"{field}[{i}]",
            keys=keys,
            allowed=allowed or ("role", "content", "name", "weight"),
            role_names=role_names,
        )
        for i, m in enumerate(messages)
    ]
    if any(p is None for p in parsed):
        return None
    turns = leading + tuple(Message(r, c, w) for r, c, w in parsed)
    check_role_order(check, [m.role for m in turns], field)
    return Conversation(turns, source)


def _parse_sharegpt(value: dict[str, Any], check: RowChecker, source: Source) -> Record | None:
    turns = value.get("conversations")
    if not isinstance(turns, list) or not turns:
        check.error(
            "missing_messages_list",
            "conversations",
            "'conversations' must be a non-empty list of turns.",
            'Write the row as {"conversations": [{"from": "human", "value": ...}, ...]}.',
        )
        return None
    leading: tuple[Message, ...] = ()
    if "system" in value:
        system = check_string(check, value["system"], "system")
        if system is None:
            return None
        leading = (Message("system", system),)
    return _conversation(
        check,
        turns,
        "conversations",
        source,
        keys=("from", "value"),
        allowed=("from", "value", "weight"),
        role_names=SHAREGPT_ROLES,
        leading=leading,
    )


def _parse_alpaca(value: dict[str, Any], check: RowChecker, source: Source) -> Record | None:
    instruction = _required(check, value, "instruction")
    output = _required(check, value, "output", assistant=True)
    extra = check_string(check, value.get("input"), "input", required=False)
    system = check_string(check, value.get("system"), "system", required=False)
    if instruction is None or output is None or not check.ok:
        return None
    prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    turns = (Message("system", system),) if system and system.strip() else ()
    turns += (Message("user", prompt), Message("assistant", output))
    return Conversation(turns, source)


def _required(
    check: RowChecker, value: dict[str, Any], key: str, *, assistant: bool = False
) -> str | None:
    if key not in value:
        check.error(
            "missing_field",
            key,
            f"The row has no '{key}' field.",
            f"Add '{key}' (or map your column onto it with --column {key}=yours).",
        )
        return None
    if assistant and isinstance(value[key], str) and not value[key].strip():
        check.error(
            "empty_assistant_content",
            key,
            f"'{key}' (the reply to learn) is empty or whitespace.",
            "Write the reply or remove the row.",
        )
        return None
    return check_string(check, value[key], key)


def _parse_classification(
    value: dict[str, Any], check: RowChecker, source: Source
) -> Record | None:
    text = check_string(check, value.get("text"), "text")
    label = value.get("label")
    if isinstance(label, int) and not isinstance(label, bool):
        label = str(label)
    label = check_string(check, label, "label")
    if text is None or label is None:
        return None
    turns = (Message("user", text), Message("assistant", label))
    return Conversation(turns, source, label=label)


def _parse_text(value: dict[str, Any], check: RowChecker, source: Source) -> Record | None:
    text = check_string(check, value.get("text"), "text")
    return None if text is None else Text(text, source)


def _turns(check: RowChecker, value: Any, field: str, default_role: str) -> list[Message] | None:
    """A string (one message of ``default_role``) or a list of chat messages."""
    if isinstance(value, str):
        if not value.strip():
            code = "empty_assistant_content" if default_role == "assistant" else "missing_content"
            check.error(code, field, f"'{field}' is empty.", f"Give '{field}' text.")
            return None
        return [Message(default_role, value)]
    if isinstance(value, list) and value:
        parsed = [check_message(check, m, f"{field}[{i}]") for i, m in enumerate(value)]
        if any(p is None for p in parsed):
            return None
        return [Message(r, c, w) for r, c, w in parsed if r is not None]
    check.error(
        "data_type" if value is not None else "missing_field",
        field,
        f"'{field}' must be a string or a non-empty list of messages, got {type_name(value)}.",
        f"Write '{field}' as text or as [{{'role': ..., 'content': ...}}].",
    )
    return None


def _parse_prompt_completion(
    value: dict[str, Any], check: RowChecker, source: Source
) -> Record | None:
    prompt = _turns(check, value.get("prompt"), "prompt", "user")
    completion = _turns(check, value.get("completion"), "completion", "assistant")
    if prompt is None or completion is None:
        return None
    turns = tuple(prompt + completion)
    check_role_order(check, [m.role for m in turns], "prompt+completion")
    return Conversation(turns, source)


def _parse_preference(value: dict[str, Any], check: RowChecker, source: Source) -> Record | None:
    prompt: list[Message] = []
    if "prompt" in value:
        parsed = _turns(check, value["prompt"], "prompt", "user")
        if parsed is None:
            return None
        prompt = parsed
    return _preference(check, source, prompt, value.get("chosen"), value.get("rejected"))


def _parse_openai_preference(
    value: dict[str, Any], check: RowChecker, source: Source
) -> Record | None:
    body = value.get("input")
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        check.error(
            "missing_messages_list",
            "input.messages",
            "'input' must be an object with a non-empty 'messages' list.",
            'Write "input": {"messages": [{"role": "user", "content": ...}]}.',
        )
        return None
    prompt = _turns(check, messages, "input.messages", "user")
    if prompt is None:
        return None
    chosen, rejected = value.get("preferred_output"), value.get("non_preferred_output")
    for key, output in (("preferred_output", chosen), ("non_preferred_output", rejected)):
        if not isinstance(output, list) or len(output) != 1:
            check.error(
                "data_type",
                key,
                f"'{key}' must be a list holding exactly one assistant message.",
                f'Write "{key}": [{{"role": "assistant", "content": ...}}].',
            )
    if not check.ok:
        return None
    return _preference(
        check, source, prompt, chosen, rejected, names=("preferred_output", "non_preferred_output")
    )


def _preference(
    check: RowChecker,
    source: Source,
    prompt: list[Message],
    chosen_value: Any,
    rejected_value: Any,
    names: tuple[str, str] = ("chosen", "rejected"),
) -> Preference | None:
    """Both replies may repeat the conversation before them; that prefix must agree."""
    chosen = _turns(check, chosen_value, names[0], "assistant")
    rejected = _turns(check, rejected_value, names[1], "assistant")
    if chosen is None or rejected is None:
        return None
    for key, turns in zip(names, (chosen, rejected), strict=True):
        if turns[-1].role != "assistant":
            check.error(
                "last_message_not_assistant",
                key,
                f"'{key}' must end with an assistant message, not {turns[-1].role}.",
                f"End '{key}' with the assistant reply.",
            )
    if chosen[:-1] != rejected[:-1]:
        check.error(
            "preference_prompt_mismatch",
            names[1],
            f"'{names[0]}' and '{names[1]}' continue different conversations.",
            "Both replies must follow the same prompt; keep only the replies in them.",
        )
    if not check.ok:
        return None
    prefix = chosen[:-1]
    if prompt and prefix[: len(prompt)] == prompt:
        prefix = prefix[len(prompt) :]
    full_prompt = tuple(prompt + prefix)
    if not full_prompt:
        check.error(
            "missing_prompt",
            "prompt",
            "The pair has no prompt: no 'prompt' and no messages before the replies.",
            "Add 'prompt' (text or messages) the replies answer.",
        )
        return None
    check_role_order(check, [m.role for m in full_prompt] + ["assistant"], "prompt")
    check_preference_pair(check, chosen[-1].content, rejected[-1].content)
    return Preference(full_prompt, Message("assistant", chosen[-1].content), rejected[-1], source)


_PARSERS: dict[str, Callable[[dict[str, Any], RowChecker, Source], Record | None]] = {
    "chat": _parse_chat,
    "sharegpt": _parse_sharegpt,
    "alpaca": _parse_alpaca,
    "prompt_completion": _parse_prompt_completion,
    "preference": _parse_preference,
    "openai_preference": _parse_openai_preference,
    "classification": _parse_classification,
    "text": _parse_text,
}


def _unknown_key_warnings(
    file: str, fmt: str | None, unknown_keys: dict[str, list[int]]
) -> list[Problem]:
    """One warning per unknown key and file, not one per row, so 100k rows stay readable."""
    problems = []
    for key, lines in unknown_keys.items():
        shown = ", ".join(map(str, lines[:5])) + (" …" if len(lines) > 5 else "")
        problems.append(
            Problem(
                "unknown_key",
                file,
                lines[0],
                key,
                f"Key {key!r} is not part of the {fmt} format and was ignored "
                f"({len(lines)} row(s): lines {shown}).",
                f"Remove {key!r}, or map it onto a known key with --column ours={key}.",
                "warning",
            )
        )
    return problems
