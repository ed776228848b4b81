"""Reward modelling: the head learns to rank chosen over rejected, and a finished run reloads."""

from __future__ import annotations

import torch

from tests.objectives.helpers import lora_model, preference_records, train
from tunesmith.config import RunConfig
from tunesmith.data.preference import tokenize_preferences
from tunesmith.engine.batches import BatchSettings
from tunesmith.engine.loop import evaluate_loss
from tunesmith.methods import get_method, method_settings
from tunesmith.models import load_base_model
from tunesmith.objectives import (
    attach_objective_parameters,
    build_objective,
    get_objective,
    objective_settings,
    save_objective_parameters,
)
from tunesmith.objectives.preference import collate_pairs
from tunesmith.objectives.reward import REWARD_HEAD_FILE, load_reward_model, sequence_rewards
from tunesmith.objectives.rlhf import GroupRelativePolicyOptimization

PAD = 3
CPU = torch.device("cpu")


def pairs_and_batch(tokenizer):
    examples = tokenize_preferences(tokenizer, preference_records(), max_length=128).examples
    return examples, collate_pairs(examples, pad_token_id=PAD)


def rewards(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return sequence_rewards(model, model.reward_head, batch.sequences)


def ranking_accuracy(model, batch) -> float:
    scores = rewards(model, batch)
    return float((scores[: batch.pairs] > scores[batch.pairs :]).float().mean())


def mean_pair_loss(model, examples) -> float:
    return evaluate_loss(
        model,
        get_objective("reward"),
        examples,
        batches=BatchSettings(PAD, pack=False, row_length=128, batch_size=4, device=CPU),
    )


def test_reward_model_learns_to_rank_the_training_pairs(tiny_tokenizer, tiny_model, tmp_path):
    torch.manual_seed(0)  # the head's init draws from the global generator: fix it
    objective = get_objective("reward")
    model = lora_model(tiny_model)
    attach_objective_parameters(objective, model)
    head_names = [n for n, p in model.named_parameters() if p.requires_grad and "reward_head" in n]
    assert head_names == ["reward_head.weight", "reward_head.bias"]
    examples, batch = pairs_and_batch(tiny_tokenizer)
    accuracy_before, loss_before = ranking_accuracy(model, batch), mean_pair_loss(model, examples)
    result = train(model, objective, examples, tmp_path, steps=40)
    assert all(torch.isfinite(torch.tensor([loss for _, loss in result.state.train_history])))
    assert mean_pair_loss(model, examples) < 0.5 * loss_before
    assert accuracy_before < 0.75
    assert ranking_accuracy(model, batch) >= 0.875


def finished_reward_run(tokenizer, model_dir, run_dir):
    """A reward run as the pipeline leaves it: config.yaml, and final/ with adapter and head."""
    config = RunConfig.model_validate(
        {
            "model": {"name": str(model_dir)},
            "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
            "objective": {"name": "reward"},
        }
    )
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(config.to_yaml())
    method = get_method("lora")
    model = method.attach(load_base_model(str(model_dir)).model, method_settings(r=4, dropout=0.0))
    objective = get_objective("reward")
    attach_objective_parameters(objective, model)
    examples, _ = pairs_and_batch(tokenizer)
    train(model, objective, examples, run_dir, steps=3)
    method.save(model, run_dir / "final")
    save_objective_parameters(objective, model, run_dir / "final")
    return model


def test_a_finished_reward_run_reloads_with_identical_scores(
    tiny_tokenizer, tiny_model_dir, tmp_path
) -> None:
    run_dir = tmp_path / "reward-run"
    trained = finished_reward_run(tiny_tokenizer, tiny_model_dir, run_dir)
    assert (run_dir / "final" / REWARD_HEAD_FILE).is_file()
    assert (run_dir / "final" / "adapter_model.safetensors").is_file()

    scorer = load_reward_model(run_dir, lambda name: load_base_model(name).model)
    _, batch = pairs_and_batch(tiny_tokenizer)
    with torch.no_grad():
        reloaded = scorer(batch.sequences.input_ids, batch.sequences.attention_mask)
    torch.testing.assert_close(reloaded, rewards(trained.eval(), batch), atol=1e-5, rtol=1e-5)
    assert all(not p.requires_grad for p in scorer.parameters())

    # rlhf builds on it: its reward model is this run, its policy any causal LM.
    objective = build_objective(
        objective_settings(name="rlhf", reward_model=run_dir, group_size=2, max_new_tokens=4),
        model_loader=lambda name: load_base_model(name).model,
        base_model=str(tiny_model_dir),
    )
    assert isinstance(objective, GroupRelativePolicyOptimization)
    prompts, _ = objective.tokenize(
        tiny_tokenizer, preference_records()[:2], max_length=64, on_overlength="drop"
    )
    policy = lora_model(load_base_model(str(tiny_model_dir)).model)
    loss, units = objective.loss_sum(
        policy, objective.collate(prompts, pad_token_id=PAD, pack=False, row_length=64)
    )
    assert units == 2 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None for p in policy.parameters() if p.requires_grad)
