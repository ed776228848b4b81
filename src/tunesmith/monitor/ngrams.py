"""The words and word pairs that most set a window apart from the training inputs.

Smoothed log-odds of each uni- and bigram in the window against the reference, kept
only when it occurs in at least `MIN_COUNT` window inputs: a short, readable answer
to "what are people asking now that they did not before?".
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

MIN_COUNT = 3
_WORD = re.compile(r"\w+", re.UNICODE)


def _grams(text: str) -> set[str]:
    words = _WORD.findall(text.lower())
    return {*words, *(f"{a} {b}" for a, b in itertools.pairwise(words))}


def document_counts(texts: Iterable[str]) -> tuple[Counter[str], int]:
    """How many texts contain each gram, and how many texts there were."""
    counts: Counter[str] = Counter()
    total = 0
    for text in texts:
        counts.update(_grams(text))
        total += 1
    return counts, total


def characteristic_ngrams(
    window: Sequence[str], reference: tuple[Counter[str], int], top: int = 15
) -> list[dict[str, object]]:
    """The ``top`` grams most over-represented in the window, with their shares."""
    counts, n_window = document_counts(window)
    ref_counts, n_ref = reference
    scored = []
    for gram, count in counts.items():
        if count < MIN_COUNT:
            continue
        ref = ref_counts.get(gram, 0)
        odds = math.log((count + 0.5) / (n_window - count + 0.5)) - math.log(
            (ref + 0.5) / (n_ref - ref + 0.5)
        )
        scored.append((odds, gram, count / n_window, ref / max(n_ref, 1)))
    scored.sort(reverse=True)
    return [
        {"ngram": gram, "log_odds": round(odds, 3), "window_share": round(w, 4),
         "reference_share": round(r, 4)}
        for odds, gram, w, r in scored[:top] if odds > 0
    ]  # fmt: skip
