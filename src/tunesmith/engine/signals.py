"""Turn SIGTERM, SIGINT and SIGUSR1 into a stop request the training loop polls (promise R8).

Schedulers announce the end of a job with a signal and a grace period (SLURM
``#SBATCH --signal=TERM@300`` or ``--signal=USR1@300``, Kubernetes
``terminationGracePeriodSeconds``). The handler here only sets a flag: saving from inside a
signal handler can interleave with a half-done optimizer step or a write already in progress.
The loop polls ``stop.requested`` (all processes agreeing) after every optimizer step, the
only point where a checkpoint is exact, and between the batches of a validation pass; a
validation cut short is marked in the checkpoint and redone first on resume. Then it saves
and exits with ``STOPPED_BY_SIGNAL_EXIT_CODE``: the grace period must cover one optimizer
step and one checkpoint write.

A second signal means "now": default handling comes back at once, so a second Ctrl-C raises
``KeyboardInterrupt`` and a second SIGTERM or SIGUSR1 kills the process as if no handler had
ever been installed.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

STOPPED_BY_SIGNAL_EXIT_CODE = 143
"""Exit code after a signal-requested stop that saved a resumable checkpoint.

128 + SIGTERM, which shells and schedulers read as "terminated"; used for SIGINT and SIGUSR1
too, so a job script can requeue on one value and resume with ``--resume auto``.
"""

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopRequest:
    """Context manager that records the first stop signal instead of dying on it.

    Use in the main thread (Python delivers signals only there)::

        with StopRequest() as stop:
            for micro_step in ...:
                ...
                if stop.requested:
                    break  # finish the optimizer step, save, exit STOPPED_BY_SIGNAL_EXIT_CODE

    The handlers that were installed before are restored on exit (also when a second
    Ctrl-C unwinds the block with ``KeyboardInterrupt``).
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self._signals = signals
        self._previous: dict[signal.Signals, Any] = {}
        self._received: signal.Signals | None = None

    @property
    def requested(self) -> bool:
        """True once any of the signals arrived; the loop should save and stop."""
        return self._received is not None

    @property
    def signal_name(self) -> str | None:
        """Name of the first signal received (``"SIGTERM"``), for the loop's log line."""
        return None if self._received is None else self._received.name

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("StopRequest must be entered in the main thread")
        for signum in self._signals:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._restore_previous()

    def _restore_previous(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._received is None:
            self._received = signal.Signals(signum)
            return
        for installed in self._signals:
            signal.signal(installed, signal.SIG_DFL)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.raise_signal(signum)
