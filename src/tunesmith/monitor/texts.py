"""What the monitor compares: the user's side of a record, and the model's answer.

Drift is about what users send, so a record's *prompt* is its user turns joined by
newlines (a shared system prompt would only dilute every signal); the *answer* is the
last assistant turn (for classification data, its label), which the output checks read.
"""

from __future__ import annotations

from tunesmith.data.records import Conversation, Preference, Record, Text


def prompt_text(record: Record) -> str:
    """The user turns of a record (a `Text` record is all prompt)."""
    if isinstance(record, Text):
        return record.text
    messages = record.prompt if isinstance(record, Preference) else record.messages
    users = [m.content for m in messages if m.role == "user"]
    return "\n".join(users)


def answer_text(record: Record) -> str | None:
    """The final assistant turn (the label of a classification record), or None."""
    if isinstance(record, Conversation):
        if record.label is not None:
            return record.label
        if record.messages and record.messages[-1].role == "assistant":
            return record.messages[-1].content
        return None
    if isinstance(record, Preference):
        return record.chosen.content
    return None
