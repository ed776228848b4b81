"""Canonical records: the one shape every input format is read into.

Every later stage (validation, splitting, tokenization, evaluation) takes these
records and nothing else, so a new file format only needs a reader.
Each record remembers where it came from (`Source`), so any problem found later
can still be reported as ``file:line``.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES: tuple[str, ...] = ("system", "user", "assistant")


@dataclass(frozen=True)
class Source:
    """Where a record was read from: a file and a 1-based line (or row) number."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Message:
    """One chat turn. ``weight`` 0 keeps an assistant turn as context without training on it."""

    role: str
    content: str
    weight: int = 1


@dataclass(frozen=True)
class Conversation:
    """A chat the model should learn to continue: loss falls on assistant turns with weight 1.

    ``label`` is set for classification data (``text`` + ``label``), so splits can be
    stratified and evaluation can constrain answers to the known label set.
    """

    messages: tuple[Message, ...]
    source: Source
    label: str | None = None


@dataclass(frozen=True)
class Preference:
    """A prompt with a preferred and a rejected assistant reply (DPO, reward modelling)."""

    prompt: tuple[Message, ...]
    chosen: Message
    rejected: Message
    source: Source


@dataclass(frozen=True)
class Text:
    """Raw text for continued pretraining: every token carries loss."""

    text: str
    source: Source


Record = Conversation | Preference | Text
