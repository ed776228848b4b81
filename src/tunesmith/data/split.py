"""Duplicates, near-duplicates, a leakage-free split, and the train/eval leakage check.

An evaluation is only honest if no evaluation example (or a light edit of
one) was trained on. So:

* exact duplicates are found by a hash of the normalised content
  (case-folded, whitespace collapsed, roles kept);
* near-duplicates by MinHash over word 5-gram shingles with LSH banding, which
  stays linear in the number of records (no all-pairs comparison);
* carved splits keep every duplicate/near-duplicate group on one side, so the
  split itself can never create leakage;
* user-supplied eval files are checked against train: an exact overlap is an
  error, a near-duplicate a warning.

Everything is deterministic for a given seed and input order.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tunesmith.data.records import Conversation, Preference, Record, Text

SHINGLE_WORDS = 5
NUM_PERM = 128
LSH_BANDS = 32
NEAR_DUP_THRESHOLD = 0.7
"""Estimated Jaccard similarity of word 5-gram sets at or above which two records are near-dups."""

_SHINGLE_MIX = np.uint64(1_000_003)
_EMPTY = np.iinfo(np.uint64).max
_MAX_BUCKET_PAIRS = 64
"""LSH buckets larger than this are linked as a star around their first member, not all pairs."""


def normalised_text(record: Record) -> str:
    """The content two records must share to count as the same example."""
    if isinstance(record, Text):
        parts = [record.text]
    elif isinstance(record, Conversation):
        parts = [f"{m.role}: {m.content}" for m in record.messages]
    elif isinstance(record, Preference):
        parts = [f"{m.role}: {m.content}" for m in record.prompt]
        parts += [f"chosen: {record.chosen.content}", f"rejected: {record.rejected.content}"]
    else:
        raise TypeError(f"not a record: {type(record).__name__}")
    return " ".join(" ".join(parts).casefold().split())


def content_hash(record: Record) -> str:
    return hashlib.blake2b(normalised_text(record).encode("utf-8"), digest_size=16).hexdigest()


def exact_duplicate_groups(hashes: Sequence[str]) -> list[list[int]]:
    """Indices sharing a hash, in input order; the first index of each group is the keeper."""
    by_hash: dict[str, list[int]] = defaultdict(list)
    for index, digest in enumerate(hashes):
        by_hash[digest].append(index)
    return [group for group in by_hash.values() if len(group) > 1]


class MinHasher:
    """MinHash signatures of word-shingle sets, computed with numpy in one pass.

    Words are hashed with CRC32 (stable across processes, unlike ``hash``) and
    combined into shingle hashes; permutation ``k`` is the multiply-shift hash
    ``(a_k * x + b_k) >> 32`` on 64-bit words with ``a_k`` odd, drawn from a
    seeded generator, so signatures never depend on the machine or the run.
    """

    def __init__(
        self, num_perm: int = NUM_PERM, shingle_words: int = SHINGLE_WORDS, seed: int = 1
    ) -> None:
        rng = np.random.default_rng(seed)
        high = np.iinfo(np.uint64).max
        self.a = rng.integers(0, high, size=num_perm, dtype=np.uint64, endpoint=True) | 1
        self.b = rng.integers(0, high, size=num_perm, dtype=np.uint64, endpoint=True)
        self.shingle_words = shingle_words

    def shingles(self, text: str) -> np.ndarray:
        """Hashes of the text's word n-grams (the whole text when it is shorter than n words)."""
        words = np.fromiter(map(zlib.crc32, text.encode("utf-8").split()), dtype=np.uint64)
        n = min(self.shingle_words, len(words))
        count = len(words) - n + 1 if n else 0
        acc = np.zeros(count, dtype=np.uint64)
        for offset in range(n):
            acc = acc * _SHINGLE_MIX + words[offset : offset + count]
        return acc

    def signatures(self, texts: Sequence[str], chunk_shingles: int = 1 << 14) -> np.ndarray:
        """(len(texts), num_perm) uint64 matrix; an empty text gets the all-max signature."""
        out = np.full((len(texts), len(self.a)), _EMPTY, dtype=np.uint64)
        start = 0
        while start < len(texts):
            sets, total, stop = [], 0, start
            while stop < len(texts) and (total < chunk_shingles or stop == start):
                sets.append(self.shingles(texts[stop]))
                total += len(sets[-1])
                stop += 1
            lengths = np.array([len(s) for s in sets])
            present = np.nonzero(lengths)[0]
            if len(present):
                flat = np.concatenate([sets[i] for i in present])
                hashed = (np.multiply.outer(flat, self.a) + self.b) >> np.uint64(32)
                offsets = np.concatenate([[0], np.cumsum(lengths[present])[:-1]])
                out[start + present] = np.minimum.reduceat(hashed, offsets, axis=0)
            start = stop
        return out


def similar_pairs(
    signatures: np.ndarray,
    threshold: float = NEAR_DUP_THRESHOLD,
    bands: int = LSH_BANDS,
    *,
    left: np.ndarray | None = None,
) -> list[tuple[int, int, float]]:
    """Pairs (i < j) whose estimated Jaccard is at least ``threshold``, found via LSH banding.

    With ``left`` (a boolean mask) only pairs joining a left row to a right row are kept,
    which is what a train-vs-eval check needs.
    """
    n, num_perm = signatures.shape
    rows = num_perm // bands
    empty = (signatures == _EMPTY).all(axis=1)
    candidates: set[tuple[int, int]] = set()
    for band in range(bands):
        block = np.ascontiguousarray(signatures[:, band * rows : (band + 1) * rows])
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for index in range(n):
            if not empty[index]:
                buckets[block[index].tobytes()].append(index)
        for members in buckets.values():
            if len(members) < 2:
                continue
            if len(members) <= _MAX_BUCKET_PAIRS:
                candidates.update(
                    (members[i], members[j])
                    for i in range(len(members))
                    for j in range(i + 1, len(members))
                )
            else:
                candidates.update((members[0], other) for other in members[1:])
    pairs = []
    for i, j in sorted(candidates):
        if left is not None and left[i] == left[j]:
            continue
        similarity = float(np.mean(signatures[i] == signatures[j]))
        if similarity >= threshold:
            pairs.append((i, j, similarity))
    return pairs


def connected_groups(n: int, pairs: Sequence[tuple[int, int]]) -> list[int]:
    """Union-find: a group id (the smallest member index) for each of ``n`` items."""
    parent = list(range(n))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in pairs:
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return [root(i) for i in range(n)]


@dataclass(frozen=True)
class SplitIndices:
    """Positions (into the pool that was split) of the records in each split."""

    train: list[int]
    validation: list[int]
    test: list[int]


def split_without_leakage(
    groups: Sequence[int],
    labels: Sequence[str | None],
    fractions: tuple[float, float, float],
    seed: int,
) -> SplitIndices:
    """Seeded split that keeps each group whole, stratified by label when every record has one.

    ``fractions`` are (train, validation, test); a zero fraction gives an empty split.
    Within each stratum groups are shuffled, then validation and test are filled up to
    their target sizes and the rest goes to train.
    """
    _, val_frac, test_frac = fractions
    members: dict[int, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    stratify = bool(labels) and all(label is not None for label in labels)
    strata: dict[str | None, list[int]] = defaultdict(list)
    for group in members:
        strata[labels[group] if stratify else None].append(group)

    rng = np.random.default_rng(seed)
    result = SplitIndices([], [], [])
    for key in sorted(strata, key=str):
        stratum = strata[key]
        size = sum(len(members[g]) for g in stratum)
        val_target, test_target = round(size * val_frac), round(size * test_frac)
        train, validation, test = [], [], []
        for position in rng.permutation(len(stratum)):
            group = members[stratum[position]]
            if len(validation) < val_target:
                validation.extend(group)
            elif len(test) < test_target:
                test.extend(group)
            else:
                train.extend(group)
        result.train.extend(train)
        result.validation.extend(validation)
        result.test.extend(test)
    for part in (result.train, result.validation, result.test):
        part.sort()
    return result
