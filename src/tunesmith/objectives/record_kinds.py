"""Each objective trains on one kind of record; any other kind is an error with file:line."""

from __future__ import annotations

from collections.abc import Sequence

from tunesmith.data.records import Conversation, Preference, Record, Text
from tunesmith.data.tokenize import TokenizeError
from tunesmith.data.validate import Problem

_KIND_NAMES = {Conversation: "a conversation", Preference: "a preference pair", Text: "raw text"}


def require_record_kinds(
    records: Sequence[Record],
    kinds: tuple[type, ...],
    *,
    objective: str,
    expected: str,
    fix: str,
) -> None:
    """Raise `TokenizeError` naming every record that is not one of `kinds`.

    Mixing kinds silently (e.g. skipping the conversations of a DPO run) would train on
    less data than the user thinks, so the whole run stops and every offender is listed.
    """
    problems = [
        Problem(
            "wrong_record_kind",
            record.source.file,
            record.source.line,
            None,
            f"objective {objective} trains on {expected}; this record is "
            f"{_KIND_NAMES[type(record)]}.",
            fix,
        )
        for record in records
        if not isinstance(record, kinds)
    ]
    if problems:
        raise TokenizeError(problems)
