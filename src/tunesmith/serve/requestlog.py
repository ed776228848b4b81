"""The request log: every answered chat request as one JSONL line, rotated by size.

A line is a chat training record (``{"messages": [..., {"role": "assistant", ...}]}``,
what ``tunesmith train --data`` reads) plus what monitoring needs: the model, the
answer, when, how long, how many tokens. It feeds the drift monitor and, once the
answers are checked or corrected, the next training run. Off unless
``--log-requests DIR`` is given: prompts may hold personal data.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class RequestLog:
    """Appends to ``DIR/requests.jsonl``; past ``max_bytes`` it is renamed with a timestamp."""

    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.path = directory / "requests.jsonl"
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)

    def write(
        self,
        *,
        model: str,
        messages: list[dict[str, str]],
        answer: str,
        latency_s: float,
        prompt_tokens: int,
        completion_tokens: int,
        finish_reason: str,
    ) -> None:
        record = {
            "messages": [*messages, {"role": "assistant", "content": answer}],
            "model": model,
            "answer": answer,
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "latency_s": round(latency_s, 4),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "finish_reason": finish_reason,
        }
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            if self.path.exists() and self.path.stat().st_size + len(line) > self.max_bytes:
                self._rotate()
            with self.path.open("a", encoding="utf-8") as stream:
                stream.write(line)

    def _rotate(self) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        target = self.directory / f"requests.{stamp}.{time.monotonic_ns() % 10**6:06d}.jsonl"
        self.path.rename(target)
