"""Helpers for the data-stage tests: write rows in any file type, make distinct valid rows."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def shared_file(relative: str) -> Path:
    """A file of the full datasets in ../shared/data, or a skip that says what is missing
    (CI checkouts have only the slices in tests/fixtures)."""
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"{path} is absent: the full dataset lives outside the repo")
    return path


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` as the file name asks: .jsonl, .json, .csv, .tsv, .parquet (+ .gz)."""
    name = path.name.removesuffix(".gz")
    if name.endswith(".jsonl"):
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    elif name.endswith(".json"):
        data = json.dumps(rows, indent=2).encode()
    elif name.endswith((".csv", ".tsv")):
        buffer = io.StringIO(newline="")
        delimiter = "\t" if name.endswith(".tsv") else ","
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
        data = buffer.getvalue().encode()
    elif name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    else:
        raise ValueError(path)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def chat_row(i: int) -> dict[str, Any]:
    """A valid, distinct chat example (distinct enough that no two are near-duplicates)."""
    words = " ".join(f"w{i}x{k}" for k in range(8))
    return {
        "messages": [
            {"role": "user", "content": f"Question {i}: {words}?"},
            {"role": "assistant", "content": f"Answer {i} about {words}."},
        ]
    }


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, list[dict[str, Any]]], Path]:
    return lambda name, rows: write_rows(tmp_path / name, rows)


@pytest.fixture
def write_lines(tmp_path: Path) -> Callable[[str, list[str]], Path]:
    def _write(name: str, lines: list[str]) -> Path:
        path = tmp_path / name
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def chat() -> Callable[[int], dict[str, Any]]:
    return chat_row


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES
