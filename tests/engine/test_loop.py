"""The loop's shared numerics: exact gradient accumulation, training that really trains."""

import json
from pathlib import Path

import pytest
import torch

from tunesmith.config import TrainConfig
from tunesmith.data.records import Conversation, Message, Source
from tunesmith.data.tokenize import tokenize_conversations
from tunesmith.engine.batches import BatchSettings
from tunesmith.engine.loop import (
    LoopOutput,
    LoopSettings,
    TrainingError,
    backward_window,
    overfitting_warning,
    run_loop,
)
from tunesmith.engine.progress import TrainingProgress
from tunesmith.methods import get_method, method_settings
from tunesmith.models import enable_gradient_checkpointing
from tunesmith.objectives import get_objective

QUESTIONS = [
    ("What is two plus two?", "Four."),
    ("capital of France?", "Paris"),
    ("capital of Italy?", "Rome"),
    ("Translate to French: hello", "bonjour and goodbye thank you"),
    ("What is three plus five?", "Eight."),
    ("Reply in JSON", '{"intent": "GetWeather", "slots": {"city": "Paris"}}'),
    ("one word", "spam"),
    ("another word", "ham positive negative"),
]


CPU = torch.device("cpu")


def tiny_batches(tokenizer, settings: TrainConfig) -> BatchSettings:
    return BatchSettings.of(
        settings, pad_token_id=tokenizer.pad_token_id, pack=True, row_length=128, device=CPU
    )


def examples(tokenizer):
    records = [
        Conversation((Message("user", q), Message("assistant", a)), Source("mem.jsonl", i + 1))
        for i, (q, a) in enumerate(QUESTIONS)
    ]
    return tokenize_conversations(tokenizer, records, max_length=128).examples


def gradients_after(
    model, micro_batches, pad, max_tokens: int = 1 << 30, autocast_dtype=None
) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    window = sum(get_objective("sft").units(e) for group in micro_batches for e in group)
    loss, _, _ = backward_window(
        model,
        get_objective("sft"),
        micro_batches,
        window_tokens=window,
        batches=BatchSettings(
            pad,
            pack=True,
            row_length=128,
            batch_size=8,
            device=CPU,
            max_tokens_per_forward=max_tokens,
        ),
        autocast_dtype=autocast_dtype,
    )
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss) / window, grads


def test_batch_8_x_accumulation_1_equals_2_x_4(tiny_tokenizer, tiny_model) -> None:
    data = examples(tiny_tokenizer)
    assert len({len(e) for e in data}) > 3  # variable lengths, or the test proves nothing
    pad = tiny_tokenizer.pad_token_id
    loss_one, grads_one = gradients_after(tiny_model, [data], pad)
    loss_four, grads_four = gradients_after(
        tiny_model, [data[i : i + 2] for i in (0, 2, 4, 6)], pad
    )
    assert loss_one == pytest.approx(loss_four, abs=1e-5)
    assert grads_one.keys() == grads_four.keys()
    for name in grads_one:
        torch.testing.assert_close(grads_one[name], grads_four[name], atol=1e-5, rtol=1e-4)


def test_accumulation_in_bf16_autocast_matches_within_bf16_rounding(
    tiny_tokenizer, tiny_model
) -> None:
    """bf16 keeps 8 mantissa bits (relative rounding 2**-8 = 0.4%): batches of other shapes
    round differently, so 8 x 1 and 2 x 4 agree to bf16 precision, not bit for bit. The
    loss reduction is fp32, so the loss agrees much closer than the activations."""
    data = examples(tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    loss_one, grads_one = gradients_after(tiny_model, [data], pad, autocast_dtype=torch.bfloat16)
    loss_four, grads_four = gradients_after(
        tiny_model, [data[i : i + 2] for i in (0, 2, 4, 6)], pad, autocast_dtype=torch.bfloat16
    )
    _, grads_fp32 = gradients_after(tiny_model, [data], pad)
    assert loss_one == pytest.approx(loss_four, rel=1e-3)
    for name in grads_one:
        scale = float(grads_fp32[name].abs().max())
        assert grads_one[name].dtype == torch.float32  # gradients of fp32 weights stay fp32
        torch.testing.assert_close(grads_one[name], grads_four[name], atol=0.02 * scale, rtol=0)
        # and bf16 is a rounding of the fp32 gradient, not another one
        torch.testing.assert_close(grads_one[name], grads_fp32[name], atol=0.05 * scale, rtol=0)


def test_splitting_a_micro_batch_into_pieces_changes_nothing(tiny_tokenizer, tiny_model) -> None:
    data = examples(tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    loss_whole, grads_whole = gradients_after(tiny_model, [data], pad)
    loss_split, grads_split = gradients_after(tiny_model, [data], pad, max_tokens=40)
    assert loss_whole == pytest.approx(loss_split, abs=1e-5)
    for name in grads_whole:
        torch.testing.assert_close(grads_whole[name], grads_split[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("method", "dropout"), [("lora", 0.1), ("full", 0.0)])
def test_gradient_checkpointing_recomputes_layers_and_keeps_the_gradients(
    tiny_tokenizer, tiny_model, method, dropout, monkeypatch
) -> None:
    model = get_method(method).attach(tiny_model, method_settings(r=4, alpha=8, dropout=dropout))
    model.train()  # checkpointing only acts in training mode; LoRA dropout masks must replay
    data, pad = examples(tiny_tokenizer), tiny_tokenizer.pad_token_id
    # Module hooks do not fire when a checkpoint recomputes, so count calls of forward itself.
    mlp_calls = []
    mlp_class = type(next(m for name, m in model.named_modules() if name.endswith("mlp")))
    original_forward = mlp_class.forward

    def counted_forward(self, hidden):
        mlp_calls.append(1)
        return original_forward(self, hidden)

    monkeypatch.setattr(mlp_class, "forward", counted_forward)

    torch.manual_seed(0)
    loss_plain, grads_plain = gradients_after(model, [data], pad)
    calls_plain = len(mlp_calls)
    enable_gradient_checkpointing(model)
    torch.manual_seed(0)
    loss_checkpointed, grads_checkpointed = gradients_after(model, [data], pad)

    layers = tiny_model.config.num_hidden_layers
    assert calls_plain == layers
    assert len(mlp_calls) - calls_plain == 2 * layers  # forward, then again during backward
    assert loss_checkpointed == pytest.approx(loss_plain, abs=1e-6)
    assert grads_plain.keys() == grads_checkpointed.keys() and grads_plain
    for name in grads_plain:
        torch.testing.assert_close(grads_checkpointed[name], grads_plain[name], atol=1e-6, rtol=0)


def train_tiny(
    tokenizer, model, tmp_path: Path, learning_rate: float = 1e-2, on_metrics=None, **settings
):
    data = examples(tokenizer)
    config = TrainConfig(
        **{"epochs": 1, "batch_size": 4, "eval_every": 5, "warmup_ratio": 0.0, **settings}
    )
    with TrainingProgress(100, enabled=False) as progress:
        return run_loop(
            model,
            get_objective("sft"),
            data,
            data,
            settings=LoopSettings(config, learning_rate),
            batches=tiny_batches(tokenizer, config),
            output=LoopOutput(tmp_path / "metrics.jsonl", progress, on_metrics=on_metrics),
        )


def test_lora_training_lowers_loss_and_touches_only_the_adapter(
    tiny_tokenizer, tiny_model, tmp_path
) -> None:
    # Random init at std 0.02 keeps tied-embedding logits near zero, which no adapter can
    # move; larger embeddings give LoRA something to steer.
    with torch.no_grad():
        tiny_model.get_input_embeddings().weight.mul_(10)
    model = get_method("lora").attach(tiny_model, method_settings(r=8, alpha=64, dropout=0.0))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    result = train_tiny(tiny_tokenizer, model, tmp_path, max_steps=40, early_stopping_patience=None)
    assert result.state.step == 40
    val_losses = [loss for _, loss in result.state.val_history]
    assert val_losses[-1] < val_losses[0] - 1.0
    for name, before in frozen.items():
        assert torch.equal(before, dict(model.named_parameters())[name]), name
    changed = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and not torch.equal(p, trainable[n])
    ]
    assert len(changed) == len(trainable)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert sum('"train_loss"' in line for line in lines) == 40
    assert sum('"val_loss"' in line for line in lines) == 8


def test_early_stopping_keeps_the_best_step(tiny_tokenizer, tiny_model, tmp_path) -> None:
    # A huge learning rate makes validation loss worsen: the run must stop and keep the best.
    model = get_method("lora").attach(tiny_model, method_settings(r=8, dropout=0.0))
    weights_at_eval: dict[int, dict[str, torch.Tensor]] = {}

    def snapshot(record) -> None:
        if "val_loss" in record:
            weights_at_eval[record["step"]] = {
                n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad
            }

    result = train_tiny(
        tiny_tokenizer,
        model,
        tmp_path,
        learning_rate=3.0,
        max_steps=200,
        eval_every=1,
        early_stopping_patience=2,
        on_metrics=snapshot,
    )
    assert result.stopped_early
    assert result.state.step < 200
    best_step, best = min(result.state.val_history, key=lambda item: item[1])
    assert result.state.best_val_loss == best and result.state.best_step == best_step
    assert best_step < result.state.step  # the last weights are not the best ones
    kept = result.best_trainable_state
    assert kept is not None and kept.keys() == weights_at_eval[best_step].keys()
    for name, tensor in weights_at_eval[best_step].items():
        assert torch.equal(kept[name], tensor), name
    last = weights_at_eval[result.state.step]
    assert any(not torch.equal(kept[name], last[name]) for name in last)


def test_overfitting_warning_needs_rising_validation_and_falling_training() -> None:
    train = [(s, 3.0 - 0.1 * s) for s in range(1, 31)]
    assert overfitting_warning([(10, 1.0), (20, 1.1), (30, 1.2)], train)
    assert overfitting_warning([(10, 1.2), (20, 1.1), (30, 1.0)], train) is None
    flat_train = [(s, 2.0) for s in range(1, 31)]
    assert overfitting_warning([(10, 1.0), (20, 1.1), (30, 1.2)], flat_train) is None


class PoisonedSFT:
    """SFT whose loss is NaN on chosen optimizer steps (counted by backward windows)."""

    def __init__(self, poisoned_calls: set[int]) -> None:
        self.inner = get_objective("sft")
        self.name = "sft"
        self.poisoned_calls = poisoned_calls
        self.calls = 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def loss_sum(self, model, batch):
        self.calls += 1
        loss, units = self.inner.loss_sum(model, batch)
        return (loss * float("nan"), units) if self.calls in self.poisoned_calls else (loss, units)


def run_poisoned(tokenizer, model, tmp_path, poisoned: set[int], steps: int, on_metrics=None):
    data = examples(tokenizer)
    settings = TrainConfig(max_steps=steps, batch_size=8, warmup_ratio=0.0)
    with TrainingProgress(100, enabled=False) as progress:
        return run_loop(
            model,
            PoisonedSFT(poisoned),
            data,
            [],
            settings=LoopSettings(settings, learning_rate=1e-2),
            batches=tiny_batches(tokenizer, settings),
            output=LoopOutput(tmp_path / "metrics.jsonl", progress, on_metrics=on_metrics),
        )


def test_nonfinite_step_is_skipped_named_and_leaves_weights_alone(
    tiny_tokenizer, tiny_model, tmp_path
) -> None:
    # One micro-batch per step here: call 2 is step 2. The weights right after the skipped
    # step must equal those right after step 1, and step 1 must have changed them.
    model = get_method("lora").attach(tiny_model, method_settings(r=4, dropout=0.0))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    seen: list[tuple[dict, dict[str, torch.Tensor]]] = []

    def snapshot(record) -> None:
        seen.append((record, {n: p.detach().clone() for n, p in trainable.items()}))

    result = run_poisoned(tiny_tokenizer, model, tmp_path, {2}, steps=3, on_metrics=snapshot)
    after_step_1 = next(w for r, w in seen if r.get("step") == 1 and "train_loss" in r)
    after_skip = next(w for r, w in seen if r.get("event") == "nonfinite_skipped")
    assert any(not torch.equal(after_step_1[n], before[n]) for n in before)
    for name in before:
        assert torch.equal(after_skip[name], after_step_1[name]), name
    assert result.state.step == 3  # the poisoned window was skipped, then training went on
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    skipped = [line for line in lines if line.get("event") == "nonfinite_skipped"]
    assert len(skipped) == 1 and skipped[0]["step"] == 2
    assert any(name.startswith("mem.jsonl:") for name in skipped[0]["examples"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_repeated_nonfinite_steps_stop_the_run(tiny_tokenizer, tiny_model, tmp_path) -> None:
    model = get_method("lora").attach(tiny_model, method_settings(r=4, dropout=0.0))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with pytest.raises(TrainingError, match="3 non-finite steps in a row"):
        run_poisoned(tiny_tokenizer, model, tmp_path, {1, 2, 3}, steps=5)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert torch.equal(parameter, before[name])
