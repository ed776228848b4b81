"""Optional experiment trackers (TensorBoard, MLflow, Weights & Biases).

Off by default: nothing is imported and nothing touches the network unless
`train.report_to` names a tracker. metrics.jsonl is always written regardless.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from tunesmith.errors import TunesmithError


class TrackerError(TunesmithError):
    """A tracker was asked for but its package is not installed."""


class Tracker(Protocol):
    def log(self, values: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def _require(module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TrackerError(
            f"train.report_to asks for {package}, which is not installed: pip install {package}"
        ) from None


class _TensorBoard:
    def __init__(self, run_dir: Path) -> None:
        tensorboard = _require("torch.utils.tensorboard", "tensorboard")
        self.writer = tensorboard.SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class _MLflow:
    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        self.mlflow = _require("mlflow", "mlflow")
        self.mlflow.start_run(run_name=run_dir.name)
        self.mlflow.log_params(_flatten(config))

    def log(self, values: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class _WandB:
    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        wandb = _require("wandb", "wandb")
        self.run = wandb.init(name=run_dir.name, dir=str(run_dir), config=config)

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class Trackers:
    """Fan one metrics record out to every configured tracker."""

    def __init__(self, names: Sequence[str], run_dir: Path, config: dict[str, Any]) -> None:
        builders = {
            "tensorboard": lambda: _TensorBoard(run_dir),
            "mlflow": lambda: _MLflow(run_dir, config),
            "wandb": lambda: _WandB(run_dir, config),
        }
        self.trackers: list[Tracker] = [builders[name]() for name in names]

    def log(self, record: dict[str, Any]) -> None:
        if not self.trackers or "step" not in record:
            return
        values = {
            k: float(v) for k, v in record.items() if k != "step" and isinstance(v, int | float)
        }
        for tracker in self.trackers:
            tracker.log(values, int(record["step"]))

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
