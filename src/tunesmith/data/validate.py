"""Checks on raw input rows, and the `Problem` every check reports.

Checks run on the parsed-but-raw row (a dict straight from JSON, CSV or
Parquet), before it becomes a canonical record, because most mistakes users make
(a typo in a key, a number where text belongs, roles in the wrong order) are
only visible there. Every check returns *all* the problems it finds; nothing
stops at the first one and nothing is dropped silently.

Codes follow the OpenAI fine-tuning data checks where one exists
(``missing_messages_list``, ``message_missing_key`` …) and the role-order
wording follows torchtune, so users who know either tool recognise them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from tunesmith.data.records import ROLES
from tunesmith.errors import TunesmithError

Severity = Literal["error", "warning"]

MESSAGE_KEYS: tuple[str, ...] = ("role", "content", "name", "weight")
"""Keys a chat message may carry. ``name`` is accepted (OpenAI allows it) but not used."""

MIN_EXAMPLES_WARNING = 50
"""Below this many training examples gains are usually small (OpenAI guidance)."""

SHOWN_PROBLEMS = 50
"""How many problems a `DataError` lists before summarising the rest."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, located precisely enough to fix it.

    ``line`` is the 1-based line (JSONL, CSV, TXT) or item/row number (JSON list,
    Parquet); ``None`` when the problem concerns the whole file. ``column`` is
    set for JSON syntax errors. ``field`` names the key, e.g. ``messages[2].role``.
    """

    code: str
    file: str
    line: int | None
    field: str | None
    message: str
    fix: str
    severity: Severity = "error"
    column: int | None = None

    @property
    def location(self) -> str:
        """``file:line:col`` with the parts that are known."""
        parts = [self.file]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)

    def __str__(self) -> str:
        field = f" [{self.field}]" if self.field else ""
        head = f"{self.location}: {self.severity} {self.code}{field}"
        return f"{head}: {self.message} Fix: {self.fix}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DataError(TunesmithError):
    """The input data has error-level problems; carries all of them (and the report if built).

    ``str()`` is meant to be printed to the user as is: a listing of the
    problems, at most `SHOWN_PROBLEMS` lines, then ``… and N more``.
    """

    def __init__(self, problems: Sequence[Problem], report: Any = None) -> None:
        self.problems = list(problems)
        self.report = report
        super().__init__(format_problems(self.problems))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


def format_problems(problems: Sequence[Problem], limit: int = SHOWN_PROBLEMS) -> str:
    """Errors first, then warnings, one per line, capped at ``limit`` lines."""
    ordered = sorted(problems, key=lambda p: p.severity != "error")
    n_errors = sum(p.severity == "error" for p in problems)
    head = f"{n_errors} error(s), {len(problems) - n_errors} warning(s) in the data:"
    lines = [head, *(str(p) for p in ordered[:limit])]
    if len(ordered) > limit:
        lines.append(f"… and {len(ordered) - limit} more")
    return "\n".join(lines)


def has_errors(problems: Iterable[Problem]) -> bool:
    return any(p.severity == "error" for p in problems)


class RowChecker:
    """Builds problems for one row: the file and line are fixed, only code/field/text vary."""

    def __init__(self, file: str, line: int, *, prompts: bool = False) -> None:
        self.file = file
        self.line = line
        self.prompts = prompts
        """A conversation may end on its user turn: inputs to answer (what a drift monitor
        reads), not examples to train on."""
        self.problems: list[Problem] = []

    def error(self, code: str, field: str | None, message: str, fix: str) -> None:
        self.problems.append(Problem(code, self.file, self.line, field, message, fix))

    def warning(self, code: str, field: str | None, message: str, fix: str) -> None:
        self.problems.append(Problem(code, self.file, self.line, field, message, fix, "warning"))

    @property
    def ok(self) -> bool:
        return not has_errors(self.problems)


def type_name(value: object) -> str:
    """JSON-ish name of a Python value's type, for messages users read."""
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number"}
    names |= {float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def check_string(
    check: RowChecker, value: object, field: str, *, required: bool = True
) -> str | None:
    """A required non-empty string field; returns the string or None after reporting."""
    if value is None:
        if required:
            check.error(
                "missing_content",
                field,
                f"'{field}' is missing or null.",
                f"Give '{field}' a non-empty string.",
            )
        return None
    if not isinstance(value, str):
        check.error(
            "data_type",
            field,
            f"'{field}' must be a string, got {type_name(value)}.",
            f"Write '{field}' as a JSON string.",
        )
        return None
    if required and not value.strip():
        check.error(
            "missing_content",
            field,
            f"'{field}' is empty.",
            f"Give '{field}' a non-empty string or remove the row.",
        )
        return None
    return value


def check_message(
    check: RowChecker,
    message: object,
    field: str,
    *,
    keys: tuple[str, str] = ("role", "content"),
    allowed: tuple[str, ...] = MESSAGE_KEYS,
    role_names: dict[str, str] | None = None,
) -> tuple[str, str, int] | None:
    """Check one message; returns (canonical role, content, weight) when it is usable.

    ``keys`` names the role and content keys (``from``/``value`` for ShareGPT) and
    ``role_names`` maps the file's role names onto ours.
    """
    role_key, content_key = keys
    if not isinstance(message, dict):
        check.error(
            "data_type",
            field,
            f"Each message must be an object, got {type_name(message)}.",
            f'Write the message as {{"{role_key}": ..., "{content_key}": ...}}.',
        )
        return None
    if not _check_message_keys(check, message, field, keys, allowed):
        return None
    role = _message_role(check, message[role_key], f"{field}.{role_key}", role_names)
    weight = _message_weight(check, message, field, role)
    content = _message_content(check, message[content_key], f"{field}.{content_key}", role, weight)
    if role is None or content is None:
        return None
    return role, content, weight


def _check_message_keys(
    check: RowChecker,
    message: dict[str, Any],
    field: str,
    keys: tuple[str, str],
    allowed: tuple[str, ...],
) -> bool:
    """Report missing and unknown keys; True when both the role and the content are there."""
    usable = True
    for key in keys:
        if key not in message:
            check.error(
                "message_missing_key",
                f"{field}.{key}",
                f"Message is missing the '{key}' key.",
                f"Add '{key}' to the message.",
            )
            usable = False
    for key in message:
        if key not in allowed:
            check.error(
                "message_unrecognized_key",
                f"{field}.{key}",
                f"Message has the unrecognized key '{key}'.",
                f"Remove '{key}'; allowed keys are {', '.join(allowed)}.",
            )
    return usable


def _message_role(
    check: RowChecker, raw_role: object, field: str, role_names: dict[str, str] | None
) -> str | None:
    """Our name for the file's role, or None (reported) when it is not one we know."""
    names = role_names or {r: r for r in ROLES}
    role = names.get(raw_role) if isinstance(raw_role, str) else None
    if role is None:
        check.error(
            "unrecognized_role",
            field,
            f"Unrecognized role {raw_role!r}.",
            f"Use one of: {', '.join(names)}.",
        )
    return role


def _message_weight(
    check: RowChecker, message: dict[str, Any], field: str, role: str | None
) -> int:
    """The message's training weight: 0 or 1, and only on assistant messages."""
    weight = message.get("weight", 1)
    if "weight" in message and (
        isinstance(weight, bool) or not isinstance(weight, int) or weight not in (0, 1)
    ):
        check.error(
            "invalid_weight",
            f"{field}.weight",
            f"'weight' must be 0 or 1, got {weight!r}.",
            "Use weight 0 (context only) or 1 (train on this message).",
        )
        return 1
    if "weight" in message and role not in (None, "assistant"):
        check.error(
            "invalid_weight",
            f"{field}.weight",
            f"'weight' is only meaningful on assistant messages, found on a {role} message.",
            "Remove 'weight' from non-assistant messages.",
        )
    return weight


def _message_content(
    check: RowChecker, content: object, field: str, role: str | None, weight: int
) -> str | None:
    """The content string, or None when it is null or not a string; an empty one is reported
    unless it is an assistant turn kept as context only (weight 0)."""
    if content is None:
        check.error(
            "missing_content",
            field,
            "Message content is null.",
            "Give the message a non-empty string as content.",
        )
        return None
    if not isinstance(content, str):
        check.error(
            "data_type",
            field,
            f"Message content must be a string, got {type_name(content)}.",
            "Write the content as a single string.",
        )
        return None
    if content.strip() or (role == "assistant" and weight == 0):
        return content
    if role == "assistant":
        check.error(
            "empty_assistant_content",
            field,
            "Assistant message is empty or whitespace, so there is nothing to learn.",
            "Write the reply, remove the row, or set weight 0 to keep it as context only.",
        )
    else:
        check.error(
            "missing_content",
            field,
            f"The {role or 'message'} message is empty.",
            "Give the message a non-empty string as content.",
        )
    return content


def check_role_order(check: RowChecker, roles: Sequence[str], field: str = "messages") -> None:
    """System first, then user and assistant alternating, ending with an assistant turn.

    Mirrors torchtune's ``validate_messages`` wording but reports every violation.
    """
    last = "assistant"
    for i, role in enumerate(roles):
        if role == "assistant" and last != "user":
            check.error(
                "assistant_before_user",
                f"{field}[{i}]",
                f"Assistant message before expected user message at index {i} in messages.",
                "Put a user message before each assistant message.",
            )
        if role == "user" and last == "user":
            check.error(
                "consecutive_user_messages",
                f"{field}[{i}]",
                f"Two consecutive user messages at index {i} and {i - 1} in messages.",
                "Merge the two user messages or add the assistant reply between them.",
            )
        if role == "system" and i > 0:
            check.error(
                "system_not_first",
                f"{field}[{i}]",
                f"System message at index {i} in messages, but system messages must come first.",
                "Move the system message to the start (only one is allowed).",
            )
            continue  # a misplaced system turn is one error, not also an order error after it
        last = role
    if check.prompts and roles and roles[-1] == "user":
        return  # a prompt waiting for its answer
    if "assistant" not in roles:
        check.error(
            "example_missing_assistant_message",
            field,
            "The example has no assistant message, so there is nothing to train on.",
            "Add the assistant reply the model should learn.",
        )
    elif roles[-1] != "assistant":
        check.error(
            "last_message_not_assistant",
            f"{field}[{len(roles) - 1}]",
            f"The conversation ends with a {roles[-1]} message at index {len(roles) - 1}, "
            "not an assistant message.",
            "End each example with the assistant reply, or remove the trailing message.",
        )


def check_preference_pair(check: RowChecker, chosen: str, rejected: str) -> None:
    """A pair teaches nothing if both replies are the same text."""
    if chosen.strip() == rejected.strip():
        check.error(
            "identical_preference_pair",
            "chosen",
            "The chosen and rejected replies are identical.",
            "Give a rejected reply that differs from the chosen one, or remove the pair.",
        )


def check_example_count(n: int, files: Sequence[str], min_examples: int) -> list[Problem]:
    """Fewer than ``min_examples`` is an error, fewer than 50 a warning (OpenAI anchor)."""
    where = ", ".join(files)
    if n < min_examples:
        return [
            Problem(
                "too_few_examples",
                where,
                None,
                None,
                f"Only {n} usable training example(s); at least {min_examples} are required.",
                "Add more examples (50-100 typically give clear gains).",
            )
        ]
    if n < MIN_EXAMPLES_WARNING:
        return [
            Problem(
                "too_few_examples",
                where,
                None,
                None,
                f"Only {n} training examples; gains are usually small below "
                f"{MIN_EXAMPLES_WARNING}.",
                "Add more examples if you can (50-100 typically give clear gains).",
                "warning",
            )
        ]
    return []


def decode_utf8(raw: bytes, file: str, line: int, offset: int) -> str | Problem:
    """Decode one line strictly; invalid bytes name their byte offset in the file.

    ``offset`` is the file offset of ``raw[0]`` (of the decompressed stream for .gz files).
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return encoding_problem(file, line, offset + exc.start, raw[exc.start], exc.reason)


def encoding_problem(file: str, line: int, at: int, bad: int, reason: str) -> Problem:
    return Problem(
        "encoding",
        file,
        line,
        None,
        f"Invalid UTF-8 byte 0x{bad:02x} at byte offset {at} ({reason}).",
        "Save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 in > out`.",
    )


def invalid_json(file: str, line: int, column: int, reason: str, tail: str = "") -> Problem:
    """A JSON syntax error, located to line and column as the parser saw it."""
    return Problem(
        "invalid_json",
        file,
        line,
        None,
        f"Invalid JSON: {reason}.{tail}",
        "Fix the JSON syntax on this line (each JSONL line must be one complete object).",
        column=column,
    )


def bom_warning(file: str) -> Problem:
    return Problem(
        "utf8_bom",
        file,
        1,
        None,
        "The file starts with a UTF-8 byte order mark; it was ignored.",
        "Save the file as UTF-8 without BOM.",
        "warning",
    )


def crlf_warning(file: str, count: int, first_line: int) -> Problem:
    return Problem(
        "crlf_line_endings",
        file,
        first_line,
        None,
        f"{count} line(s) end with CRLF (Windows line endings); the CR was removed.",
        "Convert the file to LF line endings (e.g. `dos2unix`).",
        "warning",
    )
