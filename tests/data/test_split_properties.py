"""Property tests of `split_without_leakage` over random group structures and fractions.

The promises: every record lands in exactly one split, no group is divided, an
evaluation split never takes more than ``round(n * fraction)`` records and falls
short of it by less than the smallest group left in train (so by less than one
group); with singleton groups and labels, each label is within one record of its
share.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from tunesmith.data.split import split_without_leakage

SPLIT_NAMES = ("train", "validation", "test")


@st.composite
def group_structures(draw: st.DrawFn) -> tuple[list[int], list[str | None]]:
    """Group ids (the first member's index, as `connected_groups` gives) and labels."""
    sizes = draw(st.lists(st.integers(1, 40), min_size=1, max_size=60))
    sizes += draw(st.lists(st.just(1), max_size=draw(st.integers(0, 200))))
    order = draw(st.permutations(range(len(sizes))))
    labelled = draw(st.booleans())
    names = draw(st.lists(st.sampled_from("abcdef"), min_size=len(sizes), max_size=len(sizes)))
    owner: list[int] = []
    for group in order:
        owner += [group] * sizes[group]
    owner = [owner[i] for i in draw(st.permutations(range(len(owner))))]
    first: dict[int, int] = {}
    groups = [first.setdefault(g, i) for i, g in enumerate(owner)]
    labels = [names[g] if labelled else None for g in owner]
    return groups, labels


fractions = st.tuples(st.floats(0, 0.45), st.floats(0, 0.45)).map(
    lambda vt: (1 - vt[0] - vt[1], vt[0], vt[1])
)


@settings(max_examples=300, deadline=None)
@given(group_structures(), fractions, st.integers(0, 2**32 - 1))
def test_splits_keep_groups_whole_and_stay_within_their_share(structure, wanted, seed):
    groups, labels = structure
    n = len(groups)
    parts = split_without_leakage(groups, labels, wanted, seed)
    where = {}
    for name in SPLIT_NAMES:
        for index in getattr(parts, name):
            assert index not in where
            where[index] = name
    assert sorted(where) == list(range(n))
    homes: dict[int, set[str]] = {}
    for index, group in enumerate(groups):
        homes.setdefault(group, set()).add(where[index])
    assert all(len(h) == 1 for h in homes.values())

    sizes = Counter(groups)
    train_groups = {g for g in sizes if homes[g] == {"train"}}
    for name, fraction in zip(SPLIT_NAMES[1:], wanted[1:], strict=True):
        target, got = round(n * fraction), len(getattr(parts, name))
        assert got <= target
        short = target - got
        assert all(sizes[g] > short for g in train_groups), (name, target, got)
    for group in parts.too_large:
        assert where[group[0]] == "train"
        assert len(group) > max(round(n * f) for f in wanted[1:])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=400),
    st.tuples(st.floats(0, 0.25), st.floats(0, 0.25)),
    st.integers(0, 2**32 - 1),
)
def test_each_label_is_within_one_record_of_its_share(labels, val_test, seed):
    wanted = (1 - sum(val_test), *val_test)
    parts = split_without_leakage(list(range(len(labels))), labels, wanted, seed)
    totals = Counter(labels)
    for name, fraction in zip(SPLIT_NAMES, wanted, strict=True):
        counts = Counter(labels[i] for i in getattr(parts, name))
        for label, total in totals.items():
            assert abs(counts[label] - total * fraction) < 1 + 1e-9, (name, label)
