"""`DataReport`: what was read, kept, dropped (and why), split, and found wrong.

The report is the audit trail of the data stage: every row read is either
kept in a split or dropped under a named reason with its `Source`, and
`check_row_invariant` proves it (``rows_in == rows_kept + Σ dropped``).
Later stages add to it: the tokenizer stage calls `add_dropped` for each
over-length record it removes and `set_token_stats` with the lengths it
measured. A carved split that ends up far from the fractions asked for is
flagged (`split_warnings`) with its cause, so a run never trains on a sliver
of its data without saying so. It is written as ``data_report.json`` (plus a length histogram PNG
when token statistics exist) and printed as rich tables.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from tunesmith.data.records import Source
from tunesmith.data.split import SharedText
from tunesmith.data.validate import SHOWN_PROBLEMS, Problem

REPORT_FILE = "data_report.json"
HISTOGRAM_FILE = "token_lengths.png"
SPLITS: tuple[str, ...] = ("train", "validation", "test")
SPLIT_TOLERANCE = 0.03
"""A carved split further than this (3 points) and a record from its asked-for share is flagged."""
SHOWN_SPANS = 6


class RowCountMismatch(RuntimeError):
    """Rows were lost or double counted between reading and training: a bug, never user error."""


@dataclass(frozen=True)
class FileSummary:
    """One input file: its role (train/validation/test), how it was read, rows in and kept."""

    file: str
    role: str
    file_type: str | None
    format: str | None
    rows_in: int
    records: int


@dataclass(frozen=True)
class Leak:
    """A train record that also appears (exactly or nearly) in an evaluation split."""

    kind: str
    split: str
    train: Source
    other: Source
    similarity: float


@dataclass
class DataReport:
    """Counts, drops, duplicates, leakage, split sizes and problems of one data preparation."""

    files: list[FileSummary] = field(default_factory=list)
    dropped: dict[str, list[Source]] = field(default_factory=dict)
    duplicate_groups: list[list[Source]] = field(default_factory=list)
    near_duplicate_groups: list[list[Source]] = field(default_factory=list)
    leaks: list[Leak] = field(default_factory=list)
    split_sizes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    carved: list[str] = field(default_factory=list)
    requested_split: dict[str, float] = field(default_factory=dict)
    stratified_by: str | None = None
    too_large_groups: list[list[Source]] = field(default_factory=list)
    largest_group: int = 0
    shared_text: list[SharedText] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    token_stats: dict[str, Any] | None = None
    _split_of: dict[Source, str] = field(default_factory=dict, repr=False)
    _dropped_after_split: dict[str, Counter[str]] = field(default_factory=dict, repr=False)
    _total_lengths: list[int] = field(default_factory=list, repr=False)

    @property
    def rows_in(self) -> int:
        return sum(f.rows_in for f in self.files)

    @property
    def rows_kept(self) -> int:
        return sum(self.split_sizes.values())

    @property
    def rows_dropped(self) -> int:
        return sum(len(sources) for sources in self.dropped.values())

    def drop_before_split(self, reason: str, source: Source) -> None:
        """Count a row the data stage did not keep (invalid, duplicate)."""
        self.dropped.setdefault(reason, []).append(source)

    def assign_splits(self, splits: dict[str, Iterable[Source]]) -> None:
        """Record which split each kept record went to; sizes follow from it."""
        for name, sources in splits.items():
            count = 0
            for source in sources:
                self._split_of[source] = name
                count += 1
            self.split_sizes[name] = count

    def add_dropped(self, reason: str, source: Source) -> None:
        """Remove one kept record from its split, under ``reason`` (e.g. ``"over_length"``).

        Called by later stages for every record they discard, so the row count
        invariant keeps holding. Dropping a record that is not kept is a bug.
        """
        split = self._split_of.pop(source, None)
        if split is None:
            raise RowCountMismatch(f"{source} is not a kept record, so it cannot be dropped")
        self.split_sizes[split] -= 1
        self.dropped.setdefault(reason, []).append(source)
        self._dropped_after_split.setdefault(split, Counter())[reason] += 1

    def check_row_invariant(self) -> None:
        """Raise `RowCountMismatch` unless every row read is kept or dropped exactly once."""
        if self.rows_in != self.rows_kept + self.rows_dropped:
            reasons = ", ".join(f"{k}={len(v)}" for k, v in self.dropped.items())
            raise RowCountMismatch(
                f"rows_in {self.rows_in} != rows_kept {self.rows_kept} + dropped "
                f"{self.rows_dropped} ({reasons})"
            )

    def set_token_stats(self, total_lengths: Sequence[int], trained_lengths: Sequence[int]) -> None:
        """Summarise per-example token counts (all tokens, and those that carry loss)."""
        if len(total_lengths) != len(trained_lengths):
            raise ValueError("total_lengths and trained_lengths must describe the same examples")
        total = sum(total_lengths)
        self.token_stats = {
            "examples": len(total_lengths),
            "total_tokens": _summary(total_lengths),
            "trained_tokens": _summary(trained_lengths),
            "trained_share": (sum(trained_lengths) / total) if total else 0.0,
        }
        self._total_lengths = list(total_lengths)

    def split_warnings(self) -> list[str]:
        """Why the carved splits are far from the fractions asked for; empty when they are not.

        Judged on the current sizes (after later stages dropped records), over the
        records the carved splits were taken from: a split off by more than
        `SPLIT_TOLERANCE` and more than one record is named with its cause (groups
        too large to move, records dropped after the split, groups kept whole).
        """
        names = [name for name in SPLITS if name in self.requested_split]
        pool = sum(self.split_sizes[name] for name in names)
        if not self.carved or not pool:
            return []
        off = []
        for name in names:
            size, wanted = self.split_sizes[name], self.requested_split[name]
            if abs(size / pool - wanted) > SPLIT_TOLERANCE and abs(size - wanted * pool) > 1:
                off.append(f"{name} {size} ({size / pool:.1%}, asked {wanted:.0%})")
        if not off:
            return []
        return [
            f"the {pool} records split from the training data are off the requested fractions: "
            f"{', '.join(off)}. Cause: {'; '.join(self._split_causes())}."
        ]

    def split_problems(self) -> list[Problem]:
        """`split_warnings` as report problems, located at the training files."""
        files = ", ".join(dict.fromkeys(f.file for f in self.files if f.role == "train"))
        fix = (
            "Look at the lines named: near copies of one template can be rewritten or dropped "
            "(--dedup drops exact copies); or give validation/test files of their own."
            if self.too_large_groups
            else "Add data, or give validation/test files of their own."
        )
        return [
            Problem("split_off_target", files, None, None, message, fix, "warning")
            for message in self.split_warnings()
        ]

    def _split_causes(self) -> list[str]:
        causes = []
        if self.too_large_groups:
            sizes = ", ".join(str(len(g)) for g in self.too_large_groups[:SHOWN_SPANS])
            causes.append(
                f"{len(self.too_large_groups)} group(s) of duplicate or near-duplicate records "
                f"too large for an evaluation split stayed in train (sizes {sizes}; first at "
                f"{line_spans(self.too_large_groups[0])})"
            )
        for split, reasons in self._dropped_after_split.items():
            listing = ", ".join(f"{count} {reason}" for reason, count in reasons.items())
            causes.append(
                f"{sum(reasons.values())} {split} record(s) dropped after the split ({listing})"
            )
        if not causes:
            causes.append(
                f"duplicate and near-duplicate groups are kept whole (largest {self.largest_group} "
                "records)"
                if self.largest_group > 1
                else "too few records to split finely"
            )
        return causes

    @property
    def all_problems(self) -> list[Problem]:
        """The split warnings on the current sizes, then the problems found while preparing."""
        return self.split_problems() + self.problems

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.all_problems if p.severity == "warning"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_in": self.rows_in,
            "rows_kept": self.rows_kept,
            "rows_dropped": self.rows_dropped,
            "files": [vars(f) for f in self.files],
            "dropped": {
                reason: {"count": len(sources), "sources": [str(s) for s in sources]}
                for reason, sources in self.dropped.items()
            },
            "duplicates": {
                "exact_groups": [[str(s) for s in g] for g in self.duplicate_groups],
                "exact_extra_copies": sum(len(g) - 1 for g in self.duplicate_groups),
                "near_groups": [[str(s) for s in g] for g in self.near_duplicate_groups],
                "shared_text_left_out": [
                    {
                        "file": shared.file,
                        "records": shared.records,
                        "messages": [_preview(m) for m in shared.messages],
                        "shingles": shared.shingles,
                    }
                    for shared in self.shared_text
                ],
            },
            "leakage": [
                {
                    "kind": leak.kind,
                    "split": leak.split,
                    "train": str(leak.train),
                    "other": str(leak.other),
                    "similarity": round(leak.similarity, 4),
                }
                for leak in self.leaks
            ],
            "splits": dict(self.split_sizes),
            "carved_from_train": list(self.carved),
            "split_requested": dict(self.requested_split),
            "stratified_by": self.stratified_by,
            "groups_kept_in_train": [
                {"size": len(g), "lines": line_spans(g, shown=None)} for g in self.too_large_groups
            ],
            "split_warnings": self.split_warnings(),
            "token_stats": self.token_stats,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "problems": [p.to_dict() for p in self.all_problems],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def write(self, directory: Path) -> Path:
        """Write ``data_report.json`` (and the length histogram if token stats exist)."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / REPORT_FILE
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        if self._total_lengths:
            write_length_histogram(self._total_lengths, directory / HISTOGRAM_FILE)
        return path


def line_spans(sources: Sequence[Source], shown: int | None = SHOWN_SPANS) -> str:
    """``data.jsonl lines 3-9, 12`` for rows of one file (per file when there are several).

    ``shown`` caps the number of ranges listed (``… and N more ranges``); None lists all.
    """
    by_file: dict[str, list[int]] = {}
    for source in sources:
        by_file.setdefault(source.file, []).append(source.line)
    parts = []
    for file, lines in by_file.items():
        spans: list[list[int]] = []
        for line in sorted(set(lines)):
            if spans and line == spans[-1][1] + 1:
                spans[-1][1] = line
            else:
                spans.append([line, line])
        text = [f"{a}-{b}" if b > a else str(a) for a, b in spans[:shown]]
        more = len(spans) - len(text)
        word = "line" if len(lines) == 1 else "lines"
        parts.append(
            f"{file} {word} {', '.join(text)}" + (f" and {more} more ranges" if more else "")
        )
    return "; ".join(parts)


def _preview(text: str, length: int = 80) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def _summary(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "p5": 0, "median": 0, "p95": 0, "max": 0}
    array = np.asarray(values)
    p5, median, p95 = np.percentile(array, [5, 50, 95])
    return {
        "min": int(array.min()),
        "p5": float(p5),
        "median": float(median),
        "p95": float(p95),
        "max": int(array.max()),
    }


def write_length_histogram(lengths: Sequence[int], path: Path) -> Path:
    """A PNG histogram of tokens per example, to see where a max length would cut."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.hist(lengths, bins=min(50, max(1, len(set(lengths)))), color="#4472c4")
    axes.set_xlabel("tokens per example")
    axes.set_ylabel("examples")
    axes.set_title(f"Example lengths (n={len(lengths)})")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def print_report(report: DataReport, console: Console | None = None) -> None:
    """Files, splits, drops, duplicates, leakage and problems as rich tables."""
    console = console or Console()
    files = Table(title="Files read")
    for column in ("file", "role", "type", "format", "rows", "usable"):
        files.add_column(column, justify="right" if column in ("rows", "usable") else "left")
    for f in report.files:
        files.add_row(
            f.file, f.role, f.file_type or "?", f.format or "?", str(f.rows_in), str(f.records)
        )
    console.print(files)

    summary = Table(title="Rows")
    summary.add_column("what")
    summary.add_column("count", justify="right")
    summary.add_row("rows read", str(report.rows_in))
    for name in SPLITS:
        carved = " (carved from train)" if name in report.carved else ""
        summary.add_row(f"kept: {name}{carved}", str(report.split_sizes.get(name, 0)))
    for reason, sources in report.dropped.items():
        shown = ", ".join(str(s) for s in sources[:3]) + (" …" if len(sources) > 3 else "")
        summary.add_row(f"dropped: {reason} ({shown})", str(len(sources)))
    extra = sum(len(g) - 1 for g in report.duplicate_groups)
    summary.add_row("exact duplicate copies", str(extra))
    summary.add_row("near-duplicate groups", str(len(report.near_duplicate_groups)))
    summary.add_row("train/eval overlaps", str(len(report.leaks)))
    console.print(summary)

    if report.token_stats:
        tokens = Table(title="Tokens per example")
        for column in ("", "min", "p5", "median", "p95", "max"):
            tokens.add_column(column, justify="right")
        for key in ("total_tokens", "trained_tokens"):
            stats = report.token_stats[key]
            tokens.add_row(key, *(f"{stats[k]:g}" for k in ("min", "p5", "median", "p95", "max")))
        console.print(tokens)
        console.print(f"share of tokens trained on: {report.token_stats['trained_share']:.1%}")

    if report.all_problems:
        problems = Table(
            title=f"Problems ({len(report.errors)} errors, {len(report.warnings)} warnings)"
        )
        for column in ("where", "severity", "code", "field", "message", "fix"):
            problems.add_column(column, overflow="fold")
        ordered = sorted(report.all_problems, key=lambda p: p.severity != "error")
        for p in ordered[:SHOWN_PROBLEMS]:
            style = "red" if p.severity == "error" else "yellow"
            problems.add_row(
                p.location, f"[{style}]{p.severity}[/]", p.code, p.field or "", p.message, p.fix
            )
        console.print(problems)
        if len(ordered) > SHOWN_PROBLEMS:
            console.print(f"… and {len(ordered) - SHOWN_PROBLEMS} more")
    else:
        console.print("[green]No problems found.[/]")
