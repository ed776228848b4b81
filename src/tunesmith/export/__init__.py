"""Ship a run: GGUF and GGUF LoRA for llama.cpp, an Ollama Modelfile, HF and vLLM hand-offs,
each written atomically under `RUN_DIR/export/<target>/` and verified after writing."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from pathlib import Path

from tunesmith.export.errors import ExportError
from tunesmith.export.prepare import ExportInputs
from tunesmith.export.quants import Quant, get_quant
from tunesmith.export.result import ExportResult
from tunesmith.export.runtime import INSTALL_HINT, llama_cpp_available
from tunesmith.export.source import open_run

TARGETS = ("gguf", "gguf-lora", "ollama", "hf", "vllm")
DEFAULT_QUANT = {"gguf": "q8_0", "gguf-lora": "f16", "ollama": "q8_0"}
GGUF_TARGETS = ("gguf", "gguf-lora", "ollama")


def check_target(target: str) -> str:
    if target in TARGETS:
        return target
    close = difflib.get_close_matches(target, TARGETS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ExportError(f"unknown export target {target!r}{hint}; use one of {', '.join(TARGETS)}.")


def export_run(
    run_dir: Path,
    target: str,
    *,
    quant: str | Sequence[str] | None = None,
    verify_items: int = 20,
    trust_remote_code: bool = False,
    on_notice: Callable[[str], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Write one target and verify it; ``verify_items=0`` skips the runtime checks."""
    target = check_target(target)
    names = [quant] if isinstance(quant, str) else list(quant or [])
    if names and target not in GGUF_TARGETS:
        raise ExportError(f"--quant applies to {', '.join(GGUF_TARGETS)}, not --to {target}.")
    if len(names) > 1 and target != "gguf":
        raise ExportError(f"--to {target} takes one --quant; several apply to --to gguf only.")
    chosen = [get_quant(name) for name in names or [DEFAULT_QUANT.get(target, "f16")]]
    source = open_run(run_dir)
    notice = on_notice or (lambda _line: None)
    if not source.final_verified:
        notice(
            f"{source.paths.final} has no MANIFEST.json (a run from before manifests): its "
            "bytes cannot be checked against what training wrote."
        )
    if target in GGUF_TARGETS and verify_items and not llama_cpp_available():
        notice(f"llama.cpp is not installed, so the GGUF is not verified: {INSTALL_HINT}.")
        verify_items = 0
    say = on_progress or (lambda _line: None)
    say(f"loading {source.name} (base + final/, checked against its manifest)")
    inputs = ExportInputs.load(source, trust_remote_code=trust_remote_code, say=say)
    for line in inputs.trained.notices:
        notice(line)
    result = _dispatch(inputs, target, chosen, verify_items)
    result.record(source.paths.root / "export")
    return result


def _dispatch(
    inputs: ExportInputs, target: str, quants: list[Quant], verify_items: int
) -> ExportResult:
    if target == "gguf":
        from tunesmith.export.gguf_export import export_gguf

        return export_gguf(inputs, quants, verify_items=verify_items)
    if target == "gguf-lora":
        from tunesmith.export.gguf_lora import export_gguf_lora

        return export_gguf_lora(inputs, quants[0], verify_items=verify_items)
    if target == "ollama":
        from tunesmith.export.ollama import export_ollama

        return export_ollama(inputs, quants[0], verify_items=verify_items)
    if target == "hf":
        from tunesmith.export.hf import export_hf

        return export_hf(inputs, verify_items=verify_items)
    from tunesmith.export.vllm import export_vllm

    return export_vllm(inputs, verify_items=verify_items)
