"""`monitor_run`: live inputs against a run's training inputs, window by window.

A table of contents: read the reference and the live inputs (cheap errors first),
cut the windows, compute every input's features once, calibrate each window size's
null, test each window, and write ``result.json``, ``to_label.jsonl`` and
``report.html`` under ``RUN_DIR/monitor/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from tunesmith.monitor.calibrate import (
    DEFAULT_ALPHA,
    DEFAULT_DRAWS,
    SignalResult,
    null_distributions,
    test_window,
)
from tunesmith.monitor.errors import MonitorError
from tunesmith.monitor.features import Features, build_features
from tunesmith.monitor.inputs import LiveInputs, read_live_inputs
from tunesmith.monitor.ngrams import characteristic_ngrams, document_counts
from tunesmith.monitor.perplexity import has_weights, prompt_log_perplexity
from tunesmith.monitor.reference import Reference, read_reference
from tunesmith.monitor.signals import (
    MIN_VALIDATION,
    PERPLEXITY_SAMPLE,
    DomainClassifier,
    SampledWindowMean,
    Signal,
    build_signals,
    capped,
)
from tunesmith.monitor.tokenizer import run_tokenizer
from tunesmith.monitor.windows import MIN_WINDOW, Window, make_windows

TOP_INPUTS = 20
Progress = Callable[[str], None]


@dataclass
class WindowResult:
    window: Window
    signals: list[SignalResult]
    drifted: bool
    top_inputs: list[tuple[int, float]] = field(default_factory=list)
    """(position in the live file, domain score) of the most drifted inputs, best first."""
    ngrams: list[dict[str, object]] = field(default_factory=list)
    tested_size: int = 0
    perplexity_scored: int | None = None
    """Prompts of the window the perplexity signal scored (its sample, less any under two
    tokens); None without that signal."""


@dataclass
class MonitorResult:
    run_dir: Path
    live: LiveInputs
    windows: list[WindowResult]
    signal_names: list[str]
    alpha: float
    draws: int
    reference_size: int
    calibration_size: int
    out_dir: Path
    nulls: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    """Each tested window size's null statistics per signal (the report plots them)."""
    perplexity_sample: int | None = None
    """Prompts per window the perplexity signal scores; None without that signal."""
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def latest(self) -> WindowResult:
        return [w for w in self.windows if w.signals][-1]

    @property
    def drifted(self) -> bool:
        return self.latest.drifted


@dataclass
class MonitorSettings:
    window: int | timedelta | None = None
    since: datetime | None = None
    out_dir: Path | None = None
    draws: int = DEFAULT_DRAWS
    alpha: float = DEFAULT_ALPHA
    seed: int = 0
    to_label: int = 50
    perplexity: bool = True
    """Score prompts with the fine-tuned model (needs the run's weights; the slowest signal)."""
    perplexity_sample: int = PERPLEXITY_SAMPLE
    """Prompts per window the fine-tuned model scores (a seeded sample; the null is
    drawn at the same size)."""

    def __post_init__(self) -> None:
        if self.perplexity_sample < MIN_WINDOW:
            raise MonitorError(
                f"--perplexity-sample {self.perplexity_sample}: the perplexity test needs at "
                f"least {MIN_WINDOW} prompts per window. Fix: pass --perplexity-sample "
                f"{MIN_WINDOW} or more, or --no-perplexity to skip the signal."
            )


def monitor_run(
    run_dir: Path, inputs_path: Path, settings: MonitorSettings, on_progress: Progress
) -> MonitorResult:
    """Test every window of ``inputs_path`` for drift against the run's training inputs."""
    reference = read_reference(run_dir)
    live = read_live_inputs(inputs_path, since=settings.since)
    calibration_size = len(reference.prompts) - len(reference.prompts) // 2
    windows = make_windows(live, settings.window, calibration_size)
    on_progress(
        f"{len(live)} live inputs in {len(windows)} window(s) against {len(reference.prompts)} "
        f"training inputs"
    )
    features = _features(run_dir, reference, live, settings.seed, on_progress)
    if (
        settings.perplexity
        and has_weights(run_dir)
        and len(reference.validation_prompts) >= MIN_VALIDATION
    ):
        sampled = _perplexity_sample(features, windows, calibration_size, settings)
        features.log_perplexity = _perplexity(
            run_dir, features, reference, live, sampled, on_progress
        )
    signals = build_signals(features, settings.seed, settings.perplexity_sample)
    nulls: dict[int, dict[str, np.ndarray]] = {}
    reference_grams = document_counts(reference.prompts[i] for i in features.reference)
    results = []
    for window in windows:
        if not window.tested:
            results.append(WindowResult(window, [], False))
            continue
        items = _tested_items(features, window, calibration_size, settings.seed)
        if len(items) not in nulls:
            on_progress(
                f"calibrating the null for windows of {len(items)} ({settings.draws} draws)"
            )
            nulls[len(items)] = null_distributions(
                signals, len(items), draws=settings.draws, seed=settings.seed
            )
        results.append(
            _test(
                signals,
                features,
                live,
                window,
                items,
                nulls[len(items)],
                settings.alpha,
                reference_grams,
            )
        )
        on_progress(f"window {window.index + 1}/{len(windows)}: "
                    f"{'DRIFT' if results[-1].drifted else 'no drift'}")  # fmt: skip
    return MonitorResult(
        run_dir, live, results, [s.name for s in signals], settings.alpha, settings.draws,
        len(features.reference), len(features.calibration),
        settings.out_dir or run_dir / "monitor", nulls,
        settings.perplexity_sample if any(s.name == "perplexity" for s in signals) else None,
    )  # fmt: skip


def _features(
    run_dir: Path, reference: Reference, live: LiveInputs, seed: int, on_progress: Progress
) -> Features:
    total = len(reference.prompts) + len(live) + len(reference.validation_prompts)
    step = max(1000, total // 10)

    def embedded(done: int) -> None:
        if done % step < 64 or done == total:
            on_progress(f"embedding {done}/{total} inputs")

    return build_features(
        reference.prompts, reference.answers, live.prompts, live.answers,
        run_tokenizer(run_dir), labelled=reference.labelled,
        validation_prompts=reference.validation_prompts, seed=seed, on_embedded=embedded,
    )  # fmt: skip


def _perplexity_sample(
    features: Features, windows: list[Window], largest: int, settings: MonitorSettings
) -> np.ndarray:
    """The live items the perplexity signal will look at: its sample of each tested window.

    Drawn exactly as the signal's statistic draws it (`SampledWindowMean.sampled`), so
    only these prompts need the fine-tuned model.
    """
    samples = [
        capped(_tested_items(features, w, largest, settings.seed), settings.seed,
               settings.perplexity_sample)
        for w in windows if w.tested
    ]  # fmt: skip
    return np.unique(np.concatenate(samples)) if samples else np.array([], dtype=np.int64)


def _perplexity(
    run_dir: Path,
    features: Features,
    reference: Reference,
    live: LiveInputs,
    sampled: np.ndarray,
    on_progress: Progress,
) -> np.ndarray:
    """Log-perplexity of the sampled live prompts and of every validation prompt (NaN elsewhere)."""
    texts = [
        *(live.prompts[i - features.live_offset] for i in sampled),
        *reference.validation_prompts,
    ]
    step = max(500, len(texts) // 10)

    def scored(done: int) -> None:
        if done % step < 64 or done == len(texts):
            on_progress(
                f"perplexity under the fine-tuned model: {done}/{len(texts)} prompts "
                f"({len(sampled)} sampled live, {len(reference.validation_prompts)} validation)"
            )

    scores = prompt_log_perplexity(run_dir, texts, on_progress=scored)
    column = np.full(len(features.lengths), np.nan, dtype=np.float32)
    column[sampled] = scores[: len(sampled)]
    column[features.validation] = scores[len(sampled) :]
    return column


def _tested_items(features: Features, window: Window, largest: int, seed: int) -> np.ndarray:
    """The window's item indices; a time window longer than the calibration pool is subsampled."""
    items = features.live(window.positions)
    if len(items) > largest:
        rng = np.random.default_rng([seed, window.index])
        items = np.sort(rng.choice(items, size=largest, replace=False))
    return items


def _test(
    signals: list[Signal],
    features: Features,
    live: LiveInputs,
    window: Window,
    items: np.ndarray,
    nulls: dict[str, np.ndarray],
    alpha: float,
    reference_grams,
) -> WindowResult:
    results = test_window(signals, items, nulls, alpha)
    classifier = next(s for s in signals if isinstance(s, DomainClassifier))
    scored = capped(items)
    scores = classifier.score(scored).window_scores
    order = np.argsort(-scores)[:TOP_INPUTS]
    top = [(int(scored[i] - features.live_offset), float(scores[i])) for i in order]
    texts = [live.prompts[p] for p in window.positions]
    return WindowResult(
        window, results, any(r.drifted for r in results), top,
        characteristic_ngrams(texts, reference_grams), len(items), _scored(signals, items),
    )  # fmt: skip


def _scored(signals: list[Signal], items: np.ndarray) -> int | None:
    perplexity = next((s for s in signals if isinstance(s, SampledWindowMean)), None)
    if perplexity is None:
        return None
    return int(np.count_nonzero(~np.isnan(perplexity.column[perplexity.sampled(items)])))
