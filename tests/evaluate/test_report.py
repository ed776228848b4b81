"""report.html renders offline in headless Chromium with every table row and plot in place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.evaluate.compare import BASE_FEW_SHOT, BASE_ZERO_SHOT, FINE_TUNED, compare_systems
from tunesmith.evaluate.perplexity import ForgettingCheck
from tunesmith.evaluate.report import (
    ReportInputError,
    pick_samples,
    read_loss_curves,
    write_report,
)

from ..browser import CHROMIUM, CHROMIUM_ARGS, chromium_or_skip


def _metrics_jsonl(path: Path) -> Path:
    lines = []
    for step in range(10, 110, 10):
        lines.append({"step": step, "train_loss": 2.0 / (step / 10), "lr": 1e-4})
        if step % 20 == 0:
            lines.append({"step": step, "val_loss": abs(step - 60) / 40 + 1.0})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    return path


def _comparison_inputs(make_conversation):
    labels = ["positive", "negative"]
    items = [
        make_conversation(f"review <{i}> & more", labels[i % 2], label=labels[i % 2], line=i)
        for i in range(24)
    ]
    flip = {"positive": "negative", "negative": "positive"}

    def answers(n_correct: int) -> list[str]:
        return [item.label if i < n_correct else flip[item.label] for i, item in enumerate(items)]

    systems = {BASE_ZERO_SHOT: answers(8), BASE_FEW_SHOT: answers(14), FINE_TUNED: answers(21)}
    return items, systems, compare_systems(items, systems, n_resamples=300)


def test_loss_curves_and_best_validation_step(tmp_path: Path) -> None:
    curves = read_loss_curves(_metrics_jsonl(tmp_path / "metrics.jsonl"))
    assert len(curves.train) == 10
    assert curves.best_validation == (60, 1.0)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"step": 1, "train_loss": 2}\n{oops\n', encoding="utf-8")
    with pytest.raises(ReportInputError, match=r"broken\.jsonl:2"):
        read_loss_curves(broken)


def test_samples_put_wrong_answers_first(make_conversation) -> None:
    items, systems, comparison = _comparison_inputs(make_conversation)
    samples = pick_samples(items, systems, comparison, n=5)
    assert [sample.scores[FINE_TUNED] for sample in samples] == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert samples[0].reference == items[21].label


def test_report_is_self_contained_with_pngs_beside_it(tmp_path: Path, make_conversation) -> None:
    items, systems, comparison = _comparison_inputs(make_conversation)
    forgetting = ForgettingCheck(20.0, 23.0, 0.10, 512, "bundled WikiText-2 test slice")
    report = write_report(
        tmp_path / "eval",
        comparison,
        _metrics_jsonl(tmp_path / "metrics.jsonl"),
        forgetting,
        pick_samples(items, systems, comparison),
    )
    page = report.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "review &lt;0&gt; &amp; more" in page
    assert "forgetting flagged" in page
    for name in ("comparison.png", "loss_curves.png", "forgetting.png"):
        assert (report.parent / name).read_bytes().startswith(b"\x89PNG")


def test_report_without_training_metrics_or_forgetting(tmp_path: Path, make_conversation) -> None:
    _, _, comparison = _comparison_inputs(make_conversation)
    report = write_report(tmp_path, comparison, None, None, [])
    page = report.read_text(encoding="utf-8")
    assert "No training metrics" in page and "forgetting check was not run" in page
    assert not (tmp_path / "loss_curves.png").exists()


def test_report_renders_in_headless_chromium(tmp_path: Path, make_conversation) -> None:
    chromium_or_skip("render the report")
    from playwright.sync_api import sync_playwright

    items, systems, comparison = _comparison_inputs(make_conversation)
    forgetting = ForgettingCheck(20.0, 21.0, 0.10, 512, "bundled WikiText-2 test slice")
    samples = pick_samples(items, systems, comparison, n=6)
    report = write_report(
        tmp_path, comparison, _metrics_jsonl(tmp_path / "metrics.jsonl"), forgetting, samples
    )
    requested: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.goto(report.as_uri(), wait_until="load")
            metric_rows = page.locator("table.comparison tbody tr th").all_inner_texts()
            header = page.locator("table.comparison thead th").all_inner_texts()
            sample_rows = page.locator("table.samples tbody tr").count()
            verdict = page.locator("#verdict").inner_text()
            widths = page.eval_on_selector_all(
                "img", "images => images.map(image => image.complete ? image.naturalWidth : 0)"
            )
        finally:
            browser.close()
    assert metric_rows == ["accuracy", "macro_f1"]
    assert header[1:4] == [BASE_ZERO_SHOT, BASE_FEW_SHOT, FINE_TUNED]
    assert sample_rows == 6
    assert verdict == comparison.verdict
    assert len(widths) == 3
    assert all(width > 0 for width in widths)
    assert all(url.startswith(("file:", "data:")) for url in requested)
