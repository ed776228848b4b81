"""The GGUF encodings export offers: which are written here in Python and which go through
llama.cpp's own quantizer (the k-quants, which gguf-py can only read)."""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from tunesmith.export.errors import ExportError

Q8_BLOCK = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]


@dataclass(frozen=True)
class Quant:
    name: str
    file_type: gguf.LlamaFileType
    tensor_type: gguf.GGMLQuantizationType
    """What 2-D weights are written as in Python; k-quants are written F16, then requantized."""
    llama_cpp_quantizer: bool = False


QUANTS = {
    q.name: q
    for q in (
        Quant("f32", gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
        Quant("f16", gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
        Quant("bf16", gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
        Quant("q8_0", gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
        Quant("q4_k_m", gguf.LlamaFileType.MOSTLY_Q4_K_M, gguf.GGMLQuantizationType.F16, True),
        Quant("q5_k_m", gguf.LlamaFileType.MOSTLY_Q5_K_M, gguf.GGMLQuantizationType.F16, True),
        Quant("q6_k", gguf.LlamaFileType.MOSTLY_Q6_K, gguf.GGMLQuantizationType.F16, True),
    )
}


def get_quant(name: str) -> Quant:
    key = name.lower()
    if key in QUANTS:
        return QUANTS[key]
    close = difflib.get_close_matches(key, QUANTS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ExportError(f"unknown quant {name!r}{hint}; use one of {', '.join(QUANTS)}.")


def encode(array: np.ndarray, quant: Quant) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """One tensor in the quant's type; vectors (norms) stay F32 as llama.cpp expects, and a
    weight whose rows do not split into Q8_0 blocks falls back to F16."""
    data = np.ascontiguousarray(array, dtype=np.float32)
    kind = quant.tensor_type
    if data.ndim < 2 or kind == gguf.GGMLQuantizationType.F32:
        return data, gguf.GGMLQuantizationType.F32
    if kind == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16), kind
    if kind == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % Q8_BLOCK:
        return data.astype(np.float16), gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(data, kind), kind


def requantize_with_llama_cpp(source: Path, target: Path, quant: Quant) -> str | None:
    """llama.cpp's quantizer, in-process through llama-cpp-python (compiled once by pip at
    install time; nothing is cloned or compiled here)."""
    try:
        import llama_cpp
    except ImportError:
        raise ExportError(
            f"--quant {quant.name} needs llama.cpp's quantizer: pip install llama-cpp-python "
            "(builds once, ~5 minutes), or export --quant q8_0 / f16, which need nothing."
        ) from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(quant.file_type)
    with _captured_stderr() as log:
        status = llama_cpp.llama_model_quantize(
            str(source).encode(), str(target).encode(), llama_cpp.byref(params)
        )
        text = log.read_text(errors="replace")
    if status != 0 or not target.is_file():
        raise ExportError(
            f"llama.cpp could not quantize {source} to {quant.name} (status {status}): "
            + " ".join(text.split()[-40:])
        )
    return fallback_summary(text, quant)


def fallback_summary(log: str, quant: Quant) -> str | None:
    """llama.cpp's one line per tensor it could not give the k-quant (rows not a multiple of
    256), folded into one sentence for the summary."""
    fallbacks = re.findall(r"falling back to\s+(\w+)", log)
    if not fallbacks:
        return None
    counts = ", ".join(f"{n} to {kind}" for kind, n in sorted(Counter(fallbacks).items()))
    return (
        f"{quant.name}: {len(fallbacks)} tensors have rows that do not split into 256-wide "
        f"k-quant blocks; llama.cpp wrote them in other types ({counts})."
    )


@contextlib.contextmanager
def _captured_stderr() -> Iterator[Path]:
    """llama.cpp logs to file descriptor 2 (from C, and through llama-cpp-python's callback
    on sys.stderr): keep it for the message and the summary, off the screen."""
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "llama-quantize.log"
        with log.open("ab") as handle, log.open("a", errors="replace") as text:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(handle.fileno(), 2)
            try:
                with contextlib.redirect_stderr(text):
                    yield log
            finally:
                text.flush()
                os.dup2(saved, 2)
                os.close(saved)
