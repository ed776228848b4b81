"""Windows of live inputs, by count (``--window 500``) or by time (``--window 1h``).

Count windows are consecutive blocks in file order; a last block smaller than
`MIN_WINDOW` joins the one before it. Time windows cut the log at fixed intervals
from its first timestamp; intervals holding fewer than `MIN_WINDOW` inputs are listed
in the timeline but not tested (too few inputs to say anything).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from tunesmith.monitor.errors import MonitorError
from tunesmith.monitor.inputs import LiveInputs

MIN_WINDOW = 20
DEFAULT_WINDOW = 500
_DURATION = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@dataclass
class Window:
    index: int
    positions: np.ndarray
    """Positions of the window's inputs in the live file (0-based)."""
    start: datetime | None = None
    end: datetime | None = None

    @property
    def tested(self) -> bool:
        return len(self.positions) >= MIN_WINDOW


def parse_window(value: str | None) -> int | timedelta | None:
    """``--window``: a count (``500``) or a duration (``30m``, ``1h``, ``1d``)."""
    if value is None:
        return None
    text = value.strip().lower()
    if text.isdigit():
        count = int(text)
        if count < MIN_WINDOW:
            raise MonitorError(
                f"--window {value}: a window needs at least {MIN_WINDOW} inputs for its tests "
                f"to mean anything. Fix: pass --window {MIN_WINDOW} or more."
            )
        return count
    match = _DURATION.match(text)
    if not match or int(match.group(1)) == 0:
        raise MonitorError(
            f"--window {value!r} is neither a count nor a duration. Fix: pass e.g. --window 500 "
            "(inputs per window) or --window 1h (s, m, h or d)."
        )
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def count_windows(total: int, size: int, file: str) -> list[Window]:
    if size > total:
        raise MonitorError(
            f"--window {size} is larger than the input: {file} holds {total} input(s). "
            f"Fix: pass --window {max(MIN_WINDOW, total)} or less, or monitor a longer log."
        )
    starts = list(range(0, total, size))
    if len(starts) > 1 and total - starts[-1] < MIN_WINDOW:
        starts.pop()
    bounds = [*starts[1:], total]
    return [
        Window(i, np.arange(start, end))
        for i, (start, end) in enumerate(zip(starts, bounds, strict=True))
    ]


def time_windows(inputs: LiveInputs, width: timedelta) -> list[Window]:
    missing = [
        line for line, stamp in zip(inputs.lines, inputs.timestamps, strict=True) if stamp is None
    ]
    if missing:
        raise MonitorError(
            f"{inputs.file}:{missing[0]}: windows by time need a timestamp on every input and "
            "this line has none. Fix: pass the request log, or a count such as --window 500."
        )
    stamps = [s for s in inputs.timestamps if s is not None]
    first = min(stamps)
    slots = np.array([int((s - first) / width) for s in stamps])
    windows = []
    for i, slot in enumerate(range(int(slots.max()) + 1)):
        start = first + slot * width
        windows.append(Window(i, np.flatnonzero(slots == slot), start, start + width))
    if not any(w.tested for w in windows):
        raise MonitorError(
            f"--window {width}: no interval of {inputs.file} holds {MIN_WINDOW} inputs. "
            "Fix: pass a longer duration or a count."
        )
    return windows


def make_windows(inputs: LiveInputs, window: int | timedelta | None, largest: int) -> list[Window]:
    """The windows to test; ``largest`` is the most the calibration pool can match."""
    if isinstance(window, timedelta):
        return time_windows(inputs, window)
    if window is None:
        window = min(DEFAULT_WINDOW, len(inputs), largest)
        if window < MIN_WINDOW:
            raise MonitorError(
                f"{inputs.file} holds {len(inputs)} input(s); the monitor needs at least "
                f"{MIN_WINDOW}. Fix: wait for more traffic or pass a longer log."
            )
    if window > largest:
        raise MonitorError(
            f"--window {window} is larger than the calibration half of the run's training "
            f"inputs ({largest}), which the null windows are drawn from. Fix: pass --window "
            f"{largest} or less."
        )
    return count_windows(len(inputs), window, inputs.file)
