"""Render records through the model's chat template and mark which tokens carry loss.

The model should learn only what it is meant to say: in a conversation, the
assistant turns with weight 1 (including the end-of-turn token, so it learns to
stop). Spans are found by rendering each prefix of the conversation through the
template and mapping character offsets to tokens, which works for any template
whose render of a prefix is a prefix of the full render (all common ones).
Rendering goes through transformers, which uses a sandboxed Jinja environment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from tunesmith.data.records import Conversation, Message, Source, Text

IGNORE_INDEX = -100


class TokenizeError(Exception):
    """A record the chat template cannot render, or that breaks the over-length policy."""

    def __init__(self, source: Source, code: str, message: str) -> None:
        super().__init__(f"{source}: [{code}] {message}")
        self.source = source
        self.code = code


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    source: Source

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TokenizeOutcome:
    examples: list[TokenizedExample]
    dropped: list[tuple[str, Source]]


def _as_dicts(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def render_with_spans(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], source: Source
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of the trained assistant turns."""
    try:
        full = tokenizer.apply_chat_template(_as_dicts(messages), tokenize=False)
        spans = []
        for index, message in enumerate(messages):
            if message.role != "assistant" or message.weight == 0:
                continue
            before = tokenizer.apply_chat_template(
                _as_dicts(messages[:index]), tokenize=False, add_generation_prompt=True
            )
            through = tokenizer.apply_chat_template(
                _as_dicts(messages[: index + 1]), tokenize=False
            )
            if not full.startswith(through) or not through.startswith(before):
                raise TokenizeError(
                    source,
                    "template_not_prefix_stable",
                    f"the chat template renders turn {index} differently in a prefix than in the "
                    "whole conversation, so the trained span cannot be located. Use a template "
                    "whose prefix renders are prefixes of the full render.",
                )
            spans.append((len(before), len(through)))
    except TokenizeError:
        raise
    except Exception as error:  # the template itself raised: report it against the record
        raise TokenizeError(
            source, "template_render_failed", f"chat template error: {error}"
        ) from None
    return full, spans


def _labels_from_spans(
    input_ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]
) -> list[int]:
    labels = [IGNORE_INDEX] * len(input_ids)
    span_index = 0
    for position, (start, end) in enumerate(offsets):
        if end <= start:  # special or empty token: belongs to the span it sits in
            end = start + 1
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        if span_index < len(spans) and spans[span_index][0] <= start < spans[span_index][1]:
            labels[position] = input_ids[position]
    return labels


def tokenize_conversations(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Conversation],
    *,
    max_length: int,
    on_overlength: str = "drop",
) -> TokenizeOutcome:
    """Tokenize with loss masks, applying the over-length policy. Nothing is dropped silently:
    each dropped record comes back with its reason."""
    rendered: list[tuple[Conversation, str, list[tuple[int, int]]]] = []
    for conversation in conversations:
        text, spans = render_with_spans(tokenizer, conversation.messages, conversation.source)
        rendered.append((conversation, text, spans))
    encodings = tokenizer(
        [text for _, text, _ in rendered],
        add_special_tokens=False,
        return_offsets_mapping=True,
    )
    outcome = TokenizeOutcome(examples=[], dropped=[])
    for (conversation, _text, spans), ids, offsets in zip(
        rendered, encodings["input_ids"], encodings["offset_mapping"], strict=True
    ):
        labels = _labels_from_spans(ids, offsets, spans)
        example = TokenizedExample(ids, labels, conversation.source)
        if len(example) > max_length:
            example = _apply_overlength(tokenizer, conversation, example, max_length, on_overlength)
            if example is None:
                outcome.dropped.append(("over_length", conversation.source))
                continue
        if example.trained_tokens == 0:
            outcome.dropped.append(("no_trainable_tokens", conversation.source))
            continue
        outcome.examples.append(example)
    return outcome


def _apply_overlength(
    tokenizer: PreTrainedTokenizerBase,
    conversation: Conversation,
    example: TokenizedExample,
    max_length: int,
    policy: str,
) -> TokenizedExample | None:
    if policy == "error":
        raise TokenizeError(
            conversation.source,
            "over_length",
            f"{len(example)} tokens, more than data.max_length={max_length}. Raise max_length, "
            "shorten the example, or set data.on_overlength to drop or truncate_prompt.",
        )
    if policy == "drop":
        return None
    # truncate_prompt: drop the oldest non-system turns, keeping the final exchange intact.
    messages = list(conversation.messages)
    system = [m for m in messages[:1] if m.role == "system"]
    rest = messages[len(system) :]
    while len(rest) > 2:
        rest = rest[1:]
        while rest and rest[0].role != "user":
            rest = rest[1:]
        shorter = Conversation(tuple(system + rest), conversation.source, conversation.label)
        text, spans = render_with_spans(tokenizer, shorter.messages, shorter.source)
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if len(encoding["input_ids"]) <= max_length:
            labels = _labels_from_spans(encoding["input_ids"], encoding["offset_mapping"], spans)
            return TokenizedExample(encoding["input_ids"], labels, conversation.source)
    return None


def tokenize_texts(
    tokenizer: PreTrainedTokenizerBase, texts: Iterable[Text], *, max_length: int
) -> list[TokenizedExample]:
    """Continued pretraining: every token is trained; documents are cut into max_length blocks
    (nothing is dropped: a long document becomes several examples)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    examples = []
    for record in texts:
        ids = tokenizer(record.text, add_special_tokens=False)["input_ids"] + eos
        for start in range(0, len(ids), max_length):
            block = ids[start : start + max_length]
            if len(block) > 1:
                examples.append(TokenizedExample(block, list(block), record.source))
    return examples


def describe_trained_tokens(
    tokenizer: PreTrainedTokenizerBase,
    example: TokenizedExample,
    mark: Callable[[str, bool], str],
) -> str:
    """Decode an example piece by piece, letting `mark` highlight the pieces that carry loss."""
    pieces: list[str] = []
    run: list[int] = []
    run_trained = False
    for token, label in zip(example.input_ids, example.labels, strict=True):
        trained = label != IGNORE_INDEX
        if run and trained != run_trained:
            pieces.append(mark(tokenizer.decode(run), run_trained))
            run = []
        run.append(token)
        run_trained = trained
    if run:
        pieces.append(mark(tokenizer.decode(run), run_trained))
    return "".join(pieces)
