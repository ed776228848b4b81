"""`retrain_run`: a challenger trained on old + new data, promoted only past the gate.

The steps, in order: carve a test slice from the new labelled data (without splitting
duplicates); pin the champion's own train/validation/test splits as files, so adding
data cannot reshuffle the old test split; write ``<family>-vN`` with the old config
and old + new data (`prepare_records` deduplicates and checks the training rows for
leaks into both test sets, an exact leak being an error); train it from the base model
(``--from base``) or on top of the champion's merged weights (``--from continue``);
compare challenger and champion on the old test split and on the new slice
(`gate.py`); and, if it passes, point ``<family>.promoted.json`` at the challenger —
the file `tunesmith serve` follows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import RunConfig
from tunesmith.data.load import prepare_configured_records, prepare_records
from tunesmith.data.records import Conversation, Message, Preference, Record, Text
from tunesmith.data.split import content_hash
from tunesmith.monitor.errors import MonitorError
from tunesmith.monitor.gate import (
    DEFAULT_MARGIN,
    Slice,
    SliceComparison,
    compare_on_slice,
    gate_decision,
)
from tunesmith.runs import load_trained, read_run_config
from tunesmith.serve.pointer import POINTER_SUFFIX, is_pointer, read_pointer, write_pointer

NEW_TEST_SHARE = 0.25
_VERSION = re.compile(r"^(?P<family>.+)-v(?P<n>\d+)$")


@dataclass
class RetrainResult:
    champion: Path
    challenger: Path
    old_test: SliceComparison
    new_test: SliceComparison
    promoted: bool
    decision: str
    pointer: Path
    gate_path: Path


def family_and_version(name: str) -> tuple[str, int]:
    match = _VERSION.match(name)
    return (match["family"], int(match["n"])) if match else (name, 1)


def next_version_name(output_dir: Path, name: str) -> str:
    """``<family>-vN`` with N one past every version of the family already in ``output_dir``."""
    family, version = family_and_version(name)
    taken = [version]
    if output_dir.is_dir():
        for child in output_dir.iterdir():
            other, n = family_and_version(child.name)
            if other == family and n > 1:
                taken.append(n)
    return f"{family}-v{max(taken) + 1}"


def resolve_champion(run_or_pointer: Path) -> Path:
    """A run directory, or the run a promotion pointer names."""
    return read_pointer(run_or_pointer) if is_pointer(run_or_pointer) else run_or_pointer


def record_row(record: Record) -> dict[str, object]:
    """A canonical record back as a JSONL row tunesmith reads (labels kept as labels)."""
    if isinstance(record, Text):
        return {"text": record.text}
    if isinstance(record, Preference):
        return {
            "prompt": [_message(m) for m in record.prompt],
            "chosen": record.chosen.content,
            "rejected": record.rejected.content,
        }
    roles = [m.role for m in record.messages]
    if record.label is not None and roles == ["user", "assistant"]:
        return {"text": record.messages[0].content, "label": record.label}
    return {"messages": [_message(m) for m in record.messages]}


def _message(message: Message) -> dict[str, object]:
    row: dict[str, object] = {"role": message.role, "content": message.content}
    if message.weight != 1:
        row["weight"] = message.weight
    return row


def _write(path: Path, records: Sequence[Record]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(record_row(r), ensure_ascii=False) + "\n" for r in records]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def challenger_config(
    champion: Path, added: Path, start: str, seed: int, on_progress: Callable[[str], None]
) -> tuple[RunConfig, list[Record], list[Record], list[Record]]:
    """The new version's config (data pinned as files in its ``data/``) and the
    (old train, old test, new test) records."""
    config = read_run_config(champion)
    old = prepare_configured_records(config.data)
    new = prepare_records([added], split=(1 - NEW_TEST_SHARE, 0.0, NEW_TEST_SHARE), seed=seed,
                          min_examples=4)  # fmt: skip
    if not old.test:
        raise MonitorError(
            f"{champion}: the run has no test split to hold the challenger to. Fix: retrain a "
            "run trained with a test fraction in data.split (or data.test files)."
        )
    _refuse_leaks(added, [*new.train, *new.test], old.test)
    name = next_version_name(config.output.dir, config.output.name)
    challenger = config.model_copy(deep=True)
    challenger.output.name = name
    data_dir = challenger.run_dir / "data"
    challenger.data.train = [_write(data_dir / "old_train.jsonl", old.train),
                             _write(data_dir / "new_train.jsonl", new.train)]  # fmt: skip
    challenger.data.validation = (
        [_write(data_dir / "old_validation.jsonl", old.validation)] if old.validation else None
    )
    challenger.data.test = [_write(data_dir / "old_test.jsonl", old.test),
                            _write(data_dir / "new_test.jsonl", new.test)]  # fmt: skip
    challenger.data.format = "auto"
    challenger.eval.enabled = False
    if start == "continue":
        from tunesmith import api

        on_progress(f"merging the champion {champion} to train on top of it")
        challenger.model.name = str(api.merge(champion, challenger.run_dir / "champion-merged"))
    on_progress(
        f"{name}: {len(old.train)} old + {len(new.train)} new training rows; "
        f"tests: {len(old.test)} old, {len(new.test)} new"
    )
    return challenger, old.train, old.test, new.test


def _refuse_leaks(added: Path, new: Sequence[Record], old_test: Sequence[Record]) -> None:
    """New rows equal to a row of the champion's test split: one line, before anything is
    written (near-duplicates are reported as warnings by the challenger's data check)."""
    tested = {content_hash(r): r.source for r in old_test}
    leaks = [(r.source, tested[content_hash(r)]) for r in new if content_hash(r) in tested]
    if leaks:
        (row, test_row), more = leaks[0], len(leaks) - 1
        others = f" ({more} more like it)" if more else ""
        raise MonitorError(
            f"{row}: this new row is also in the champion's test split ({test_row}); training "
            f"on it would inflate the old-test comparison{others}. "
            f"Fix: remove such rows from {added.name}."
        )


def retrain_run(
    run_or_pointer: Path,
    added: Path,
    *,
    start: str = "base",
    margin: float = DEFAULT_MARGIN,
    seed: int = 0,
    on_progress: Callable[[str], None] = lambda _: None,
) -> RetrainResult:
    if start not in ("base", "continue"):
        raise MonitorError(
            f"--from {start!r}: choose base (fresh from the base model) or continue."
        )
    champion = resolve_champion(run_or_pointer)
    config, old_train, old_test, new_test = challenger_config(
        champion, added, start, seed, on_progress
    )
    from tunesmith import api

    on_progress(f"training the challenger {config.run_dir}")
    challenger = api.train(config, show_progress=False).run_dir
    on_progress("comparing challenger and champion on the old test split and the new slice")
    result = _gate(champion, challenger, old_train, old_test, new_test, margin, seed)
    family, _ = family_and_version(config.output.name)
    result.pointer = config.output.dir / f"{family}{POINTER_SUFFIX}"
    if result.promoted or not result.pointer.exists():
        write_pointer(result.pointer, challenger if result.promoted else champion,
                      decision=result.decision)  # fmt: skip
    return result


def _gate(
    champion: Path,
    challenger: Path,
    old_train: list[Record],
    old_test: list[Record],
    new_test: list[Record],
    margin: float,
    seed: int,
) -> RetrainResult:
    train_items = [r for r in old_train if isinstance(r, Conversation)]
    slices = [Slice("old test", _conversations(old_test)), Slice("new", _conversations(new_test))]
    champion_model = load_trained(champion)
    challenger_model = load_trained(challenger)
    old_cmp, new_cmp = (
        compare_on_slice(champion_model, challenger_model, s, train_items, seed) for s in slices
    )
    decision = gate_decision(new_cmp, old_cmp, margin)
    promoted = decision.startswith("promoted")
    gate_path = challenger / "gate.json"
    gate_path.write_text(json.dumps({
        "champion": str(champion), "challenger": str(challenger), "promoted": promoted,
        "decision": decision, "margin": margin,
        "old_test": old_cmp.to_dict(), "new_test": new_cmp.to_dict(),
    }, indent=2), encoding="utf-8")  # fmt: skip
    return RetrainResult(champion, challenger, old_cmp, new_cmp, promoted, decision,
                         Path(), gate_path)  # fmt: skip


def _conversations(records: Sequence[Record]) -> list[Conversation]:
    items = [r for r in records if isinstance(r, Conversation)]
    if len(items) != len(records):
        raise MonitorError(
            "retrain gates chat and classification runs; preference and raw-text runs have "
            "no per-item answers to compare. Fix: compare them with `tunesmith eval`."
        )
    return items
