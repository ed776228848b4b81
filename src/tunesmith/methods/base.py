"""The shape every fine-tuning method has, and helpers that all of them share."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict
from torch import nn
from transformers import PreTrainedModel

from tunesmith.errors import TunesmithError

ArtifactKind = Literal["peft-adapter", "model", "bottleneck-adapter"]
"""What `final/` holds: a peft adapter dir, a whole `from_pretrained` model dir, or ours."""


class MethodError(TunesmithError):
    """A method that cannot do what was asked (e.g. merge prefix tuning); says what to do."""


class MethodSettings(BaseModel):
    """The knobs of one method, as the `method:` section of a run config.

    Each method subclasses it in its own file with ``name: Literal["<its name>"]``; the run
    config is the union of the registered ones keyed on ``name``, so a knob the chosen
    method does not have is an error that names it.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str


class Method(Protocol):
    """How one fine-tuning method adapts, saves, reloads and merges a model.

    `attach` returns the module to train with exactly the method's parameters
    trainable. `save` writes an artifact the ecosystem loads without tunesmith
    (peft adapter dir or a `from_pretrained` model dir; bottleneck adapters,
    which peft lacks, use a small safetensors + JSON format of their own);
    `load` reverses it on a freshly loaded base model (loaded with
    `base_load_options`).

    Capabilities the rest of tunesmith asks for instead of testing names:

    - ``mergeable``: `merge` works whatever the settings. When False, `merge` raises
      MethodError saying why, except for settings that do fold (bottleneck adapters with a
      linear activation); callers that want a merged model call `merge` and report it.
    - ``packs``: several examples may share a row (prompt-learning methods put virtual
      tokens before each input, so they train unpacked).
    - ``shardable``: FSDP2 can shard the model (4-bit weights and peft's prompt encoders
      cannot be sharded).
    - ``switches_off``: the trained model can compute the base model by switching its
      adapter off (peft's ``disable_adapter``); otherwise baselines and ``--base`` load the
      base model on its own.
    """

    name: str
    settings: ClassVar[type[MethodSettings]]
    default_learning_rate: float
    artifact: ArtifactKind
    mergeable: bool
    packs: bool
    shardable: bool
    switches_off: bool

    def base_load_options(self, settings: MethodSettings) -> dict[str, object]:
        """Extra `from_pretrained` keyword arguments for the base (e.g. 4-bit quantization)."""
        ...

    def attach(self, model: PreTrainedModel, settings: MethodSettings) -> nn.Module: ...

    def save(self, model: nn.Module, out_dir: Path) -> None: ...

    def load(self, base: PreTrainedModel, artifact_dir: Path) -> nn.Module: ...

    def merge(self, model: nn.Module) -> PreTrainedModel: ...


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared tensors counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        count = parameter.numel()
        # bitsandbytes 4-bit weights pack two values per byte.
        if parameter.__class__.__name__ == "Params4bit":
            count *= 2
        total += count
        if parameter.requires_grad:
            trainable += count
    return trainable, total
