"""The parts `run_loop` is composed of, each on its own: early stopping's bookkeeping, the
metrics log across a resume, and when the checkpointer is called."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunesmith.config import TrainConfig
from tunesmith.data.records import Conversation, Message, Source
from tunesmith.data.tokenize import tokenize_conversations
from tunesmith.engine.batches import BatchSettings
from tunesmith.engine.loop import (
    Checkpointer,
    LoopOutput,
    LoopSettings,
    LoopState,
    MetricsLog,
    patience_exhausted,
    record_validation,
    run_loop,
)
from tunesmith.engine.progress import TrainingProgress
from tunesmith.methods import get_method, method_settings
from tunesmith.objectives import get_objective


def test_an_improvement_smaller_than_min_delta_spends_patience() -> None:
    settings = TrainConfig(early_stopping_patience=2, early_stopping_min_delta=0.1)
    state = LoopState(step=1)
    assert record_validation(state, 2.0, settings)
    state.step = 2
    assert not record_validation(state, 1.95, settings)  # better, but by less than 0.1
    assert not patience_exhausted(state, settings)
    state.step = 3
    assert not record_validation(state, 1.99, settings)
    assert patience_exhausted(state, settings)
    assert (state.best_step, state.best_val_loss) == (1, 2.0)
    assert state.val_history == [(1, 2.0), (2, 1.95), (3, 1.99)]
    assert not patience_exhausted(state, TrainConfig(early_stopping_patience=None))


def test_a_resumed_log_drops_what_lies_beyond_the_checkpoint(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(
        "".join(json.dumps({"step": s, "train_loss": 1.0}) + "\n" for s in (1, 2, 3))
    )
    records = []
    with TrainingProgress(3, enabled=False) as progress:
        output = LoopOutput(metrics, progress, on_metrics=records.append)
        with MetricsLog(output, rank=0, resumed_at_step=2) as log:
            log.metric({"step": 3, "train_loss": 0.5})
            log.trained_on(3, ["a.jsonl:1"])
        with MetricsLog(output, rank=1, resumed_at_step=3) as log:
            log.metric({"step": 4, "train_loss": 0.4})  # only rank 0 writes metrics
            log.trained_on(4, ["a.jsonl:2"])
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [(line["step"], line["train_loss"]) for line in lines] == [(1, 1.0), (2, 1.0), (3, 0.5)]
    assert records == [{"step": 3, "train_loss": 0.5}]
    samples = (tmp_path / "samples.rank1.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in samples] == [4]


def test_a_stop_between_regular_checkpoints_saves_once_then_ends(
    tiny_tokenizer, tiny_model, tmp_path: Path
) -> None:
    records = [
        Conversation((Message("user", f"{n} plus {n}?"), Message("assistant", f"{2 * n}")),
                     Source("sums.jsonl", n))
        for n in range(1, 9)
    ]  # fmt: skip
    data = tokenize_conversations(tiny_tokenizer, records, max_length=64).examples
    model = get_method("lora").attach(tiny_model, method_settings(r=4, dropout=0.0))
    settings = TrainConfig(max_steps=6, batch_size=4, eval_every=4, warmup_ratio=0.0)
    saved: list[tuple[int, float | None]] = []
    with TrainingProgress(6, enabled=False) as progress:
        result = run_loop(
            model,
            get_objective("sft"),
            data,
            data,
            settings=LoopSettings(settings, 1e-2),
            batches=BatchSettings.of(
                settings, pad_token_id=3, pack=True, row_length=64, device=torch.device("cpu")
            ),
            output=LoopOutput(tmp_path / "metrics.jsonl", progress),
            checkpointer=Checkpointer(
                restore=lambda optimizer, scheduler: (LoopState(), None),
                save=lambda state, optimizer, scheduler, metric: saved.append((state.step, metric)),
            ),
            stop_requested=lambda: True,  # as a SIGTERM during step 1 would
        )
    assert result.stopped_by_signal and result.state.step == 1 and result.steps_run == 1
    assert saved == [(1, None)]  # step 1 is no regular checkpoint and had no validation
