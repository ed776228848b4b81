"""The monitor's user errors: one line that names the file, line or option, and the fix."""

from __future__ import annotations

from tunesmith.errors import TunesmithError


class MonitorError(TunesmithError):
    """Bad live inputs or options for `tunesmith monitor` / `tunesmith retrain` (exit 2)."""


DRIFT_EXIT_CODE = 3
"""What `tunesmith monitor` exits with when the newest window drifted (0: no drift)."""
