"""What an export refuses, in one class, so the CLI exits 2 with the message alone."""

from __future__ import annotations

from tunesmith.errors import TunesmithError


class ExportError(TunesmithError):
    """The run cannot be exported as asked; the message says why and what to do instead."""
