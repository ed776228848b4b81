"""`tunesmith sweep` on the tiny model: trials in their own processes, a resumable study,
pruning on validation loss, a winner only when the bootstrap says so."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.config import load_config
from tunesmith.plan.space import load_space, overrides_for
from tunesmith.plan.sweep import TrialOutcome, declare_winner, run_sweep

runner = CliRunner()


@pytest.fixture
def sweep_setup(run_setup: tuple[Path, Path]) -> tuple[Path, Path]:
    """The tiny LoRA run with a test split and a short evaluation, and a search space."""
    config, tmp = run_setup
    text = config.read_text().replace("split: [0.8, 0.2, 0.0]", "split: [0.6, 0.2, 0.2]")
    text = text.replace("eval: {enabled: false}", "eval: {max_new_tokens: 4, k_shot: 1}")
    config.write_text(text)
    space = tmp / "space.yaml"
    space.write_text(
        textwrap.dedent(
            """
            learning_rate: {low: 1.0e-3, high: 3.0e-2, log: true}
            method.r: [2, 4]
            """
        )
    )
    return config, space


def test_sweep_ranks_trials_writes_best_config_and_resumes(
    sweep_setup: tuple[Path, Path], tmp_path: Path
) -> None:
    config, space = sweep_setup
    out = tmp_path / "sweep"
    args = ["sweep", str(config), "--space", str(space), "--out", str(out), "--trials", "2"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "winner: trial" in first.output or "tie: take the cheaper" in first.output
    assert (out / "study.db").is_file() and (out / "score_vs_cost.png").is_file()
    best = load_config(out / "best.yaml")
    assert best.method.r in (2, 4)
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(trials) == 2 and {t["state"] for t in trials} == {"complete"}
    assert len({Path(t["run_dir"]) for t in trials}) == 2  # one run directory per trial
    again = runner.invoke(app, [*args[:-1], "3"])  # the study continues: one more trial
    assert again.exit_code == 0, again.output
    assert len((out / "trials.jsonl").read_text().splitlines()) == 3


def test_a_trial_the_pruner_rejects_stops_at_its_first_evaluation(
    sweep_setup: tuple[Path, Path], tmp_path: Path
) -> None:
    config, space = sweep_setup
    base = load_config(config)
    result = run_sweep(
        config, [], base, load_space(space), trials=1, budget_seconds=None,
        directory=tmp_path / "pruned", say=lambda line: None,
        pruner=optuna.pruners.ThresholdPruner(lower=0.0),  # reported -val_loss < 0: prune
    )  # fmt: skip
    assert [t.state for t in result.trials] == ["pruned"]
    assert result.trials[0].last_val_loss is not None
    assert not (result.trials[0].run_dir / "eval" / "results.json").exists()
    assert result.verdict == "no trial completed"


def _outcome(number: int, per_item: list[float], seconds: float) -> TrialOutcome:
    score = sum(per_item) / len(per_item)
    return TrialOutcome(number, {}, "complete", Path("."), "accuracy", score, per_item, seconds)


def test_a_winner_needs_an_interval_that_excludes_zero() -> None:
    clear = declare_winner([_outcome(0, [1.0] * 40, 30), _outcome(1, [0.0] * 40, 10)])
    assert clear[0].startswith("winner: trial 0") and clear[1].number == 0
    close = declare_winner([_outcome(0, [1.0, 0.0] * 20, 30),
                            _outcome(1, [0.0, 1.0] * 19 + [1.0, 0.0], 10)])  # fmt: skip
    assert close[0].startswith("tie: take the cheaper (trial 1") and close[1].number == 1


def test_method_knobs_follow_the_sampled_method() -> None:
    assert overrides_for({"method.r": 8, "train.learning_rate": 1e-3}, "lora") == [
        "method.r=8", "train.learning_rate=0.001"
    ]  # fmt: skip
    assert overrides_for({"method.name": "ia3", "method.r": 8}, "lora") == ["method={name: ia3}"]


def test_empty_space_and_small_budget_are_one_line_each(
    sweep_setup: tuple[Path, Path], tmp_path: Path
) -> None:
    config, space = sweep_setup
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    result = runner.invoke(app, ["sweep", str(config), "--space", str(empty)])
    assert result.exit_code == 2 and "search space is empty" in result.output
    result = runner.invoke(app, ["sweep", str(config), "--space", str(space), "--budget", "1e-6s"])
    assert result.exit_code == 2 and "below one trial's plan" in result.output
    assert "Traceback" not in result.output
