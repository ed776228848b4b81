"""Tokenize preference pairs: the same prompt, then the chosen or the rejected reply.

Both sequences are rendered through the model's chat template with
`render_with_spans`, exactly like a conversation, so the prompt is tokenized
the same way for the two replies and for SFT. Only the reply carries loss:
assistant turns inside the prompt are context (weight 0). A pair is as long as
its longer sequence; the over-length policy is SFT's (drop with a reason,
cut the oldest prompt turns, or stop with every offending pair listed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from tunesmith.data.records import Message, Preference, Source
from tunesmith.data.tokenize import (
    IGNORE_INDEX,
    OVERLENGTH_POLICIES,
    TokenizedExample,
    TokenizeError,
    render_with_spans,
)
from tunesmith.data.validate import Problem


@dataclass(frozen=True)
class PreferenceExample:
    """One tokenized pair; `chosen` and `rejected` start with identical prompt tokens."""

    chosen: TokenizedExample
    rejected: TokenizedExample
    source: Source

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)


@dataclass
class PreferenceOutcome:
    examples: list[PreferenceExample]
    dropped: list[tuple[str, Source]]


def _as_context(prompt: Sequence[Message]) -> tuple[Message, ...]:
    return tuple(Message(m.role, m.content, 0) for m in prompt)


def _tokenize_reply(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Sequence[Message],
    reply: Message,
    source: Source,
) -> TokenizedExample:
    messages = (*_as_context(prompt), Message("assistant", reply.content))
    text, spans = render_with_spans(tokenizer, messages, source)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoding["input_ids"]
    labels = [
        token if any(start <= offset[0] < end for start, end in spans) else IGNORE_INDEX
        for token, offset in zip(ids, encoding["offset_mapping"], strict=True)
    ]
    return TokenizedExample(ids, labels, source)


def tokenize_pair(
    tokenizer: PreTrainedTokenizerBase, record: Preference, prompt: Sequence[Message] | None = None
) -> PreferenceExample:
    """Both sequences of one pair (with `prompt` instead of the record's own, if given).

    Raises `TokenizeError` if the chat template rejects the pair.
    """
    context = record.prompt if prompt is None else prompt
    return PreferenceExample(
        _tokenize_reply(tokenizer, context, record.chosen, record.source),
        _tokenize_reply(tokenizer, context, record.rejected, record.source),
        record.source,
    )


def _longest(pair: PreferenceExample) -> int:
    return max(len(pair.chosen), len(pair.rejected))


def _shorter_prompts(prompt: Sequence[Message]) -> list[tuple[Message, ...]]:
    """Prompt tails from the longest to the shortest: the system turn is kept and each tail
    starts at a user turn; the last user turn is never cut."""
    system = tuple(prompt[:1]) if prompt and prompt[0].role == "system" else ()
    rest = tuple(prompt[len(system) :])
    starts = [i for i in range(1, len(rest)) if rest[i].role == "user"]
    return [system + rest[start:] for start in starts]


def _truncated_pair(
    tokenizer: PreTrainedTokenizerBase, record: Preference, max_length: int
) -> PreferenceExample | None:
    for prompt in _shorter_prompts(record.prompt):
        pair = tokenize_pair(tokenizer, record, prompt)
        if _longest(pair) <= max_length:
            return pair
    return None


def _overlength_problem(pair: PreferenceExample, max_length: int) -> Problem:
    return Problem(
        "over_length",
        pair.source.file,
        pair.source.line,
        None,
        f"chosen {len(pair.chosen)} and rejected {len(pair.rejected)} tokens; the longer is "
        f"more than data.max_length={max_length}.",
        "Raise data.max_length, shorten the pair, or set data.on_overlength to drop or "
        "truncate_prompt.",
    )


def tokenize_preferences(
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[Preference],
    *,
    max_length: int,
    on_overlength: str = "drop",
) -> PreferenceOutcome:
    """Tokenize every pair with loss on the replies only; nothing is dropped silently.

    Raises `TokenizeError` listing every pair the template cannot render and, with
    ``on_overlength="error"``, every pair whose longer sequence exceeds ``max_length``.
    """
    if on_overlength not in OVERLENGTH_POLICIES:
        raise ValueError(
            f"on_overlength must be one of {OVERLENGTH_POLICIES}, got {on_overlength!r}"
        )
    outcome = PreferenceOutcome(examples=[], dropped=[])
    problems: list[Problem] = []
    for record in records:
        try:
            pair: PreferenceExample | None = tokenize_pair(tokenizer, record)
            if _longest(pair) > max_length:
                if on_overlength == "error":
                    problems.append(_overlength_problem(pair, max_length))
                    continue
                pair = (
                    _truncated_pair(tokenizer, record, max_length)
                    if on_overlength == "truncate_prompt"
                    else None
                )
        except TokenizeError as error:
            problems.extend(error.problems)
            continue
        if pair is None:
            outcome.dropped.append(("over_length", record.source))
        elif pair.chosen.trained_tokens == 0 or pair.rejected.trained_tokens == 0:
            outcome.dropped.append(("no_trainable_tokens", record.source))
        else:
            outcome.examples.append(pair)
    if problems:
        raise TokenizeError(problems)
    return outcome
