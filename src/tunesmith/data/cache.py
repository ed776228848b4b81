"""Tokenized splits cached on disk, keyed by everything that decides their content.

Tokenizing is the slowest step of data preparation and it repeats identically on
every run of the same data, so its result is stored once and reused. The key
(`tokenization_fingerprint`) hashes the records (content and sources), the
tokenizer (its full vocabulary/merges/normaliser JSON and special tokens), the
chat template text, the objective, ``max_length``, ``on_overlength`` and the
tunesmith version; a change to any of them is a new key, never a stale hit.

Entries are safetensors files, never pickle: each list-of-ints field of the
examples (nested dataclass fields too, e.g. a preference pair's chosen and
rejected sequences) is one flat integer array plus an offsets array, sources are
a file table plus line numbers, and the schema and the drops (reason, source)
are JSON in the header.
A file is written next to its final name and moved into place with
``os.replace``, so a reader never sees half an entry; an unreadable entry counts
as a miss and is rewritten. Objectives whose examples are not dataclasses of
int lists, ints, a `Source` and such dataclasses bypass the cache (they are
tokenized every time).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file
from transformers import PreTrainedTokenizerBase

import tunesmith
from tunesmith.data.records import Record, Source

if TYPE_CHECKING:
    from tunesmith.objectives import Objective

CACHE_FORMAT = "tunesmith-tokenized-1"
"""Changes whenever the layout of a cache entry changes, so old entries become misses."""


class TokenizedSplit(NamedTuple):
    """One split's examples and drops, and whether they came from the cache (and which file)."""

    examples: list[Any]
    dropped: list[tuple[str, Source]]
    cache_hit: bool
    cache_file: Path | None


def default_tokenized_cache_dir() -> Path:
    """``$TUNESMITH_CACHE/tokenized``, or ``~/.cache/tunesmith/tokenized``."""
    env = os.environ.get("TUNESMITH_CACHE")
    root = Path(env) if env else Path.home() / ".cache" / "tunesmith"
    return root / "tokenized"


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of what decides how the tokenizer turns text into ids and renders chats."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Truncation and padding are per-call state the last ``tokenizer(...)`` call left on
        # the backend, not part of how text becomes ids: keeping them made the key of the
        # same tokenizer change after any call with ``truncation=True``.
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        digest.update(json.dumps(state, sort_keys=True).encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(type(tokenizer).__name__.encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    digest.update(str(getattr(tokenizer, "split_special_tokens", False)).encode())
    return digest.hexdigest()


def _chat_template_text(tokenizer: PreTrainedTokenizerBase) -> str:
    template = tokenizer.chat_template
    if isinstance(template, dict):
        return json.dumps(template, sort_keys=True)
    return template or ""


def records_fingerprint(records: Sequence[Record]) -> str:
    """A hash of every record's type, content and source, in order.

    Records are frozen dataclasses of strings, ints and tuples, whose ``repr`` is
    exact and deterministic; repr escapes newlines, so one per line is unambiguous.
    """
    digest = hashlib.sha256()
    for record in records:
        digest.update(repr(record).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def tokenization_fingerprint(
    objective_name: str,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[Record],
    *,
    max_length: int,
    on_overlength: str,
) -> str:
    """The cache key: changes whenever any input of tokenization changes."""
    parts = {
        "format": CACHE_FORMAT,
        "tunesmith": tunesmith.__version__,
        "objective": objective_name,
        "max_length": max_length,
        "on_overlength": on_overlength,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "chat_template": hashlib.sha256(_chat_template_text(tokenizer).encode()).hexdigest(),
        "records": records_fingerprint(records),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def tokenize_with_cache(
    objective: Objective,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[Record],
    *,
    max_length: int,
    on_overlength: str,
    cache_dir: Path | None = None,
) -> TokenizedSplit:
    """`objective.tokenize`, served from ``cache_dir`` when the same inputs were seen before.

    ``cache_dir`` defaults to `default_tokenized_cache_dir`. Errors (`TokenizeError`)
    are raised as by the objective and nothing is cached for them.
    """
    directory = cache_dir if cache_dir is not None else default_tokenized_cache_dir()
    key = tokenization_fingerprint(
        objective.name, tokenizer, records, max_length=max_length, on_overlength=on_overlength
    )
    path = directory / f"{key}.safetensors"
    cached = load_examples(path, key)
    if cached is not None:
        return TokenizedSplit(cached[0], cached[1], True, path)
    examples, dropped = objective.tokenize(
        tokenizer, records, max_length=max_length, on_overlength=on_overlength
    )
    stored = save_examples(path, key, examples, dropped)
    return TokenizedSplit(examples, dropped, False, path if stored else None)


Schema = dict[str, Any]
"""``{"type": "module:QualName", "fields": {name: "ints" | "int" | "source" | Schema}}``."""


def _schema(value: Any) -> Schema | str | None:
    """How a value is stored: a leaf kind, a nested dataclass schema, or None if unstorable."""
    if isinstance(value, Source):
        return "source"
    if isinstance(value, int) and not isinstance(value, bool):
        return "int"
    if isinstance(value, list) and all(type(v) is int for v in value[:1]):
        return "ints"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {}
        for field in dataclasses.fields(value):
            kind = _schema(getattr(value, field.name))
            if kind is None:
                return None
            fields[field.name] = kind
        cls = type(value)
        return {"type": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    return None


def _leaves(schema: Schema, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """Every leaf as (attribute path, kind), depth first in field order."""
    leaves = []
    for name, kind in schema["fields"].items():
        if isinstance(kind, dict):
            leaves.extend(_leaves(kind, (*prefix, name)))
        else:
            leaves.append(((*prefix, name), kind))
    return leaves


def _int_array(values: Any, count: int) -> np.ndarray:
    array = np.fromiter(values, dtype=np.int64, count=count)
    info = np.iinfo(np.int32)
    if array.size == 0 or (array.min() >= info.min and array.max() <= info.max):
        return array.astype(np.int32)
    return array


def _attribute(value: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        value = getattr(value, name)
    return value


def save_examples(
    path: Path, key: str, examples: Sequence[Any], dropped: Sequence[tuple[str, Source]]
) -> bool:
    """Write one cache entry atomically; False (nothing written) unless the examples are all
    dataclasses of one shape whose fields are int lists, ints, `Source` or such dataclasses."""
    schema = _schema(examples[0]) if examples else {"type": "", "fields": {}}
    if not isinstance(schema, dict) or any(_schema(e) != schema for e in examples[1:]):
        return False
    files: dict[str, int] = {}
    tensors: dict[str, np.ndarray] = {}
    for attribute_path, kind in _leaves(schema):
        name = ".".join(attribute_path)
        values = [_attribute(e, attribute_path) for e in examples]
        if kind == "ints":
            lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            tensors[f"{name}:values"] = _int_array(
                itertools.chain.from_iterable(values), int(offsets[-1])
            )
            tensors[f"{name}:offsets"] = offsets
        elif kind == "int":
            tensors[name] = np.asarray(values, dtype=np.int64)
        else:
            tensors[f"{name}:file"] = np.asarray(
                [files.setdefault(s.file, len(files)) for s in values], dtype=np.int32
            )
            tensors[f"{name}:line"] = np.asarray([s.line for s in values], dtype=np.int64)
    metadata = {
        "format": CACHE_FORMAT,
        "key": key,
        "count": str(len(examples)),
        "schema": json.dumps(schema),
        "files": json.dumps(list(files)),
        "dropped": json.dumps([[reason, s.file, s.line] for reason, s in dropped]),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        save_file(tensors, staging, metadata=metadata)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return True


def _example_class(schema: Schema) -> type:
    """Resolve a stored example type among modules already imported, never importing one:
    a cache file can only name a dataclass the running code already has, with exactly the
    stored fields, and only ints, int lists, `Source` and such dataclasses are passed to it."""
    name = schema["type"]
    module_name, _, qualname = name.partition(":")
    target: Any = sys.modules.get(module_name)
    if target is None:
        raise ValueError(f"example type {name!r} is from a module that is not loaded")
    for part in qualname.split("."):
        target = getattr(target, part)
    if not (isinstance(target, type) and dataclasses.is_dataclass(target)):
        raise ValueError(f"example type {name!r} is not a dataclass")
    if [f.name for f in dataclasses.fields(target)] != list(schema["fields"]):
        raise ValueError(f"example type {name!r} has different fields than the cache entry")
    return target


def _build(schema: Schema, columns: dict[tuple[str, ...], list[Any]], prefix: tuple[str, ...]):
    """A function from row index to the example (or nested field) that ``schema`` describes."""
    cls = _example_class(schema)
    parts = []
    for name, kind in schema["fields"].items():
        path = (*prefix, name)
        if isinstance(kind, dict):
            parts.append((name, _build(kind, columns, path)))
        else:
            parts.append((name, columns[path].__getitem__))
    return lambda row: cls(**{name: part(row) for name, part in parts})


def load_examples(path: Path, key: str) -> tuple[list[Any], list[tuple[str, Source]]] | None:
    """The examples and drops stored under ``key``, or None if absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with safe_open(path, framework="np") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != CACHE_FORMAT or metadata.get("key") != key:
                return None
            # a safe_open handle has keys() but is not iterable
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        count = int(metadata["count"])
        schema: Schema = json.loads(metadata["schema"])
        files: list[str] = json.loads(metadata["files"])
        dropped = [
            (reason, Source(file, line)) for reason, file, line in json.loads(metadata["dropped"])
        ]
        if count == 0:
            return [], dropped
        columns: dict[tuple[str, ...], list[Any]] = {}
        for attribute_path, kind in _leaves(schema):
            name = ".".join(attribute_path)
            if kind == "ints":
                values = arrays[f"{name}:values"].tolist()
                offsets = arrays[f"{name}:offsets"].tolist()
                column = [values[a:b] for a, b in itertools.pairwise(offsets)]
            elif kind == "int":
                column = arrays[name].tolist()
            else:
                lines = arrays[f"{name}:line"].tolist()
                column = [
                    Source(files[f], line)
                    for f, line in zip(arrays[f"{name}:file"].tolist(), lines, strict=True)
                ]
            if len(column) != count:
                return None
            columns[attribute_path] = column
        build = _build(schema, columns, ())
        return [build(row) for row in range(count)], dropped
    except (SafetensorError, OSError, KeyError, ValueError, TypeError, AttributeError):
        return None
