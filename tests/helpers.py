"""Readers of what a training run wrote, shared by the CLI-level tests."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import torch
from safetensors.torch import load_file


def train_losses(run_dir: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line["train_loss"] for line in lines if "train_loss" in line}


def val_losses(run_dir: Path) -> list[tuple[int, float]]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(line["step"], line["val_loss"]) for line in lines if "val_loss" in line]


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "adapter_model.safetensors")


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The saved result of a run: the adapter, or the whole model of full fine-tuning."""
    final = run_dir / "final"
    name = "adapter_model.safetensors"
    return load_file(final / (name if (final / name).exists() else "model.safetensors"))


def free_port() -> int:
    """A TCP port the OS just handed out, so parallel test runs never collide on one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
