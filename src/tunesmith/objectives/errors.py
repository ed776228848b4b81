"""The error every objective raises when it cannot run as configured."""

from __future__ import annotations

from tunesmith.errors import TunesmithError


class ObjectiveError(TunesmithError):
    """An objective that is unknown or cannot run with the given data/method; says the fix."""
