"""`tunesmith sweep`: Optuna TPE over a search space, one training process per trial.

Each trial is `tunesmith train` in its own process and run directory, so no memory
survives from one trial to the next; all of them read the same tokenized cache
(`$TUNESMITH_CACHE/tokenized`), so the data is tokenized once. While a trial trains, its
`metrics.jsonl` is followed and every validation loss goes to the pruner, which stops
the trial (SIGTERM: the run stops cleanly) when it trails the others at that step.
Finished trials are scored by their evaluation's task metric. The study lives in SQLite
in the sweep directory, so a killed sweep continues where it stopped.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.config import RunConfig
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.bootstrap import paired_difference_interval
from tunesmith.plan.space import Dimension, overrides_for

POLL_SECONDS = 0.5
LOWER_IS_BETTER = {"perplexity"}


class SweepError(TunesmithError):
    """A sweep that cannot run as asked (budget, space); the message says what to change."""


@dataclass
class TrialOutcome:
    number: int
    params: dict[str, Any]
    state: str
    run_dir: Path
    metric: str | None = None
    score: float | None = None
    per_item: list[float] = field(default_factory=list)
    seconds: float = 0.0
    last_val_loss: float | None = None


@dataclass
class SweepResult:
    directory: Path
    trials: list[TrialOutcome]
    verdict: str
    best_config: Path | None
    plot: Path | None


def parse_duration(text: str) -> float:
    """'30m', '2h', '90s', '45' (seconds) as seconds."""
    raw = text.strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(raw[-1:])
    number = raw[:-1] if scale else raw
    try:
        value = float(number) * (scale or 1)
    except ValueError:
        value = -1
    if value <= 0:
        raise SweepError(f"--budget {text!r}: expected a duration such as 30m, 2h or 90s.")
    return value


def check_budget(budget_seconds: float | None, trial_seconds: float, shown: str) -> None:
    if budget_seconds is not None and budget_seconds < trial_seconds:
        raise SweepError(
            f"--budget {shown}: below one trial's plan (~{trial_seconds / 60:.1f} min). Raise "
            "--budget, or make a trial smaller (train.max_steps, fewer examples)."
        )


def run_sweep(
    config_path: Path,
    base_overrides: Sequence[str],
    base: RunConfig,
    space: list[Dimension],
    *,
    trials: int,
    budget_seconds: float | None,
    directory: Path,
    say: Callable[[str], None] = print,
    pruner: Any = None,
) -> SweepResult:
    """Run (or continue) the study in ``directory``; rank, test the winner, write best.yaml.

    ``pruner`` defaults to Optuna's median pruner (after two complete trials)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directory.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name="tunesmith", storage=f"sqlite:///{directory / 'study.db'}",
        load_if_exists=True, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=base.train.seed),
        pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )  # fmt: skip
    started = time.monotonic()
    done = len([t for t in study.trials if t.state.is_finished()])
    while done < trials:
        if budget_seconds is not None and time.monotonic() - started >= budget_seconds:
            say(f"budget spent after {done} trial(s)")
            break
        trial = study.ask()
        params = {d.key: d.suggest(trial) for d in space}
        outcome = _run_trial(trial, config_path, base_overrides, base, params, directory, say)
        if outcome.state == "complete":
            study.tell(trial, outcome.score)
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED if outcome.state == "pruned"
                       else optuna.trial.TrialState.FAIL)  # fmt: skip
        _save_outcome(directory, outcome)
        done += 1
    outcomes = _load_outcomes(directory)
    verdict, best = declare_winner(outcomes)
    best_config = None
    if best is not None:
        best_config = directory / "best.yaml"
        shutil.copyfile(best.run_dir / "config.yaml", best_config)
    return SweepResult(directory, outcomes, verdict, best_config, _plot(directory, outcomes))


def _run_trial(trial, config_path, base_overrides, base, params, directory, say) -> TrialOutcome:
    number = trial.number
    name = f"trial-{number:03d}"
    overrides = [*base_overrides, *overrides_for(params, base.method.name),
                 f"output.dir={directory / 'trials'}", f"output.name={name}"]  # fmt: skip
    command = [sys.executable, "-m", "tunesmith.cli", "train", str(config_path)]
    for item in overrides:
        command += ["--set", item]
    run_dir = directory / "trials" / name
    say(f"trial {number}: {', '.join(f'{k}={v}' for k, v in params.items())}")
    outcome = TrialOutcome(number, params, "failed", run_dir)
    begun = time.monotonic()
    with open(directory / f"{name}.log", "w", encoding="utf-8") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        pruned = _follow(child, run_dir / "metrics.jsonl", trial, outcome)
    outcome.seconds = round(time.monotonic() - begun, 1)
    if pruned:
        outcome.state = "pruned"
        say(f"trial {number}: pruned at val loss {outcome.last_val_loss:.4f}")
        return outcome
    if child.returncode != 0:
        say(f"trial {number}: failed (exit {child.returncode}; see {directory / (name + '.log')})")
        return outcome
    _score(outcome)
    say(f"trial {number}: {outcome.metric} {outcome.score:.4f} in {outcome.seconds:.0f} s")
    return outcome


def _follow(child: subprocess.Popen, metrics: Path, trial: Any, outcome: TrialOutcome) -> bool:
    """Feed each new validation loss to the pruner; stop the child when it says so."""
    seen = 0
    while True:
        finished = child.poll() is not None
        lines = metrics.read_text(encoding="utf-8").splitlines() if metrics.is_file() else []
        for line in lines[seen:]:
            record = json.loads(line) if line.strip().startswith("{") else {}
            if "val_loss" in record:
                outcome.last_val_loss = float(record["val_loss"])
                trial.report(-outcome.last_val_loss, int(record["step"]))
                if trial.should_prune() and not finished:
                    child.send_signal(signal.SIGTERM)
                    child.wait()
                    return True
        seen = len(lines)
        if finished:
            return False
        time.sleep(POLL_SECONDS)


def _score(outcome: TrialOutcome) -> None:
    results = json.loads((outcome.run_dir / "eval" / "results.json").read_text(encoding="utf-8"))
    primary = results["comparison"]["metrics"][0]
    candidate = results["comparison"]["candidate"]
    sign = -1.0 if primary["metric"] in LOWER_IS_BETTER else 1.0
    outcome.metric = primary["metric"]
    outcome.score = sign * float(primary["values"][candidate]["estimate"])
    outcome.per_item = [sign * float(v) for v in primary.get("per_item", {}).get(candidate, [])]
    outcome.state = "complete"


def _save_outcome(directory: Path, outcome: TrialOutcome) -> None:
    record = {**outcome.__dict__, "run_dir": str(outcome.run_dir)}
    with open(directory / "trials.jsonl", "a", encoding="utf-8") as stream:
        stream.write(json.dumps(record) + "\n")


def _load_outcomes(directory: Path) -> list[TrialOutcome]:
    path = directory / "trials.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return [TrialOutcome(**{**row, "run_dir": Path(row["run_dir"])}) for row in rows]


def ranked(outcomes: list[TrialOutcome]) -> list[TrialOutcome]:
    """Completed trials, best score first; cheaper first among equal scores."""
    complete = [o for o in outcomes if o.state == "complete" and o.score is not None]
    return sorted(complete, key=lambda o: (-o.score, o.seconds))


def declare_winner(outcomes: list[TrialOutcome]) -> tuple[str, TrialOutcome | None]:
    """The best trial, declared the winner only when the paired bootstrap interval of its
    gain over the runner-up excludes zero; otherwise the cheaper of the two is taken."""
    order = ranked(outcomes)
    if not order:
        return "no trial completed", None
    if len(order) == 1:
        return f"only trial {order[0].number} completed", order[0]
    best, runner_up = order[0], order[1]
    if best.per_item and len(best.per_item) == len(runner_up.per_item):
        gain = paired_difference_interval(np.array(best.per_item), np.array(runner_up.per_item))
        if gain.low > 0:
            return (
                f"winner: trial {best.number} ({best.metric} {abs(best.score):.4f}; gain over "
                f"trial {runner_up.number} {gain.estimate:+.4f}, 95% CI [{gain.low:+.4f}, "
                f"{gain.high:+.4f}])", best,
            )  # fmt: skip
        interval = f"gain {gain.estimate:+.4f}, 95% CI [{gain.low:+.4f}, {gain.high:+.4f}]"
    else:
        interval = "no per-item scores to compare"
    cheaper = min((best, runner_up), key=lambda o: o.seconds)
    return (
        f"tie: take the cheaper (trial {cheaper.number}, {cheaper.seconds:.0f} s; trials "
        f"{best.number} and {runner_up.number}: {interval})", cheaper,
    )  # fmt: skip


def _plot(directory: Path, outcomes: list[TrialOutcome]) -> Path | None:
    order = ranked(outcomes)
    if not order:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    axes.scatter([o.seconds for o in order], [abs(o.score) for o in order])
    for o in order:
        axes.annotate(str(o.number), (o.seconds, abs(o.score)))
    axes.set_xlabel("trial cost (seconds of training and evaluation)")
    axes.set_ylabel(order[0].metric or "score")
    axes.set_title("sweep: score vs cost")
    path = directory / "score_vs_cost.png"
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
