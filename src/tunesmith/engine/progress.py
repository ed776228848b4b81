"""What a training run shows while it works: a live bar on a terminal, JSON lines otherwise."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TrainingProgress:
    """A progress bar with loss, tokens/s and ETA; plain JSON lines when stdout is not a TTY."""

    def __init__(self, total_steps: int, *, stream: TextIO | None = None, enabled: bool = True):
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.interactive = enabled and self.stream.isatty()
        self.total_steps = total_steps
        self._progress: Progress | None = None
        self._task = None
        self.console = Console(file=self.stream, force_terminal=self.interactive or None)

    def __enter__(self) -> TrainingProgress:
        if self.interactive:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=self.total_steps, status="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance_to(self, step: int, fields: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            status = "  ".join(
                f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                for key, value in fields.items()
            )
            self._progress.update(self._task, completed=step, status=status)
        else:
            record = {"event": "step", "step": step, "total_steps": self.total_steps, **fields}
            self.stream.write(json.dumps(record) + "\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(text)
        elif self.interactive:
            self.console.print(text)
        else:
            self.stream.write(json.dumps({"event": "message", "text": text, "time": time.time()}))
            self.stream.write("\n")
            self.stream.flush()
