"""GRPO-style RLHF: sampled completions earn more reward after a few steps on a toy reward."""

from __future__ import annotations

import pytest
import torch

from tests.objectives.helpers import lora_model, preference_records, train
from tunesmith.data.records import Conversation, Message, Source, Text
from tunesmith.data.tokenize import TokenizeError
from tunesmith.objectives import ObjectiveError, build_objective, objective_settings
from tunesmith.objectives.rlhf import (
    GroupRelativePolicyOptimization,
    group_advantages,
    grpo_token_losses,
    sample_completions,
)

PAD = 3


def low_id_share(vocab: int):
    """Toy reward: the share of a row's real tokens whose id is in the lower half of the
    vocabulary. Prompts are the same within a group, so only the completion moves it there."""

    def reward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        liked = (input_ids < vocab // 2) & attention_mask.bool()
        return liked.float().sum(dim=1) / attention_mask.sum(dim=1)

    return reward


def mean_reward(model, objective, prompts, repeats: int = 4) -> float:
    batch = objective.collate(prompts, pad_token_id=PAD, pack=False, row_length=64)
    with torch.no_grad():
        total = sum(float(objective.loss_sum(model, batch)[0]) for _ in range(repeats))
    return -total / (repeats * len(prompts))


def test_mean_reward_of_sampled_completions_rises(tiny_tokenizer, tiny_model, tmp_path) -> None:
    torch.manual_seed(0)
    objective = GroupRelativePolicyOptimization(
        low_id_share(len(tiny_tokenizer)), beta=0.02, group_size=4, max_new_tokens=8
    )
    prompts, dropped = objective.tokenize(
        tiny_tokenizer, preference_records(), max_length=64, on_overlength="drop"
    )
    assert len(prompts) == 8 and dropped == []
    model = lora_model(tiny_model)
    before = mean_reward(model, objective, prompts)
    result = train(model, objective, prompts, tmp_path, steps=30)
    assert all(torch.isfinite(torch.tensor([loss for _, loss in result.state.train_history])))
    after = mean_reward(model, objective, prompts)
    assert after > before + 0.1


def test_sampled_completions_are_trained_only_after_the_prompt(tiny_tokenizer, tiny_model):
    objective = GroupRelativePolicyOptimization(
        low_id_share(len(tiny_tokenizer)), group_size=3, max_new_tokens=6
    )
    prompts, _ = objective.tokenize(
        tiny_tokenizer, preference_records()[:2], max_length=64, on_overlength="drop"
    )
    batch = objective.collate(prompts, pad_token_id=PAD, pack=False, row_length=64)
    completions = sample_completions(tiny_model, batch, group_size=3, max_new_tokens=6)
    assert completions.input_ids.shape[0] == 6
    for row in range(6):
        prompt = prompts[row // 3].input_ids
        assert completions.input_ids[row, : len(prompt)].tolist() == prompt
        trained = (completions.labels[row] != -100).nonzero().flatten().tolist()
        assert trained and trained[0] == len(prompt) and len(trained) <= 6
        reply = completions.input_ids[row, trained].tolist()
        stop = tiny_tokenizer.eos_token_id
        assert stop not in reply[:-1]  # a reply ends at its first stop token


def test_advantages_and_the_surrogate_gradient() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]])
    advantages = group_advantages(rewards)
    torch.testing.assert_close(advantages[0].mean(), torch.tensor(0.0))
    assert float(advantages[0].std()) == pytest.approx(1.0, abs=1e-3)
    assert torch.equal(advantages[1], torch.zeros(4))  # no signal when all samples tie
    # One update per sample: ratio 1, so the gradient is −advantage; at the reference, KL = 0.
    logprobs = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    weights = torch.tensor([0.5, -1.0, 2.0])
    losses = grpo_token_losses(
        logprobs, logprobs.detach(), logprobs.detach(), weights, clip_range=0.2, beta=0.1
    )
    losses.sum().backward()
    torch.testing.assert_close(losses.detach(), -weights)
    torch.testing.assert_close(logprobs.grad, -weights)


def test_rlhf_needs_prompts_and_a_reward_run(tiny_tokenizer, tiny_model) -> None:
    with pytest.raises(ObjectiveError, match=r"objective\.reward_model"):
        build_objective(
            objective_settings(name="rlhf"), model_loader=lambda name: tiny_model, base_model="x"
        )
    with pytest.raises(ObjectiveError, match=r"no reward_head\.safetensors"):
        build_objective(
            objective_settings(name="rlhf", reward_model="runs/sft-run"),
            model_loader=lambda name: tiny_model,
            base_model="x",
        )
    objective = GroupRelativePolicyOptimization(low_id_share(len(tiny_tokenizer)))
    chat = Conversation(
        (Message("user", "capital of France?"), Message("assistant", "Paris")), Source("c.jsonl", 1)
    )
    prompts, _ = objective.tokenize(tiny_tokenizer, [chat], max_length=64, on_overlength="drop")
    assert "Paris" not in tiny_tokenizer.decode(prompts[0].input_ids)  # the reply is not given
    with pytest.raises(TokenizeError) as caught:
        objective.tokenize(
            tiny_tokenizer,
            [chat, Text("raw", Source("t.txt", 4))],
            max_length=64,
            on_overlength="drop",
        )
    assert [p.location for p in caught.value.problems] == ["t.txt:4"]
