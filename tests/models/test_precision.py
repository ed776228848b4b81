"""The precision rule: what `auto` picks on this CPU, why, and that the banner's choice is
the one in effect in training's forward passes (a global hook sees the activations)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console
from safetensors.torch import load_file

from tunesmith import api
from tunesmith.config import load_config
from tunesmith.models.precision import (
    NATIVE_BF16_FLAGS,
    PrecisionError,
    cpu_flags,
    resolve_precision,
)

CPU = torch.device("cpu")


def test_auto_follows_the_cpus_native_bf16_flags() -> None:
    flags = cpu_flags()
    if flags is None:
        pytest.skip("this OS does not list CPU flags; the probe decides there")
    chosen = resolve_precision("auto", CPU)
    native = bool(flags & NATIVE_BF16_FLAGS)
    assert chosen.compute == (torch.bfloat16 if native else torch.float32)
    assert chosen.weights == torch.float32  # trainable weights and AdamW state stay fp32
    assert "GFLOP/s" in chosen.reason  # the measured probe is part of the reason
    assert chosen.warning is None


def test_cpu_flags_reads_x86_and_arm_listings(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert cpu_flags(x86) & NATIVE_BF16_FLAGS == {"avx512_bf16"}
    assert cpu_flags(arm) & NATIVE_BF16_FLAGS == {"bf16"}
    assert cpu_flags(tmp_path / "missing") is None


def test_explicit_choices_on_cpu() -> None:
    assert resolve_precision("fp32", CPU).compute == torch.float32
    bf16 = resolve_precision("bf16", CPU)
    assert (bf16.weights, bf16.compute) == (torch.float32, torch.bfloat16)
    if resolve_precision("auto", CPU).compute != torch.bfloat16:
        # the measured matmul figures, and the setting that fixes it
        assert bf16.warning and "GFLOP/s" in bf16.warning and "precision: auto" in bf16.warning
    with pytest.raises(PrecisionError, match=r"train\.precision: auto"):
        resolve_precision("fp16", CPU)


def _train_watching_linears(run_setup, precision: str) -> tuple[str, set[torch.dtype], Path]:
    """Train the tiny LoRA run; return the banner, the dtypes nn.Linear outputs had in
    training forwards, and the run directory."""
    config_path, workdir = run_setup
    config = load_config(
        config_path, [f"output.dir={workdir / precision}", f"train.precision={precision}"]
    )
    seen: set[torch.dtype] = set()

    def record(module: torch.nn.Module, _inputs, output) -> None:
        if isinstance(module, torch.nn.Linear) and module.training and torch.is_grad_enabled():
            seen.add(output.dtype)

    console = Console(record=True, width=400)
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        summary = api.train(config, console=console, show_progress=False)
    finally:
        handle.remove()
    return console.export_text(), seen, summary.run_dir


@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16"])
def test_the_precision_the_banner_prints_is_the_one_in_effect(run_setup, precision: str) -> None:
    banner, seen, run_dir = _train_watching_linears(run_setup, precision)
    expected = resolve_precision(precision, CPU)
    line = next(line for line in banner.splitlines() if line.startswith("precision: "))
    assert line.startswith(f"precision: {expected.name}")
    assert expected.reason in line
    assert seen == {expected.compute}
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert written["train"]["precision"] == expected.name  # the choice, not 'auto'
    adapter = load_file(run_dir / "final" / "adapter_model.safetensors")
    assert {tensor.dtype for tensor in adapter.values()} == {torch.float32}
