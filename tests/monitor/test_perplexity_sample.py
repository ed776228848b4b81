"""The perplexity signal on a sample of each window: its null, its cost, and its batching."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.monitor.calibrate import null_distributions, p_value
from tunesmith.monitor.perplexity import length_batches, prompt_log_perplexity
from tunesmith.monitor.signals import SampledWindowMean

from .conftest import sms_texts, snips_rows

runner = CliRunner()
POOL = 1000
WINDOW = 200
SAMPLE = 25


def _signal(column: np.ndarray) -> SampledWindowMean:
    pool = np.arange(POOL)
    return SampledWindowMean("x", "", column, float(column[pool].mean()), pool, SAMPLE)


def test_the_null_is_drawn_at_the_sample_size_so_p_values_stay_calibrated() -> None:
    rng = np.random.default_rng(4)
    live_windows = 400
    column = rng.normal(size=POOL + live_windows * WINDOW)
    signal = _signal(column)
    null = null_distributions([signal], WINDOW, draws=400, seed=0)["x"]
    # a mean of 25 standard normals, not of the window's 200
    assert null.std() == pytest.approx(1 / np.sqrt(SAMPLE), rel=0.15)
    p = np.array(
        [
            p_value(signal.statistic(np.arange(POOL + i * WINDOW, POOL + (i + 1) * WINDOW)), null)
            for i in range(live_windows)
        ]
    )
    # no drift: live windows are more draws from the same distribution, p is uniform
    assert 0.02 <= np.mean(p <= 0.05) <= 0.09
    assert 0.42 <= np.mean(p <= 0.5) <= 0.58


def test_the_statistic_reads_only_its_sample_so_nothing_else_needs_scoring() -> None:
    column = np.random.default_rng(5).normal(size=POOL + WINDOW)
    signal = _signal(column)
    window = np.arange(POOL, POOL + WINDOW)
    sample = signal.sampled(window)
    assert len(sample) == SAMPLE and set(sample) <= set(window)
    unscored = column.copy()
    unscored[np.setdiff1d(window, sample)] = np.nan
    assert replace(signal, column=unscored).statistic(window) == signal.statistic(window)
    small = window[: SAMPLE - 5]  # a window smaller than the sample is scored whole
    assert np.array_equal(signal.sampled(small), small)


def test_length_batches_cover_every_text_once_within_the_token_budget() -> None:
    lengths = [3, 120, 7, 7, 64, 1, 30, 128, 9, 2] * 7
    batches = length_batches(lengths, 256)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    for batch in batches:
        longest = max(2, max(lengths[i] for i in batch))
        assert len(batch) == 1 or len(batch) * longest <= 256
    assert len(batches) < len(lengths) / 3  # short texts share batches


def test_length_sorted_batches_score_like_one_text_at_a_time(snips_run: Path) -> None:
    texts = [r["text"] for r in snips_rows()[:12]] + sms_texts()[:12] + ["", "a"]
    batched = prompt_log_perplexity(snips_run, texts)
    alone = prompt_log_perplexity(snips_run, texts, tokens_per_batch=1)
    assert np.isnan(batched[-2])  # an empty prompt has no token to predict
    np.testing.assert_allclose(batched, alone, rtol=1e-4, atol=1e-4)
    assert np.isfinite(batched[:-2]).all()


def test_each_window_scores_its_sample_and_result_json_says_how_many(
    snips_run: Path, sms_log: Path, tmp_path: Path
) -> None:
    result = runner.invoke(
        app,
        ["monitor", str(snips_run), str(sms_log), "--window", "40", "--draws", "200",
         "--perplexity-sample", "20", "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    report = json.loads((tmp_path / "result.json").read_text())
    assert report["perplexity_sample"] == 20
    assert [w["perplexity_scored"] for w in report["windows"]] == [20, 20]
    assert "perplexity" in report["signals"]
    page = (tmp_path / "report.html").read_text()
    assert "sample of 20 prompts per window" in page


def test_a_sample_too_small_to_test_is_one_clear_error(snips_run: Path, sms_log: Path) -> None:
    result = runner.invoke(
        app, ["monitor", str(snips_run), str(sms_log), "--perplexity-sample", "5"]
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert "--perplexity-sample 5" in text and "--no-perplexity" in text
