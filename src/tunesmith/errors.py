"""The one root of every error a user can fix.

Each stage raises its own subclass (ConfigError, DataError, RunError, …) with a
message that names the file, key or value at fault and the fix. Entry points catch
`TunesmithError` in one place: the CLI prints the message (never a traceback) and
exits with ``exit_code``; the HTTP server turns it into a 4xx answer.
"""

from __future__ import annotations

USER_ERROR_EXIT_CODE = 2


class TunesmithError(Exception):
    """A problem the user can fix; ``str(error)`` says what is wrong and what to do."""

    exit_code: int = USER_ERROR_EXIT_CODE
