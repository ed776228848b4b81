"""Per-input descriptors: cheap numbers that explain *how* inputs changed.

Length in tokens and the share of tokens never seen in the training inputs use the
run's own tokenizer, so they speak the model's language ("these prompts are twice
as long", "a third of their tokens never occurred in training"). The non-letter
share catches code, numbers and markup; the script is the Unicode script of most
letters (Latin, Cyrillic, CJK, …, "mixed" when none has 80%), a language-free proxy
for the language mix. Output checks read the model's answers: the label for label
tasks, JSON validity for structured outputs, and empty or refusal answers.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

NO_LETTERS = "none"
MIXED = "mixed"
_SCRIPT_MAJORITY = 0.8
_REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry, i|i can(?:no|')t|i cannot|i am unable|i'm unable|"
    r"as an ai\b|i won'?t be able)",
    re.IGNORECASE,
)


def nonletter_share(text: str) -> float:
    """Share of the non-space characters that are not letters."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    return sum(not c.isalpha() for c in chars) / len(chars)


def _script_of(char: str) -> str:
    name = unicodedata.name(char, "")
    first = name.split(" ", 1)[0] if name else "UNKNOWN"
    if first in ("CJK", "HIRAGANA", "KATAKANA"):
        return "CJK"
    return first


def dominant_script(text: str) -> str:
    counts: dict[str, int] = {}
    for char in text:
        if char.isalpha():
            script = _script_of(char)
            counts[script] = counts.get(script, 0) + 1
    if not counts:
        return NO_LETTERS
    script, count = max(counts.items(), key=lambda item: item[1])
    return script if count >= _SCRIPT_MAJORITY * sum(counts.values()) else MIXED


def is_valid_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def is_empty_or_refusal(text: str) -> bool:
    return not text.strip() or bool(_REFUSAL.match(text))


def normalised_label(text: str) -> str:
    return " ".join(text.split()).lower()


class TokenDescriptors:
    """Token counts and unseen-token shares, against a vocabulary of training token ids."""

    def __init__(self, tokenizer: object, batch_size: int = 512) -> None:
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.vocabulary: set[int] = set()

    def _ids(self, texts: Sequence[str]) -> Iterable[list[int]]:
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            yield from self.tokenizer(batch, add_special_tokens=False)["input_ids"]

    def learn(self, texts: Sequence[str]) -> None:
        """Add the token ids of these (reference) texts to the vocabulary."""
        for ids in self._ids(texts):
            self.vocabulary.update(ids)

    def describe(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(length in tokens, share of tokens outside the vocabulary) per text."""
        lengths = np.empty(len(texts), dtype=np.float32)
        unseen = np.empty(len(texts), dtype=np.float32)
        vocabulary = self.vocabulary
        for i, ids in enumerate(self._ids(texts)):
            lengths[i] = len(ids)
            unseen[i] = sum(t not in vocabulary for t in ids) / len(ids) if ids else 0.0
        return lengths, unseen
