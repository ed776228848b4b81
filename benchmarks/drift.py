"""False alarms and detection power of `tunesmith monitor`, on real data from ../shared/data.

    .venv/bin/python benchmarks/drift.py [--windows 100] [--mix-windows 50] [--json out.json]

The training inputs are the Snips NLU train requests (2,100 across 7 intents), read
through a run config exactly as `tunesmith monitor` reads a run (80/10/10 split, the
SmolLM2 tokenizer). Windows of live inputs are drawn from
  * no drift: the Snips *validate* requests (700 the run never saw, same task);
  * drift: SMS messages (UCI SMS Spam Collection, 5,574), another domain;
  * mixtures: 10%, 25% or 50% SMS among Snips validate requests.
Each window is tested with every input signal at the defaults (400 null draws per
window size, Holm at α = 0.05 across signals), as `tunesmith monitor` tests its
newest window; the benchmark computes the features once and draws windows as index
sets, so it measures the same statistics without re-embedding per window. Output
checks (labels, refusals) need the model's answers and are not part of it.

The no-drift windows are drawn from a pool of 700, so they overlap: the false-alarm
rate is an estimate over correlated windows, not 100 independent trials.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from tunesmith.config import load_config
from tunesmith.monitor.calibrate import (
    DEFAULT_ALPHA,
    DEFAULT_DRAWS,
    null_distributions,
    test_window,
)
from tunesmith.monitor.features import Features, build_features
from tunesmith.monitor.reference import read_reference
from tunesmith.monitor.signals import Signal, build_signals
from tunesmith.monitor.tokenizer import run_tokenizer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
INTENTS = (
    "AddToPlaylist", "BookRestaurant", "GetWeather", "PlayMusic", "RateBook",
    "SearchCreativeWork", "SearchScreeningEvent",
)  # fmt: skip
SIZES = (50, 100, 200, 500)
MIXTURES = (0.10, 0.25, 0.50)


def snips(kind: str) -> list[tuple[str, str]]:
    """(request, intent) pairs of the Snips ``train`` or ``validate`` files."""
    rows = []
    for intent in INTENTS:
        path = DATA / "snips_nlu" / f"{kind}_{intent}.json"
        for query in json.loads(path.read_text(encoding="latin-1"))[intent]:
            rows.append(("".join(chunk["text"] for chunk in query["data"]).strip(), intent))
    return rows


def sms() -> list[str]:
    lines = (DATA / "sms_spam" / "SMSSpamCollection").read_text(encoding="utf-8").splitlines()
    return [line.split("\t", 1)[1] for line in lines if "\t" in line][1:]


def write_run(directory: Path) -> Path:
    """A run directory whose config trains on Snips train; the monitor reads no weights."""
    data = directory / "snips_train.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": i}) + "\n" for t, i in snips("train")))
    config = load_config(None, [f"data.train=['{data}']", f"output.dir='{directory}'"])
    run = directory / "run"
    run.mkdir()
    (run / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    return run


def window_verdicts(
    signals: list[Signal], features: Features, windows: list[np.ndarray], cache: dict
) -> tuple[float, dict[str, float]]:
    """Share of windows flagged, and share flagged by each signal (after Holm)."""
    n = len(windows[0])
    if n not in cache:
        cache[n] = null_distributions(signals, n, draws=DEFAULT_DRAWS, seed=0)
    flagged = []
    per_signal = {s.name: 0 for s in signals}
    for positions in windows:
        results = test_window(signals, features.live(positions), cache[n], DEFAULT_ALPHA)
        flagged.append(any(r.drifted for r in results))
        for r in results:
            per_signal[r.name] += r.drifted
    return float(np.mean(flagged)), {k: v / len(windows) for k, v in per_signal.items()}


def draw(rng: np.random.Generator, same: np.ndarray, other: np.ndarray, n: int, share: float):
    k = round(share * n)
    return np.concatenate(
        [rng.choice(same, n - k, replace=False), rng.choice(other, k, replace=False)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=100)
    parser.add_argument("--mix-windows", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not (DATA / "snips_nlu").is_dir():
        sys.exit(f"{DATA} is missing: this benchmark needs ../shared/data (see its README).")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run = write_run(Path(tmp))
        reference = read_reference(run)
        held_out = [t for t, _ in snips("validate")]
        other = sms()
        live = held_out + other
        features = build_features(
            reference.prompts,
            reference.answers,
            live,
            [None] * len(live),
            run_tokenizer(run),
            labelled=reference.labelled,
        )
    embedded = time.perf_counter() - started
    signals = build_signals(features)
    same = np.arange(len(held_out))
    drift = np.arange(len(held_out), len(held_out) + len(other))
    rng = np.random.default_rng(0)
    cache: dict = {}
    results: dict[str, object] = {
        "training_inputs": len(reference.prompts),
        "reference": len(features.reference),
        "calibration": len(features.calibration),
        "signals": [s.name for s in signals],
    }
    no_drift = [draw(rng, same, drift, 200, 0.0) for _ in range(args.windows)]
    results["false_alarm_200"] = window_verdicts(signals, features, no_drift, cache)
    other_domain = [draw(rng, same, drift, 200, 1.0) for _ in range(args.windows)]
    results["detection_200_sms"] = window_verdicts(signals, features, other_domain, cache)
    power: dict[str, dict[str, float]] = {}
    for n in SIZES:
        power[str(n)] = {"0%": window_verdicts(
            signals, features, [draw(rng, same, drift, n, 0.0) for _ in range(args.mix_windows)],
            cache)[0]}  # fmt: skip
        for share in MIXTURES:
            windows = [draw(rng, same, drift, n, share) for _ in range(args.mix_windows)]
            power[str(n)][f"{share:.0%}"] = window_verdicts(signals, features, windows, cache)[0]
    results["power"] = power
    results["seconds"] = {
        "features": round(embedded, 1),
        "total": round(time.perf_counter() - started, 1),
    }
    print_tables(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def print_tables(results: dict, args: argparse.Namespace) -> None:
    false_alarm, fa_signals = results["false_alarm_200"]
    detection, det_signals = results["detection_200_sms"]
    print(
        f"training inputs {results['training_inputs']} (reference {results['reference']}, "
        f"calibration {results['calibration']}); signals: {', '.join(results['signals'])}"
    )
    print(
        f"\nfalse alarms, {args.windows} windows of 200 held-out Snips requests: {false_alarm:.1%}"
    )
    print("  by signal: " + ", ".join(f"{k} {v:.0%}" for k, v in fa_signals.items() if v))
    print(f"detection, {args.windows} windows of 200 SMS messages: {detection:.1%}")
    print("  by signal: " + ", ".join(f"{k} {v:.0%}" for k, v in det_signals.items()))
    print(f"\nshare of windows flagged ({args.mix_windows} per cell), SMS mixed into Snips:\n")
    shares = ["0%", *(f"{s:.0%}" for s in MIXTURES)]
    print("| window | " + " | ".join(f"{s} SMS" for s in shares) + " |")
    print("|---:|" + "---:|" * len(shares))
    for n, row in results["power"].items():
        print(f"| {n} | " + " | ".join(f"{row[s]:.0%}" for s in shares) + " |")
    print(f"\nfeatures {results['seconds']['features']} s, total {results['seconds']['total']} s")


if __name__ == "__main__":
    main()
