"""Distillation: the student moves toward the teacher; the loss is exactly α·T²·KL + (1−α)·NLL."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import build_tiny_model
from tests.objectives.helpers import PAIRS, lora_model, train
from tunesmith.data.batching import collate
from tunesmith.data.records import Conversation, Message, Source
from tunesmith.data.tokenize import tokenize_conversations
from tunesmith.objectives import ObjectiveError, build_objective, objective_settings
from tunesmith.objectives import distill as distill_module
from tunesmith.objectives.distill import Distillation
from tunesmith.objectives.losses import causal_lm_nll_sum

PAD = 3


def conversations(tokenizer):
    records = [
        Conversation(
            (Message("user", prompt), Message("assistant", chosen)), Source("sft.jsonl", i)
        )
        for i, (prompt, chosen, _rejected) in enumerate(PAIRS, start=1)
    ]
    return tokenize_conversations(tokenizer, records, max_length=128).examples


def sharp_teacher(vocab: int):
    teacher = build_tiny_model(vocab, seed=1)
    with torch.no_grad():
        teacher.get_input_embeddings().weight.mul_(20)
    return teacher


def kl_per_token(student, objective: Distillation, examples) -> float:
    batch = collate(examples, pad_token_id=PAD, pack=True, row_length=256)
    with torch.no_grad():
        total, tokens = objective.loss_sum(student, batch)
    return float(total) / tokens / objective.temperature**2


def related_teacher(vocab: int):
    """The student's own base (as `lora_model` scales it) with a low-rank change in its last
    MLP: a teacher the student can reach, so its KL can fall far."""
    teacher = build_tiny_model(vocab, seed=0)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        teacher.get_input_embeddings().weight.mul_(10)
        down = teacher.model.layers[-1].mlp.down_proj.weight
        down += (
            4
            * torch.randn(down.shape[0], 2, generator=generator)
            @ torch.randn(2, down.shape[1], generator=generator)
        )
    return teacher


def test_student_kl_to_the_teacher_falls(tiny_tokenizer, tiny_model, tmp_path) -> None:
    examples = conversations(tiny_tokenizer)
    objective = Distillation(
        lambda: related_teacher(len(tiny_tokenizer)), temperature=2.0, alpha=1.0
    )
    student = lora_model(tiny_model)
    before = kl_per_token(student, objective, examples)
    result = train(student, objective, examples, tmp_path, steps=16)
    assert all(torch.isfinite(torch.tensor([loss for _, loss in result.state.train_history])))
    after = kl_per_token(student, objective, examples)
    assert before > 0.05
    assert after < 0.3 * before
    assert all(not p.requires_grad for p in objective.teacher_for(student).parameters())


def test_loss_mixes_kd_and_nll_and_does_not_depend_on_chunking(
    tiny_tokenizer, tiny_model, monkeypatch
) -> None:
    examples = conversations(tiny_tokenizer)
    batch = collate(examples, pad_token_id=PAD, pack=True, row_length=256)
    teacher = sharp_teacher(len(tiny_tokenizer))
    mixed = Distillation(lambda: teacher, temperature=2.0, alpha=0.3)
    pure_kd = Distillation(lambda: teacher, temperature=2.0, alpha=1.0)
    with torch.no_grad():
        loss, tokens = mixed.loss_sum(tiny_model, batch)
        kd, _ = pure_kd.loss_sum(tiny_model, batch)
        nll, nll_tokens = causal_lm_nll_sum(tiny_model, batch)
    assert tokens == nll_tokens == batch.trained_tokens
    assert float(loss) == pytest.approx(0.3 * float(kd) + 0.7 * float(nll), rel=1e-5)

    # By hand, on full logits: T² · KL(teacher_T ‖ student_T) summed over trained tokens.
    keep = batch.labels[:, 1:] != -100
    with torch.no_grad():
        student_logits = tiny_model(
            input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False
        ).logits[:, :-1][keep]
        teacher_logits = teacher(
            input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False
        ).logits[:, :-1][keep]
    log_teacher = torch.log_softmax(teacher_logits / 2.0, dim=-1)
    log_student = torch.log_softmax(student_logits / 2.0, dim=-1)
    by_hand = 4.0 * (log_teacher.exp() * (log_teacher - log_student)).sum()
    assert float(kd) == pytest.approx(float(by_hand), rel=1e-4)

    loss.requires_grad_(False)
    monkeypatch.setattr(distill_module, "LOGIT_CHUNK_ROWS", 5)
    tiny_model.zero_grad()
    chunked, _ = mixed.loss_sum(tiny_model, batch)
    chunked.backward()
    chunked_grads = [p.grad.clone() for p in tiny_model.parameters()]
    monkeypatch.setattr(distill_module, "LOGIT_CHUNK_ROWS", 100_000)
    tiny_model.zero_grad()
    whole, _ = mixed.loss_sum(tiny_model, batch)
    whole.backward()
    assert float(chunked) == pytest.approx(float(whole), rel=1e-5)
    for chunked_grad, parameter in zip(chunked_grads, tiny_model.parameters(), strict=True):
        torch.testing.assert_close(chunked_grad, parameter.grad, atol=1e-6, rtol=1e-4)


def test_distill_needs_a_teacher_with_the_same_vocabulary(tiny_tokenizer, tiny_model) -> None:
    with pytest.raises(ObjectiveError, match=r"objective\.teacher"):
        build_objective(
            objective_settings(name="distill"), model_loader=lambda name: tiny_model, base_model="x"
        )
    objective = build_objective(
        objective_settings(name="distill", teacher="bigger-vocab"),
        model_loader=lambda name: build_tiny_model(len(tiny_tokenizer) + 8),
        base_model="x",
    )
    batch = collate(conversations(tiny_tokenizer), pad_token_id=PAD, pack=True, row_length=256)
    with pytest.raises(ObjectiveError, match="same tokenizer"):
        objective.loss_sum(tiny_model, batch)
