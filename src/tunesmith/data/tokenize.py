"""Render records through the model's chat template and mark which tokens carry loss.

The model should learn only what it is meant to say: in a conversation, the
assistant turns with weight 1 (including the end-of-turn token, so it learns to
stop). Spans are found by rendering each prefix of the conversation through the
template and mapping character offsets to tokens, which works for any template
whose render of a prefix is a prefix of the full render (all common ones).

Rendering goes through ``tokenizer.apply_chat_template``, which compiles the
template in jinja2's ``ImmutableSandboxedEnvironment``. Work is linear in the
records: renders are batched (one template call per chunk of conversations), the
rendered texts of a chunk are encoded in one call to the fast tokenizer, and labels
come from a binary search over token offsets. (Only within one conversation does
work grow with turns squared, since each trained turn needs its own prefix render.)
Rendering in worker processes was measured and dropped: on 2 shared cores it ran
0.55-1.5x the speed of one process, since encoding dominates and the fast
tokenizer's own threads are the better way to use spare cores.

A record the template rejects never ends the run at that record: every failing
record is collected and reported together in one `TokenizeError`, as is every
over-long record under ``on_overlength: error``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter

from transformers import PreTrainedTokenizerBase

from tunesmith.data.records import Conversation, Message, Source, Text
from tunesmith.data.validate import SHOWN_PROBLEMS, DataError, Problem

IGNORE_INDEX = -100

CHUNK = 1000
"""Conversations per batched template call and per encode call. Larger chunks save little;
a chunk whose batched render fails is re-rendered one record at a time to name them."""

OVERLENGTH_POLICIES = ("drop", "truncate_prompt", "error")

Span = tuple[int, int]
Rendered = tuple[str, list[Span]]


class TokenizeError(DataError):
    """Records the chat template cannot render, or that break the over-length policy.

    Carries every such record as a `Problem` (codes ``template_render_failed`` and
    ``over_length``), so the user fixes them all in one pass.
    """

    def __str__(self) -> str:
        lines = [f"{len(self.problems)} record(s) cannot be tokenized:"]
        for problem in self.problems[:SHOWN_PROBLEMS]:
            field = f" {problem.field}:" if problem.field else ""
            lines.append(
                f"{problem.location}: [{problem.code}]{field} {problem.message} Fix: {problem.fix}"
            )
        if len(self.problems) > SHOWN_PROBLEMS:
            lines.append(f"… and {len(self.problems) - SHOWN_PROBLEMS} more")
        return "\n".join(lines)


def trained_positions(labels: Sequence[int]) -> list[bool]:
    """Which tokens of an example carry loss: those with a label, except the first, which
    nothing before it in the example predicts (`batching.collate` masks it, packed or not).

    The one place trained tokens are counted: the loss's normaliser (an objective's
    ``units``), the data report, and the count and highlighting of `tunesmith data show`
    all read it, so they cannot disagree (raw text labels its first token too).
    """
    return [position > 0 and label != IGNORE_INDEX for position, label in enumerate(labels)]


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    source: Source

    @property
    def trained_tokens(self) -> int:
        """Tokens whose prediction the loss counts (see `trained_positions`)."""
        return sum(trained_positions(self.labels))

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TokenizeOutcome:
    examples: list[TokenizedExample]
    dropped: list[tuple[str, Source]]


def _as_dicts(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def _render_problem(source: Source, field: str | None, message: str, fix: str) -> Problem:
    return Problem("template_render_failed", source.file, source.line, field, message, fix)


_TEMPLATE_FIX = (
    "Make the conversation fit the model's chat template (e.g. merge a system message into the "
    "first user turn if the template has no system role; alternate user and assistant turns), "
    "or use a model whose template accepts it."
)
_PREFIX_FIX = (
    "Use a chat template whose render of the first turns is a prefix of the whole render "
    "(templates that rewrite earlier turns, e.g. drop past reasoning, are not supported)."
)


def _trained_turns(messages: Sequence[Message]) -> list[int]:
    return [i for i, m in enumerate(messages) if m.role == "assistant" and m.weight != 0]


def _spans_or_problem(
    messages: Sequence[Message],
    source: Source,
    full: str,
    before: Sequence[str],
    through: Sequence[str],
) -> Rendered | Problem:
    """Check prefix stability and turn the prefix renders into trained character spans."""
    spans = []
    for index, head, upto in zip(_trained_turns(messages), before, through, strict=True):
        if not full.startswith(upto) or not upto.startswith(head):
            return _render_problem(
                source,
                f"messages[{index}]",
                f"The chat template renders the conversation up to turn {index} differently "
                "from the start of the whole conversation, so the trained tokens of that turn "
                "cannot be located.",
                _PREFIX_FIX,
            )
        spans.append((len(head), len(upto)))
    return full, spans


def _render_one(tokenizer: PreTrainedTokenizerBase, record: Conversation) -> Rendered | Problem:
    """One conversation, three kinds of render; a template exception becomes a `Problem`."""
    messages = record.messages
    try:
        full = tokenizer.apply_chat_template(_as_dicts(messages), tokenize=False)
        before, through = [], []
        for index in _trained_turns(messages):
            before.append(
                tokenizer.apply_chat_template(
                    _as_dicts(messages[:index]), tokenize=False, add_generation_prompt=True
                )
            )
            last = index == len(messages) - 1
            through.append(
                full
                if last
                else tokenizer.apply_chat_template(_as_dicts(messages[: index + 1]), tokenize=False)
            )
    except Exception as error:  # the template raised: report it against the record
        return _render_problem(
            record.source, None, f"chat template error: {error}".rstrip(".") + ".", _TEMPLATE_FIX
        )
    return _spans_or_problem(messages, record.source, full, before, through)


def _render_chunk(
    tokenizer: PreTrainedTokenizerBase, records: Sequence[Conversation]
) -> list[Rendered | Problem]:
    """Render a chunk in two batched template calls; if the template raises on any record,
    render the chunk one record at a time so each failing record is named."""
    plain: list[list[dict[str, str]]] = []
    prompts: list[list[dict[str, str]]] = []
    for record in records:
        messages = record.messages
        plain.append(_as_dicts(messages))
        for index in _trained_turns(messages):
            prompts.append(_as_dicts(messages[:index]))
            if index != len(messages) - 1:
                plain.append(_as_dicts(messages[: index + 1]))
    try:
        plain_texts = iter(tokenizer.apply_chat_template(plain, tokenize=False))
        prompt_texts = iter(
            tokenizer.apply_chat_template(prompts, tokenize=False, add_generation_prompt=True)
            if prompts
            else []
        )
    except Exception:
        return [_render_one(tokenizer, record) for record in records]
    results: list[Rendered | Problem] = []
    for record in records:
        messages = record.messages
        full = next(plain_texts)
        before, through = [], []
        for index in _trained_turns(messages):
            before.append(next(prompt_texts))
            through.append(full if index == len(messages) - 1 else next(plain_texts))
        results.append(_spans_or_problem(messages, record.source, full, before, through))
    return results


def render_with_spans(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], source: Source
) -> Rendered:
    """The rendered text and the character spans of the trained assistant turns.

    Raises `TokenizeError` (code ``template_render_failed``) if the template rejects the
    conversation or renders its prefixes inconsistently.
    """
    result = _render_one(tokenizer, Conversation(tuple(messages), source))
    if isinstance(result, Problem):
        raise TokenizeError([result])
    return result


def _labels_from_spans(
    input_ids: list[int], offsets: Sequence[Span], spans: Sequence[Span]
) -> tuple[list[int], int]:
    """Labels that copy the ids of tokens starting inside a trained span, and their count.

    Token start offsets never decrease, so each span is a contiguous run of tokens
    found by binary search; the work is O(spans · log tokens) plus one list copy.
    """
    labels = [IGNORE_INDEX] * len(input_ids)
    trained = 0
    start_of = itemgetter(0)
    for start, end in spans:
        first = bisect.bisect_left(offsets, start, key=start_of)
        stop = bisect.bisect_left(offsets, end, lo=first, key=start_of)
        labels[first:stop] = input_ids[first:stop]
        trained += stop - first
    return labels, trained


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> tuple[list, list]:
    encodings = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return encodings["input_ids"], encodings["offset_mapping"]


def _no_template_problem(tokenizer: PreTrainedTokenizerBase, first: Source) -> Problem:
    return Problem(
        "template_render_failed",
        first.file,
        None,
        None,
        f"The tokenizer ({tokenizer.name_or_path or type(tokenizer).__name__}) has no chat "
        "template, so conversations cannot be rendered.",
        "Use a chat/instruct model whose tokenizer_config.json has a chat_template, or train "
        "on raw text records.",
    )


def _overlength_problem(source: Source, length: int, max_length: int) -> Problem:
    return Problem(
        "over_length",
        source.file,
        source.line,
        None,
        f"{length} tokens, more than data.max_length={max_length}.",
        "Raise data.max_length, shorten the example, or set data.on_overlength to drop or "
        "truncate_prompt.",
    )


def _tokenize_chunk(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Conversation],
    max_length: int,
    on_overlength: str,
) -> tuple[TokenizeOutcome, list[Problem]]:
    """Render, encode (one batched call) and mask one chunk; problems are returned, not raised."""
    rendered = _render_chunk(tokenizer, conversations)
    problems = [result for result in rendered if isinstance(result, Problem)]
    good = [
        (record, result)
        for record, result in zip(conversations, rendered, strict=True)
        if not isinstance(result, Problem)
    ]
    ids_list, offsets_list = (
        _encode(tokenizer, [text for _, (text, _) in good]) if good else ([], [])
    )
    outcome = TokenizeOutcome(examples=[], dropped=[])
    for (record, (_text, spans)), ids, offsets in zip(good, ids_list, offsets_list, strict=True):
        if len(ids) > max_length:
            if on_overlength == "error":
                problems.append(_overlength_problem(record.source, len(ids), max_length))
                continue
            shorter = (
                _truncate_prompt(tokenizer, record, max_length)
                if on_overlength == "truncate_prompt"
                else None
            )
            if shorter is None:
                outcome.dropped.append(("over_length", record.source))
                continue
            example, trained = shorter
        else:
            labels, trained = _labels_from_spans(ids, offsets, spans)
            example = TokenizedExample(ids, labels, record.source)
        if trained == 0:
            outcome.dropped.append(("no_trainable_tokens", record.source))
            continue
        outcome.examples.append(example)
    return outcome, problems


def tokenize_conversations(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Conversation],
    *,
    max_length: int,
    on_overlength: str = "drop",
) -> TokenizeOutcome:
    """Tokenize with loss masks, applying the over-length policy. Nothing is dropped silently:
    each dropped record comes back with its reason.

    Raises `TokenizeError` listing every record the template cannot render and, with
    ``on_overlength="error"``, every record over ``max_length``.
    """
    if on_overlength not in OVERLENGTH_POLICIES:
        raise ValueError(
            f"on_overlength must be one of {OVERLENGTH_POLICIES}, got {on_overlength!r}"
        )
    if conversations and not tokenizer.chat_template:
        raise TokenizeError([_no_template_problem(tokenizer, conversations[0].source)])
    parts = [
        _tokenize_chunk(tokenizer, conversations[i : i + CHUNK], max_length, on_overlength)
        for i in range(0, len(conversations), CHUNK)
    ]
    outcome = TokenizeOutcome(examples=[], dropped=[])
    problems: list[Problem] = []
    for part, part_problems in parts:
        outcome.examples.extend(part.examples)
        outcome.dropped.extend(part.dropped)
        problems.extend(part_problems)
    if problems:
        raise TokenizeError(problems)
    return outcome


def _truncate_prompt(
    tokenizer: PreTrainedTokenizerBase, record: Conversation, max_length: int
) -> tuple[TokenizedExample, int] | None:
    """Keep the system turn and the longest tail of the conversation, starting at a user turn,
    that fits; the final exchange is never cut. None if even the final exchange is too long.

    Shorter tails render shorter, so the longest fitting tail is found by binary search
    (O(log turns) renders, not one per dropped turn).
    """
    messages = record.messages
    system = messages[:1] if messages and messages[0].role == "system" else ()
    rest = messages[len(system) :]
    starts = [i for i in range(1, len(rest)) if rest[i].role == "user" and i < len(rest) - 1]
    best: tuple[TokenizedExample, int] | None = None
    low, high = 0, len(starts) - 1
    while low <= high:
        middle = (low + high) // 2
        shorter = Conversation(system + rest[starts[middle] :], record.source, record.label)
        result = _render_one(tokenizer, shorter)
        fits = False
        if not isinstance(result, Problem):
            text, spans = result
            (ids,), (offsets,) = _encode(tokenizer, [text])
            if len(ids) <= max_length:
                labels, trained = _labels_from_spans(ids, offsets, spans)
                best = (TokenizedExample(ids, labels, record.source), trained)
                fits = True
        if fits:
            high = middle - 1
        else:
            low = middle + 1
    return best


def tokenize_texts(
    tokenizer: PreTrainedTokenizerBase, texts: Iterable[Text], *, max_length: int
) -> list[TokenizedExample]:
    """Continued pretraining: every token is trained; documents are cut into max_length blocks
    (nothing is dropped: a long document becomes several examples)."""
    records = list(texts)
    if not records:
        return []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    encoded = tokenizer([r.text for r in records], add_special_tokens=False)["input_ids"]
    examples = []
    for record, ids in zip(records, encoded, strict=True):
        ids = ids + eos
        for start in range(0, len(ids), max_length):
            block = ids[start : start + max_length]
            if len(block) > 1:
                examples.append(TokenizedExample(block, list(block), record.source))
    return examples


def trained_pieces(
    tokenizer: PreTrainedTokenizerBase, example: TokenizedExample
) -> list[tuple[str, bool]]:
    """The example decoded as runs of text, each marked True if its tokens carry loss."""
    pieces: list[tuple[str, bool]] = []
    run: list[int] = []
    run_trained = False
    for token, trained in zip(example.input_ids, trained_positions(example.labels), strict=True):
        if run and trained != run_trained:
            pieces.append((tokenizer.decode(run), run_trained))
            run = []
        run.append(token)
        run_trained = trained
    if run:
        pieces.append((tokenizer.decode(run), run_trained))
    return pieces
