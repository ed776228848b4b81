"""llama.cpp as the consumer that proves an exported GGUF: the real runtime, through its
Python binding (PyPI `llama-cpp-python`, compiled once by pip; optional for users)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunesmith.export.errors import ExportError

INSTALL_HINT = "pip install llama-cpp-python (pip builds llama.cpp once, ~5 minutes)"


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class LlamaRuntime:
    """One loaded GGUF (and optional GGUF LoRA) answering greedily, with its logits."""

    model: object

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        return list(self.model.tokenize(text.encode(), add_bos=add_bos, special=True))

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Next-token logits after every position of ``ids`` (rows aligned with ``ids``)."""
        self.model.reset()
        self.model.eval(list(ids))
        return np.array(self.model.scores[: len(ids)], dtype=np.float32)

    def greedy(self, ids: Sequence[int], max_tokens: int, stop_ids: Sequence[int]) -> list[int]:
        self.model.reset()
        out: list[int] = []
        for token in self.model.generate(list(ids), top_k=1, temp=0.0, reset=True):
            if token in stop_ids or len(out) >= max_tokens:
                break
            out.append(token)
        return out

    def greedy_timed(
        self, ids: Sequence[int], max_tokens: int, stop_ids: Sequence[int]
    ) -> tuple[list[int], float]:
        start = time.perf_counter()
        out = self.greedy(ids, max_tokens, stop_ids)
        return out, time.perf_counter() - start


@contextlib.contextmanager
def load_gguf(path: Path, *, lora: Path | None = None, n_ctx: int = 1024) -> Iterator[LlamaRuntime]:
    try:
        from llama_cpp import Llama
    except ImportError:
        raise ExportError(f"verifying a GGUF needs llama.cpp: {INSTALL_HINT}.") from None
    threads = max(1, min(os.cpu_count() or 1, 8))
    llm = Llama(
        str(path),
        lora_path=str(lora) if lora else None,
        n_ctx=n_ctx,
        logits_all=True,
        verbose=False,
        n_threads=threads,
        seed=0,
    )
    try:
        yield LlamaRuntime(llm)
    finally:
        llm.close()
