"""Every objective the config accepts is registered; `build_objective` applies the config."""

from __future__ import annotations

import pytest
import torch

from tests.objectives.helpers import PAIRS
from tunesmith.config import RunConfig
from tunesmith.data.batching import collate
from tunesmith.data.records import Conversation, Message, Source
from tunesmith.objectives import (
    OBJECTIVES,
    ObjectiveError,
    build_objective,
    get_objective,
    objective_settings,
)
from tunesmith.objectives.distill import Distillation
from tunesmith.objectives.preference import PreferenceOptimization
from tunesmith.objectives.rlhf import PromptBatch


def test_the_config_accepts_every_registered_objective() -> None:
    for name, entry in OBJECTIVES.items():
        config = RunConfig.model_validate({"objective": {"name": name}})
        assert isinstance(config.objective, entry.settings)
    with pytest.raises(ObjectiveError, match="available: distill, dpo"):
        get_objective("ppo")


def test_build_objective_applies_the_config_and_loads_nothing_up_front(tiny_model) -> None:
    loads: list[str] = []

    def loader(name: str):
        loads.append(name)
        return tiny_model

    ipo = build_objective(
        objective_settings(name="ipo", beta=0.3), model_loader=loader, base_model="base"
    )
    assert isinstance(ipo, PreferenceOptimization) and (ipo.name, ipo.beta) == ("ipo", 0.3)
    distill = build_objective(
        objective_settings(name="distill", teacher="teacher-dir", temperature=3.0, alpha=0.2),
        model_loader=loader,
        base_model="base",
    )
    assert isinstance(distill, Distillation)
    assert (distill.temperature, distill.alpha) == (3.0, 0.2)
    assert build_objective(objective_settings(), model_loader=loader, base_model="b").name == "sft"
    assert loads == []


def test_registered_distill_and_rlhf_tokenize_but_need_their_models_to_train(
    tiny_tokenizer, tiny_model
) -> None:
    records = [
        Conversation((Message("user", q), Message("assistant", a)), Source("c.jsonl", i))
        for i, (q, a, _) in enumerate(PAIRS, start=1)
    ]
    distill = get_objective("distill")
    examples, _ = distill.tokenize(tiny_tokenizer, records, max_length=64, on_overlength="drop")
    batch = collate(examples, pad_token_id=3, pack=True, row_length=64)
    with pytest.raises(ObjectiveError, match="no teacher"):
        distill.loss_sum(tiny_model, batch)

    rlhf = get_objective("rlhf")
    prompts, _ = rlhf.tokenize(tiny_tokenizer, records, max_length=64, on_overlength="drop")
    prompt_batch = rlhf.collate(prompts, pad_token_id=3, pack=True, row_length=64)
    assert isinstance(prompt_batch, PromptBatch)
    assert prompt_batch.attention_mask[:, -1].all()  # left-padded: every prompt ends together
    with pytest.raises(ObjectiveError, match="no reward model"), torch.no_grad():
        rlhf.loss_sum(tiny_model, prompt_batch)
