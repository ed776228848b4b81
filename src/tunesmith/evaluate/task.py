"""Is this chat data a classification task? Decided from the replies, not the file format.

OpenAI's own fine-tuning recipe for classification is chat data: the label list in the
system prompt and the label as the assistant's reply. Scored as free text (ROUGE-L,
BLEU) such a run says nothing useful, and generating replies is slow. When the final
assistant replies of the *training* data come from a small closed set, every system is
instead scored by ranking the known labels by likelihood, and the metrics are accuracy
and macro-F1, exactly as for ``text`` + ``label`` data.

The rule (`closed_label_set`), on the stripped final assistant reply of each training
conversation:

- at most ``MAX_LABELS`` (50) distinct replies are seen ``MIN_LABEL_COUNT`` (3) times or
  more: those are the labels;
- there are at least two of them (one answer is not a choice);
- together they cover at least ``MIN_COVERAGE`` (95%) of the training conversations,
  so a few stray replies (typos, a rare class) do not hide the task, while free-text
  data, where most replies are unique, never qualifies.

Rare training replies and test references outside the set stay labels of their own
items, so such a test item can only be scored right if its label is known.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

from tunesmith.data.records import Conversation

MAX_LABELS = 50
MIN_LABEL_COUNT = 3
MIN_COVERAGE = 0.95


def final_reply(item: Conversation) -> str | None:
    """The stripped content of the last turn when it is the assistant's, else None."""
    if not item.messages or item.messages[-1].role != "assistant":
        return None
    return item.messages[-1].content.strip()


def closed_label_set(train_items: Sequence[Conversation]) -> list[str] | None:
    """The sorted label set when the training replies form a closed set (see module doc)."""
    replies = [reply for reply in map(final_reply, train_items) if reply]
    if not replies:
        return None
    counts = Counter(replies)
    frequent = [reply for reply, count in counts.items() if count >= MIN_LABEL_COUNT]
    if not 2 <= len(frequent) <= MAX_LABELS:
        return None
    covered = sum(counts[reply] for reply in frequent)
    if covered < MIN_COVERAGE * len(train_items):
        return None
    return sorted(frequent)


def with_reply_labels(items: Sequence[Conversation]) -> list[Conversation]:
    """The items with their final assistant reply as ``label`` (labels already set are kept)."""
    labelled = []
    for item in items:
        reply = final_reply(item)
        if item.label is None and reply is not None:
            item = dataclasses.replace(item, label=reply)
        labelled.append(item)
    return labelled


def as_classification(
    test_items: Sequence[Conversation], train_items: Sequence[Conversation]
) -> tuple[list[Conversation], list[Conversation], bool]:
    """(test, train, is classification): labelled items when the replies form a closed set.

    Data that already carries labels on every test item is classification as it is.
    """
    if test_items and all(item.label is not None for item in test_items):
        return list(test_items), list(train_items), True
    if closed_label_set(train_items) is None:
        return list(test_items), list(train_items), False
    return with_reply_labels(test_items), with_reply_labels(train_items), True
