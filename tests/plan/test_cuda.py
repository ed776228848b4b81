"""On a CUDA machine: bf16 training, QLoRA on bitsandbytes' CUDA kernels, and the plan
against `torch.cuda.max_memory_allocated`. Skipped without a GPU (CI); run by
`benchmarks/gpu_check.sh`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tunesmith.cli import app

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
runner = CliRunner()


def _train(config: Path, tmp: Path, *extra: str) -> dict:
    result = runner.invoke(app, ["train", str(config), "--no-eval", "--set", "train.device=cuda",
                                 "--set", f"output.dir={tmp / 'runs'}", *extra])  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads((tmp / "runs" / "resume" / "summary.json").read_text())


def test_bf16_training_on_cuda_records_max_memory_allocated(run_setup: tuple[Path, Path]) -> None:
    config, tmp = run_setup
    summary = _train(config, tmp)
    assert summary["peak_memory_source"] == "cuda max_memory_allocated"
    assert summary["val_loss_after"] < summary["val_loss_before"]
    config_text = (tmp / "runs" / "resume" / "config.yaml").read_text()
    assert "precision: bf16" in config_text


def test_qlora_trains_on_bitsandbytes_cuda_kernels(run_setup: tuple[Path, Path]) -> None:
    config, tmp = run_setup
    summary = _train(config, tmp, "--set", "method.name=qlora")
    assert summary["val_loss_after"] < summary["val_loss_before"]


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["lora", "full", "qlora"])
def test_plan_predicts_max_memory_allocated_within_15_percent(tmp_path: Path, method: str) -> None:
    data = (
        Path(__file__).resolve().parents[2] / "examples" / "data" / "support_requests.train.jsonl"
    )
    result = runner.invoke(app, [
        "train", "--data", str(data), "--no-eval", "--set", f"method.name={method}",
        "--set", "train.device=cuda", "--set", "train.max_steps=20",
        "--set", f"output.dir={tmp_path}", "--set", "output.name=run",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    error = summary["predicted_peak_bytes"] / summary["measured_peak_bytes"] - 1
    print(f"{method}: predicted {summary['predicted_peak_bytes']}, measured "
          f"{summary['measured_peak_bytes']} ({100 * error:+.1f}%)")  # fmt: skip
    assert abs(error) <= 0.15
