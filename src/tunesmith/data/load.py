"""`prepare_records`: the one entry point from data files to train/validation/test records.

The trainer and the CLI both call it, so what ``tunesmith data check`` reports
is exactly what training would use. Steps: read every file (all problems
collected), drop rows that are invalid (counted), find exact duplicates (warn,
or drop with ``dedup``) and near-duplicates (on what varies between records,
not a shared system prompt), carve the splits the user did not supply without
splitting a duplicate group or taking more than their fraction, check train
against the evaluation splits for leakage, and fill a `DataReport`. Any
error-level problem raises `DataError` carrying every problem and the report;
warnings stay in the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import DataConfig
from tunesmith.data.formats import read_file
from tunesmith.data.records import Conversation, Record, Source
from tunesmith.data.report import SPLITS, DataReport, FileSummary, Leak, line_spans
from tunesmith.data.split import (
    MinHasher,
    connected_groups,
    content_hash,
    exact_duplicate_groups,
    similar_pairs,
    split_without_leakage,
    varying_shingles,
)
from tunesmith.data.validate import DataError, Problem, check_example_count, has_errors


@dataclass
class PreparedRecords:
    """The records of each split, in input order, and the report that accounts for every row."""

    train: list[Record]
    validation: list[Record]
    test: list[Record]
    report: DataReport


def prepare_records(
    train: Sequence[Path],
    *,
    validation: Sequence[Path] | None = None,
    test: Sequence[Path] | None = None,
    format: str = "auto",
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 42,
    dedup: bool = False,
    min_examples: int = 10,
    columns: Mapping[str, str] | None = None,
) -> PreparedRecords:
    """Read, validate, deduplicate and split the data; raise `DataError` on any error.

    ``split`` gives (train, validation, test) fractions of the training files; only
    the splits without files of their own are carved from them. ``columns`` maps
    our key names to the files' (``{"text": "SMS", "label": "Label"}``).
    """
    _check_fractions(split)
    report = DataReport()
    pools: dict[str, list[Record]] = {name: [] for name in SPLITS}
    given = {"train": list(train), "validation": list(validation or []), "test": list(test or [])}
    for role, paths in given.items():
        for path in paths:
            read = read_file(Path(path), format=format, columns=columns)
            report.files.append(
                FileSummary(
                    read.file, role, read.file_type, read.format, read.rows_in, len(read.records)
                )
            )
            report.problems.extend(read.problems)
            for source in read.invalid:
                report.drop_before_split("invalid", source)
            pools[role].extend(read.records)

    report.problems.extend(_mixed_kinds(pools))
    hashes = {role: _deduplicate(role, pools, report, dedup) for role in SPLITS}
    report.problems.extend(
        check_example_count(len(pools["train"]), [str(p) for p in given["train"]], min_examples)
    )

    everything = [r for role in SPLITS for r in pools[role]]
    flat_hashes = [h for role in SPLITS for h in hashes[role]]
    hasher = MinHasher()
    shingle_sets, report.shared_text = varying_shingles(everything, hasher)
    signatures = hasher.signatures_of(shingle_sets)
    near_pairs = [
        (i, j, similarity)
        for i, j, similarity in similar_pairs(signatures)
        if flat_hashes[i] != flat_hashes[j]
    ]

    carve = [
        name
        for name, fraction in zip(SPLITS[1:], split[1:], strict=True)
        if not given[name] and fraction > 0
    ]
    final = _carve(pools, carve, split, seed, hashes["train"], near_pairs, report)
    report.carved = carve
    report.assign_splits({name: (r.source for r in final[name]) for name in SPLITS})

    _find_leaks(final, everything, near_pairs, report)
    report.check_row_invariant()
    if has_errors(report.problems):
        raise DataError(report.problems, report)
    return PreparedRecords(final["train"], final["validation"], final["test"], report)


def prepare_configured_records(
    data: DataConfig, *, test: Sequence[Path] | None = None
) -> PreparedRecords:
    """`prepare_records` with a run's data settings; every stage derives the same splits.

    ``test`` replaces the configured test files (e.g. `tunesmith eval --test FILE`).
    """
    return prepare_records(
        data.train,
        validation=data.validation,
        test=list(test) if test else data.test,
        format=data.format,
        split=data.split,
        seed=data.seed,
        dedup=data.dedup,
    )


def _check_fractions(split: tuple[float, float, float]) -> None:
    if len(split) != 3 or any(f < 0 or f > 1 for f in split) or not math.isclose(sum(split), 1):
        raise ValueError(f"split must be three fractions in [0, 1] summing to 1, got {split}")


def _mixed_kinds(pools: dict[str, list[Record]]) -> list[Problem]:
    """One training run uses one kind of record; say which files disagree."""
    files_by_kind: dict[str, set[str]] = {}
    for records in pools.values():
        for record in records:
            files_by_kind.setdefault(type(record).__name__, set()).add(record.source.file)
    if len(files_by_kind) <= 1:
        return []
    listing = "; ".join(f"{kind}: {', '.join(sorted(f))}" for kind, f in files_by_kind.items())
    return [
        Problem(
            "mixed_record_kinds",
            ", ".join(sorted(set().union(*files_by_kind.values()))),
            None,
            None,
            f"The files hold different kinds of records ({listing}).",
            "Use files of one kind per run: chat/instruction data, preference pairs, or text.",
        )
    ]


def _deduplicate(
    role: str, pools: dict[str, list[Record]], report: DataReport, dedup: bool
) -> list[str]:
    """Warn about exact duplicates within one split's files; with ``dedup`` keep only the first."""
    records = pools[role]
    hashes = [content_hash(r) for r in records]
    groups = exact_duplicate_groups(hashes)
    for group in groups:
        sources = [records[i].source for i in group]
        report.duplicate_groups.append(sources)
        copies = _listing(sources[1:], sources[0].file)
        action = "dropped (kept the first)" if dedup else "kept"
        report.problems.append(
            Problem(
                "duplicate_example",
                sources[0].file,
                sources[0].line,
                None,
                f"{len(sources) - 1} duplicate(s) of this {role} example at {copies}; {action}.",
                "Remove the copies, or pass --dedup to keep only the first.",
                "warning",
            )
        )
    if dedup and groups:
        drop = {i for group in groups for i in group[1:]}
        for i in sorted(drop):
            report.drop_before_split("duplicate", records[i].source)
        pools[role] = [r for i, r in enumerate(records) if i not in drop]
        hashes = [h for i, h in enumerate(hashes) if i not in drop]
    return hashes


REPLIES_PER_LABEL = 4
"""Final assistant replies that repeat this often on average are labels (a classification set)."""


def stratification_labels(pool: Sequence[Record]) -> tuple[list[str | None], str | None]:
    """What to stratify a carved split by, and its name: the records' labels, else the replies.

    Classification data in chat form (a system prompt naming the labels, the user's
    text, the label as the assistant's reply) has no ``label`` field, but its final
    replies take a few values, each many times: those are the labels. Replies that
    mostly differ (ordinary chat) give no strata.
    """
    if pool and all(isinstance(r, Conversation) and r.label is not None for r in pool):
        return [r.label for r in pool], "label"
    replies = [
        " ".join(r.messages[-1].content.split())
        if isinstance(r, Conversation) and r.messages and r.messages[-1].role == "assistant"
        else None
        for r in pool
    ]
    if pool and None not in replies and len(set(replies)) * REPLIES_PER_LABEL <= len(pool):
        return replies, "assistant reply"
    return [None] * len(pool), None


def _listing(sources: Sequence[Source], file: str, shown: int = 5) -> str:
    """``lines 3, 9 …`` for rows of ``file``, ``other.jsonl:4`` for rows elsewhere."""
    parts = [f"line {s.line}" if s.file == file else str(s) for s in sources[:shown]]
    return ", ".join(parts) + (f" and {len(sources) - shown} more" if len(sources) > shown else "")


def _carve(
    pools: dict[str, list[Record]],
    carve: list[str],
    fractions: tuple[float, float, float],
    seed: int,
    train_hashes: list[str],
    near_pairs: list[tuple[int, int, float]],
    report: DataReport,
) -> dict[str, list[Record]]:
    """Take the missing splits out of the train pool, keeping duplicate groups together."""
    pool = pools["train"]
    n = len(pool)
    inside = [(i, j) for i, j, _ in near_pairs if i < n and j < n]
    exact = [(g[0], k) for g in exact_duplicate_groups(train_hashes) for k in g[1:]]
    groups = connected_groups(n, exact + inside)
    near_members: dict[int, list[int]] = {}
    for i, j in inside:
        near_members.setdefault(groups[i], []).extend((i, j))
    for members in near_members.values():
        sources = [pool[i].source for i in sorted(set(members))]
        report.near_duplicate_groups.append(sources)
        report.problems.append(
            Problem(
                "near_duplicate",
                sources[0].file,
                sources[0].line,
                None,
                f"{len(sources)} near-duplicate training examples at "
                f"{_listing(sources, sources[0].file)}.",
                "Check they are meant to differ; near copies over-weight one example.",
                "warning",
            )
        )
    if not carve:
        return dict(pools)
    wanted = (
        fractions[0],
        fractions[1] if "validation" in carve else 0.0,
        fractions[2] if "test" in carve else 0.0,
    )
    labels, report.stratified_by = stratification_labels(pool)
    indices = split_without_leakage(groups, labels, wanted, seed)
    report.requested_split = {"train": round(1 - wanted[1] - wanted[2], 6)} | {
        name: fraction for name, fraction in zip(SPLITS[1:], wanted[1:], strict=True) if fraction
    }
    report.largest_group = indices.largest_group
    for group in indices.too_large:
        sources = [pool[i].source for i in group]
        report.too_large_groups.append(sources)
        shares = " and ".join(
            f"the {name} share ({round(n * wanted[k + 1])} records)"
            for k, name in enumerate(SPLITS[1:])
            if name in carve
        )
        report.problems.append(
            Problem(
                "group_kept_in_train",
                sources[0].file,
                sources[0].line,
                None,
                f"{len(sources)} records form one group of duplicates or near-duplicates "
                f"({line_spans(sources)}), larger than {shares}; the group stays in train so "
                "that no copy of it is evaluated on.",
                "Check whether these records are near copies of one template; vary or drop "
                "them, or give validation/test files of their own.",
                "warning",
            )
        )
    final = dict(pools)
    final["train"] = [pool[i] for i in indices.train]
    if "validation" in carve:
        final["validation"] = [pool[i] for i in indices.validation]
    if "test" in carve:
        final["test"] = [pool[i] for i in indices.test]
    return final


def _find_leaks(
    final: dict[str, list[Record]],
    everything: list[Record],
    near_pairs: list[tuple[int, int, float]],
    report: DataReport,
) -> None:
    """Exact train/eval overlap is an error naming both rows; a near-duplicate is a warning."""
    split_of: dict[Source, str] = {r.source: name for name in SPLITS for r in final[name]}
    train_by_hash: dict[str, Source] = {}
    for record in final["train"]:
        train_by_hash.setdefault(content_hash(record), record.source)
    for name in SPLITS[1:]:
        for record in final[name]:
            twin = train_by_hash.get(content_hash(record))
            if twin is None:
                continue
            report.leaks.append(Leak("exact", name, twin, record.source, 1.0))
            report.problems.append(
                Problem(
                    "train_eval_overlap",
                    record.source.file,
                    record.source.line,
                    None,
                    f"This {name} example is also in the training data at {twin}.",
                    f"Remove it from {twin.file} or from {record.source.file}: "
                    "an example seen in training inflates the evaluation.",
                )
            )
    for i, j, similarity in near_pairs:
        a, b = everything[i].source, everything[j].source
        split_a, split_b = split_of.get(a), split_of.get(b)
        if "train" not in (split_a, split_b) or split_a == split_b or None in (split_a, split_b):
            continue
        train_source, other = (a, b) if split_a == "train" else (b, a)
        other_split = split_b if split_a == "train" else split_a
        report.leaks.append(Leak("near", other_split, train_source, other, similarity))
        report.problems.append(
            Problem(
                "train_eval_near_duplicate",
                other.file,
                other.line,
                None,
                f"This {other_split} example nearly duplicates training example {train_source} "
                f"(estimated similarity {similarity:.2f}).",
                "Remove or rewrite one of them so the evaluation measures generalisation.",
                "warning",
            )
        )
