"""Reward modelling: a scalar score per sequence, trained so chosen replies outscore rejected.

The score is a linear head on the language model's final hidden state at the
last real token, trained together with the method's parameters (e.g. LoRA)
under the Bradley-Terry loss −log σ(r_chosen − r_rejected), one unit per pair.
The head is attached to the model as the submodule ``reward_head`` before the
optimizer is built (so checkpoints and resume carry it like any trainable
weight) and is saved as ``reward_head.safetensors`` next to the method's
artifact; `load_reward_model` puts a finished run back together for `rlhf`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from tunesmith.data.batching import Batch
from tunesmith.objectives.errors import ObjectiveError
from tunesmith.objectives.losses import last_token_hidden_states
from tunesmith.objectives.preference import PairBatch, PairwiseData
from tunesmith.objectives.registry import ModelSource, ObjectiveSettings, Registration, register

REWARD_HEAD_FILE = "reward_head.safetensors"
HEAD_ATTRIBUTE = "reward_head"


def _hidden_size(model: nn.Module) -> int:
    return int(model.get_input_embeddings().weight.shape[1])


def reward_head_of(model: nn.Module) -> nn.Linear:
    head = getattr(model, HEAD_ATTRIBUTE, None)
    if not isinstance(head, nn.Linear):
        raise ObjectiveError(
            "the model has no reward head: objective reward attaches one before training "
            "(tunesmith.objectives.attach_objective_parameters)."
        )
    return head


def sequence_rewards(model: nn.Module, head: nn.Linear, batch: Batch) -> torch.Tensor:
    """One scalar score per row of a right-padded batch."""
    hidden = last_token_hidden_states(model, batch)
    if hidden is None:
        raise ObjectiveError(
            "objective reward reads the model's hidden states, which prefix and prompt tuning "
            "do not expose. Use method lora, dora, ia3, adapter, freeze or full."
        )
    return head(hidden.to(head.weight.dtype)).squeeze(-1).float()


class RewardModelling:
    name = "reward"

    def __init__(self) -> None:
        self.pair_data = PairwiseData(self.name)
        self.tokenize = self.pair_data.tokenize
        self.units = self.pair_data.units
        self.collate = self.pair_data.collate

    def attach_parameters(self, model: nn.Module) -> None:
        """Give the model a trainable scalar head (small random weights, zero bias)."""
        reference = model.get_input_embeddings().weight
        head = nn.Linear(_hidden_size(model), 1, device=reference.device, dtype=torch.float32)
        nn.init.normal_(head.weight, std=1 / _hidden_size(model) ** 0.5)
        nn.init.zeros_(head.bias)
        model.add_module(HEAD_ATTRIBUTE, head)

    def save_parameters(self, model: nn.Module, out_dir: Path) -> None:
        head = reward_head_of(model)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file(
            {"weight": head.weight.detach().cpu(), "bias": head.bias.detach().cpu()},
            str(out_dir / REWARD_HEAD_FILE),
            metadata={"format": "tunesmith-reward-head", "reads": "last token hidden state"},
        )

    def loss_sum(self, model: nn.Module, batch: PairBatch) -> tuple[torch.Tensor, int]:
        rewards = sequence_rewards(model, reward_head_of(model), batch.sequences)
        pairs = batch.pairs
        return -F.logsigmoid(rewards[:pairs] - rewards[pairs:]).sum(), pairs


class RewardScorer(nn.Module):
    """A trained reward model as a function of (input_ids, attention_mask) → one score per row.

    Rows must be right-padded; the score is read at each row's last real token.
    """

    def __init__(self, model: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        batch = Batch(input_ids, input_ids, positions, attention_mask, [], 0)
        return sequence_rewards(self.model, self.head, batch)


def load_reward_model(run_dir: Path, model_loader: Callable[[str], nn.Module]) -> RewardScorer:
    """The reward model of a finished `objective: reward` run, frozen, in eval mode.

    The run's own config says which base model and method it trained; the base is loaded
    through ``model_loader`` and the method's artifact and the head are put back on it.
    """
    final = run_dir / "final"
    head_file = final / REWARD_HEAD_FILE
    if not head_file.is_file():
        raise ObjectiveError(
            f"objective.reward_model {run_dir}: no {REWARD_HEAD_FILE} in {final}. Point it at the "
            "run directory of a finished run with objective reward."
        )
    from tunesmith.config import ConfigError, load_config  # the run config composes objectives
    from tunesmith.methods import get_method

    try:
        config = load_config(run_dir / "config.yaml")
    except ConfigError as error:
        raise ObjectiveError(f"objective.reward_model {run_dir}: {error}") from None
    if config.objective.name != "reward":
        raise ObjectiveError(
            f"objective.reward_model {run_dir} was trained with objective "
            f"{config.objective.name!r}, not 'reward'. Train a reward model first."
        )
    method = get_method(config.method.name)
    model = method.load(model_loader(config.model.name), final)
    weights = load_file(str(head_file))
    head = nn.Linear(weights["weight"].shape[1], 1)
    head.load_state_dict(weights)
    head.to(next(model.parameters()).device)
    scorer = RewardScorer(model, head).eval()
    scorer.requires_grad_(False)
    return scorer


class RewardSettings(ObjectiveSettings):
    name: Literal["reward"] = "reward"


def _build(settings: ObjectiveSettings, models: ModelSource | None) -> RewardModelling:
    return RewardModelling()


register(
    Registration(
        "reward",
        RewardSettings,
        _build,
        verdict="preference",
        shardable=False,
        pair_score="reward_head",
    )
)
