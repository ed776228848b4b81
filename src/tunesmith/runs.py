"""The run directory: where every stage finds what the previous one wrote.

runs/<name>/config.yaml, data_report.json, metrics.jsonl, checkpoints/, final/, eval/
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunesmith.config import ConfigError, RunConfig
from tunesmith.errors import TunesmithError
from tunesmith.methods import get_method
from tunesmith.models import Precision, load_base_model, pick_device, resolve_precision


class RunError(TunesmithError):
    """A run directory that is missing or incomplete; the message says what to run first."""


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data_report(self) -> Path:
        return self.root / "data_report.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"


def read_run_config(run_dir: Path) -> RunConfig:
    paths = RunPaths(run_dir)
    if not paths.config.is_file():
        raise RunError(
            f"{run_dir}: not a tunesmith run directory (no config.yaml). "
            "Pass the directory `tunesmith train` printed at the end."
        )
    raw = yaml.safe_load(paths.config.read_text(encoding="utf-8"))
    try:
        return RunConfig.model_validate(raw)
    except Exception as error:
        raise ConfigError(f"{paths.config}: {error}") from None


REMOTE_CODE_FLAG = "--trust-remote-code"


@dataclass
class TrainedModel:
    """A run's fine-tuned model; ``notices`` are things the caller should show the user."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    config: RunConfig
    device: torch.device
    precision: Precision
    """The run's precision rule on this machine: evaluation and serving autocast with it."""
    notices: list[str] = field(default_factory=list)


def remote_code_notice(run_dir: Path, config: RunConfig, trust_remote_code: bool) -> str | None:
    """The line to show when a run directory's config asks for remote code this call did not.

    A run directory may come from anyone (a shared disk, a download), so what its
    ``config.yaml`` says about running the model's Python code is shown, never obeyed.
    """
    if not config.model.trust_remote_code or trust_remote_code:
        return None
    return (
        f"{RunPaths(run_dir).config} sets model.trust_remote_code: true; ignored, because a "
        f"run directory cannot grant that. If you trust the code of {config.model.name}, "
        f"pass {REMOTE_CODE_FLAG} (Python: trust_remote_code=True)."
    )


def load_trained(
    run_dir: Path, *, trust_remote_code: bool = False, device: str = "auto"
) -> TrainedModel:
    """The fine-tuned model of a run, rebuilt from the base model and `final/`.

    ``trust_remote_code`` must come from this invocation (a CLI flag or the API call): the
    value stored in the run directory is ignored and reported in ``notices`` instead.
    """
    paths = RunPaths(run_dir)
    config = read_run_config(run_dir)
    if not paths.final.is_dir():
        raise RunError(f"{paths.final} is missing: the run has not finished training.")
    notice = remote_code_notice(run_dir, config, trust_remote_code)
    config.model.trust_remote_code = trust_remote_code
    method = get_method(config.method.name)
    target = pick_device(device)
    precision = resolve_precision(config.train.precision, target)
    loaded = load_base_model(
        config.model.name,
        device=target,
        dtype=precision.weights,
        cache_dir=config.model.cache_dir,
        trust_remote_code=trust_remote_code,
        **method.base_load_options(config.method),
    )
    model = method.load(loaded.model, paths.final)
    model.eval()
    return TrainedModel(
        model=model,
        tokenizer=loaded.tokenizer,
        config=config,
        device=target,
        precision=precision,
        notices=[notice] if notice else [],
    )


@contextlib.contextmanager
def base_model_of(trained: TrainedModel) -> Iterator[nn.Module]:
    """The untrained base model of a run, for baselines and ``--base``.

    Methods that can switch their adapter off (peft's ``disable_adapter``) compute the
    base with the trained model's own weights; the others (full, freeze, bottleneck
    adapters) changed or hooked the base weights, so the base is loaded on its own.
    """
    method = get_method(trained.config.method.name)
    if method.switches_off:
        with trained.model.disable_adapter():
            yield trained.model
        return
    config = trained.config
    loaded = load_base_model(
        config.model.name,
        device=trained.device,
        dtype=trained.precision.weights,
        cache_dir=config.model.cache_dir,
        trust_remote_code=config.model.trust_remote_code,
        **method.base_load_options(config.method),
    )
    yield loaded.model.eval()
