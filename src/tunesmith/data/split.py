"""Duplicates, near-duplicates, a leakage-free split, and the train/eval leakage check.

An evaluation is only honest if no evaluation example (or a light edit of
one) was trained on. So:

* exact duplicates are found by a hash of the normalised content
  (case-folded, whitespace collapsed, roles kept);
* near-duplicates by MinHash over word 5-gram shingles with LSH banding, which
  stays linear in the number of records (no all-pairs comparison). Only what
  varies between records is shingled: a message, or a shingle, found in most
  records of a file (a shared system prompt, a fixed instruction) says nothing
  about whether two records are copies, and left in it would make every pair
  of short records look alike;
* carved splits keep every duplicate/near-duplicate group on one side, so the
  split itself can never create leakage, and never take more than their
  fraction: a group too large for an evaluation split stays in train;
* user-supplied eval files are checked against train: an exact overlap is an
  error, a near-duplicate a warning.

Everything is deterministic for a given seed and input order.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tunesmith.data.records import Conversation, Preference, Record, Text

SHINGLE_WORDS = 5
NUM_PERM = 128
LSH_BANDS = 32
NEAR_DUP_THRESHOLD = 0.7
"""Estimated Jaccard similarity of word 5-gram sets at or above which two records are near-dups."""

COMMON_SHARE = 0.5
"""A message or shingle in more than this share of a file's records is shared text, not content."""
COMMON_MIN_RECORDS = 10
"""Files with fewer records are too small to tell shared text from a cluster of near copies."""

_SHINGLE_MIX = np.uint64(1_000_003)
_EMPTY = np.iinfo(np.uint64).max
_MAX_BUCKET_PAIRS = 64
"""LSH buckets larger than this are linked as a star around their first member, not all pairs."""


def record_parts(record: Record) -> list[tuple[str, str]]:
    """(role, normalised content) of each part of a record: messages, or the text."""
    if isinstance(record, Text):
        parts = [("text", record.text)]
    elif isinstance(record, Conversation):
        parts = [(m.role, m.content) for m in record.messages]
    elif isinstance(record, Preference):
        parts = [(m.role, m.content) for m in record.prompt]
        parts += [("chosen", record.chosen.content), ("rejected", record.rejected.content)]
    else:
        raise TypeError(f"not a record: {type(record).__name__}")
    return [(role, " ".join(content.casefold().split())) for role, content in parts]


def normalised_text(record: Record) -> str:
    """The content two records must share to count as the same example."""
    if isinstance(record, Text):
        parts = [record.text]
    else:
        parts = [f"{role}: {content}" for role, content in record_parts(record)]
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
        return self.signatures_of([self.shingles(text) for text in texts], chunk_shingles)

    def signatures_of(
        self, shingle_sets: Sequence[np.ndarray], chunk_shingles: int = 1 << 14
    ) -> np.ndarray:
        """Signatures of precomputed shingle-hash sets (`varying_shingles`); empty → all-max."""
        out = np.full((len(shingle_sets), len(self.a)), _EMPTY, dtype=np.uint64)
        start = 0
        while start < len(shingle_sets):
            sets, total, stop = [], 0, start
            while stop < len(shingle_sets) and (total < chunk_shingles or stop == start):
                sets.append(shingle_sets[stop])
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


@dataclass(frozen=True)
class SharedText:
    """What `varying_shingles` left out of one file: messages and shingles most records share."""

    file: str
    records: int
    messages: list[str]
    shingles: int


def varying_shingles(
    records: Sequence[Record], hasher: MinHasher
) -> tuple[list[np.ndarray], list[SharedText]]:
    """Each record's shingle hashes without the text most records of its file share.

    A system prompt that lists the labels, or a fixed instruction, is the same in
    every record; shingled with the rest it outweighs a short user message, so any
    two records look alike. Per file (at least `COMMON_MIN_RECORDS` records), a
    message whose content is in more than `COMMON_SHARE` of the records is left out,
    then any shingle in more than that share of the remaining sets. What one file
    shares is left out of every record, so an evaluation file compares against the
    training data on the same terms. Shingles never span two messages, and carry the
    message's role. Exact duplicates are not judged here: they compare whole records.
    """
    parts = [record_parts(record) for record in records]
    by_file: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        by_file[record.source.file].append(index)
    judged = {file: ix for file, ix in by_file.items() if len(ix) >= COMMON_MIN_RECORDS}

    messages_of: dict[str, set[tuple[str, str]]] = {}
    for file, indices in judged.items():
        counts = Counter(part for i in indices for part in set(parts[i]))
        limit = COMMON_SHARE * len(indices)
        messages_of[file] = {part for part, count in counts.items() if count > limit}
    common_messages = set().union(*messages_of.values())

    sets = []
    for own in parts:
        kept = [
            _role_mixed(hasher.shingles(content), role)
            for role, content in own
            if (role, content) not in common_messages
        ]
        sets.append(np.unique(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.uint64))

    shared: list[SharedText] = []
    frequent_of: list[np.ndarray] = []
    for file, indices in judged.items():
        values, counts = np.unique(np.concatenate([sets[i] for i in indices]), return_counts=True)
        frequent = values[counts > COMMON_SHARE * len(indices)]
        frequent_of.append(frequent)
        messages = sorted(content for _, content in messages_of[file])
        if messages or len(frequent):
            shared.append(SharedText(file, len(indices), messages, len(frequent)))
    if any(len(f) for f in frequent_of):
        drop = np.unique(np.concatenate(frequent_of))
        sets = [s[~np.isin(s, drop)] for s in sets]
    return sets, shared


def _role_mixed(shingles: np.ndarray, role: str) -> np.ndarray:
    """Shingle hashes tied to the role that said them (a user line is not an assistant line)."""
    return shingles * _SHINGLE_MIX + np.uint64(zlib.crc32(role.encode("utf-8")))


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
    """Positions (into the pool that was split) of the records in each split.

    ``too_large`` lists the groups (sorted positions) kept in train because they are
    larger than every evaluation split they could have gone to; ``largest_group`` is
    the size of the largest group, to explain a split that could not be carved finely.
    """

    train: list[int]
    validation: list[int]
    test: list[int]
    too_large: list[list[int]] = field(default_factory=list)
    largest_group: int = 0


def split_without_leakage(
    groups: Sequence[int],
    labels: Sequence[str | None],
    fractions: tuple[float, float, float],
    seed: int,
) -> SplitIndices:
    """Seeded split that keeps each group whole, stratified by label when every record has one.

    ``fractions`` are (train, validation, test); a zero fraction gives an empty split.
    Validation and test get ``round(n * fraction)`` records at most, shared among the
    labels by largest remainder so each label is within one record of its share. Groups
    are shuffled within each label and go to an evaluation split only while they fit
    in what it still lacks (its share of this label plus what earlier labels fell
    short of), then a second pass tops the splits up from any label. So a split never
    takes more than its share, and falls short by less than the smallest group left in
    train: a giant group of near-copies stays in train instead of swallowing the
    evaluation split (and the training data with it).
    """
    _, val_frac, test_frac = fractions
    members: dict[int, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    stratify = bool(labels) and all(label is not None for label in labels)
    strata: dict[str | None, list[int]] = defaultdict(list)
    for group in members:
        strata[labels[group] if stratify else None].append(group)
    keys = sorted(strata, key=str)
    sizes = [sum(len(members[g]) for g in strata[key]) for key in keys]
    rng = np.random.default_rng(seed)
    quotas = _stratum_shares(sizes, val_frac, test_frac, rng)

    placed: list[list[int]] = [[], []]
    counts = [0, 0]
    allowed = [0, 0]
    train_groups: list[int] = []
    for k, key in enumerate(keys):
        allowed = [allowed[split] + quotas[split][k] for split in (0, 1)]
        for position in rng.permutation(len(strata[key])):
            group = strata[key][position]
            size = len(members[group])
            split = next((s for s in (0, 1) if counts[s] + size <= allowed[s]), None)
            if split is None:
                train_groups.append(group)
            else:
                placed[split].append(group)
                counts[split] += size
    for split in (0, 1):
        still_train = []
        for group in train_groups:
            if counts[split] + len(members[group]) <= allowed[split]:
                placed[split].append(group)
                counts[split] += len(members[group])
            else:
                still_train.append(group)
        train_groups = still_train

    shares = [share for share in allowed if share > 0]
    return SplitIndices(
        train=sorted(i for g in train_groups for i in members[g]),
        validation=sorted(i for g in placed[0] for i in members[g]),
        test=sorted(i for g in placed[1] for i in members[g]),
        too_large=sorted(
            sorted(members[g]) for g in train_groups if shares and len(members[g]) > max(shares)
        ),
        largest_group=max((len(m) for m in members.values()), default=0),
    )


def _stratum_shares(
    sizes: Sequence[int], val_frac: float, test_frac: float, rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    """Whole-record validation and test shares per stratum (a controlled rounding).

    Each stratum's validation, test and (what is left) train counts are each within one
    record of their exact share, and the validation and test totals are
    ``round(n * fraction)``: validation is rounded by largest remainder, then test
    within the range that also keeps the stratum's train count within one record.
    """
    train_frac = 1 - val_frac - test_frac
    val_exact = [size * val_frac for size in sizes]
    val = _round_to_total(
        val_exact,
        round(sum(sizes) * val_frac),
        [int(np.floor(x)) for x in val_exact],
        [int(np.ceil(x)) for x in val_exact],
        rng,
    )
    test_exact = [size * test_frac for size in sizes]
    low, high = [], []
    for size, v, x in zip(sizes, val, test_exact, strict=True):
        train_exact = size * train_frac
        low.append(max(int(np.floor(x)), size - v - int(np.ceil(train_exact)), 0))
        high.append(max(low[-1], min(int(np.ceil(x)), size - v - int(np.floor(train_exact)))))
    test = _round_to_total(test_exact, round(sum(sizes) * test_frac), low, high, rng)
    return val, test


def _round_to_total(
    exact: Sequence[float],
    total: int,
    low: Sequence[int],
    high: Sequence[int],
    rng: np.random.Generator,
) -> list[int]:
    """Integers between ``low`` and ``high`` summing to ``total``, nearest ``exact`` first.

    ``high`` is at most one above ``low``. From ``low``, the records still owed go to the
    strata furthest below their exact share (ties in a seeded order). Should the bounds
    not allow the total, it is met anyway, still nearest first.
    """
    shares = list(low)
    tie = rng.permutation(len(exact))

    def nearest_first(candidates: Iterable[int], sign: int) -> list[int]:
        return sorted(candidates, key=lambda k: (sign * (shares[k] - exact[k]), tie[k]))

    owed = total - sum(shares)
    for k in nearest_first(range(len(shares)), 1):
        if owed <= 0:
            break
        if shares[k] < high[k]:
            shares[k] += 1
            owed -= 1
    while owed > 0:
        for k in nearest_first(range(len(shares)), 1)[:owed]:
            shares[k] += 1
        owed = total - sum(shares)
    while owed < 0:
        for k in nearest_first((k for k in range(len(shares)) if shares[k] > 0), -1)[:-owed]:
            shares[k] -= 1
        owed = total - sum(shares)
    return shares
