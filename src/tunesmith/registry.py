"""One kind of registry for the parts that plug in by name (methods, objectives).

Each part's file ends with one registration; the registry checks that the settings model
the part brings names the part (the run config's unions are keyed on that name), that no
name is taken twice, and answers an unknown name with the available ones.
"""

from __future__ import annotations

import difflib
from typing import Generic, TypeVar

from pydantic import BaseModel

from tunesmith.errors import TunesmithError

Entry = TypeVar("Entry")


class Registry(Generic[Entry]):
    """Entries of one kind by name; ``kind`` names them in messages, ``error`` is raised
    for an unknown name."""

    def __init__(self, kind: str, error: type[TunesmithError]) -> None:
        self._kind = kind
        self._error = error
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, entry: Entry, settings: type[BaseModel]) -> Entry:
        declared = settings.model_fields["name"].default
        if declared != name:
            raise TypeError(
                f"{settings.__name__} names {declared!r}, not the {self._kind} {name!r}"
            )
        if name in self._entries:
            raise TypeError(f"{self._kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise self._error(
                f"{self._kind} {name!r} is not registered{hint}; available: "
                f"{', '.join(sorted(self._entries))}."
            ) from None

    def all(self) -> dict[str, Entry]:
        return dict(self._entries)
