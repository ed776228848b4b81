"""The monitor's report.html as a person sees it: rendered by headless Chromium.

The string checks of test_monitor_cli.py cannot tell whether the SVG is well-formed
enough to draw, whether a plot has any size, or whether the page asks the network for
something; a browser can.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app

from ..browser import CHROMIUM, CHROMIUM_ARGS, chromium_or_skip, is_blank

runner = CliRunner()


@pytest.fixture(scope="module")
def drift_report(snips_run: Path, sms_log: Path, tmp_path_factory: pytest.TempPathFactory):
    chromium_or_skip("render the monitor's report")
    out = tmp_path_factory.mktemp("monitor-report")
    result = runner.invoke(
        app, ["monitor", str(snips_run), str(sms_log), "--window", "40", "--draws", "200",
              "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    return out / "report.html", json.loads((out / "result.json").read_text())


def _render(report: Path, shot: Path) -> dict:
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    requested: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("request", lambda request: requested.append(request.url))
            page.goto(report.as_uri(), wait_until="load")
            seen = page.evaluate(
                """() => {
                  const box = (e) => { const r = e.getBoundingClientRect();
                                       return [r.width, r.height]; };
                  const timeline = document.querySelector('#timeline');
                  return {
                    verdict: document.querySelector('#verdict').innerText,
                    timeline: timeline ? box(timeline) : null,
                    cells: timeline ? timeline.querySelectorAll('rect').length : 0,
                    plots: [...document.querySelectorAll('.plots svg')].map((svg) => ({
                      signal: svg.dataset.signal,
                      size: box(svg),
                      bars: [...svg.querySelectorAll('rect')]
                        .filter((r) => r.getBBox().height > 0).length,
                      marks: svg.querySelectorAll('line').length,
                    })),
                    inputs: [...document.querySelectorAll('#top-inputs tr')].slice(1)
                      .map((row) => row.cells[2].innerText),
                  };
                }"""
            )
            png = page.screenshot(full_page=True, path=str(shot))
        finally:
            browser.close()
    return {**seen, "problems": problems, "requested": requested, "png": png}


def test_the_report_renders_its_verdict_timeline_plots_and_inputs(drift_report, tmp_path) -> None:
    report, result = drift_report
    seen = _render(report, tmp_path / "report.png")
    assert seen["problems"] == []
    assert all(url.startswith(("file:", "data:")) for url in seen["requested"])
    assert not is_blank(seen["png"])
    assert seen["verdict"] == result["verdict"] == "drift"
    width, height = seen["timeline"]
    assert width > 100 and height > 50
    assert seen["cells"] == len(result["windows"]) * len(result["signals"])
    signals = [s["name"] for s in result["windows"][-1]["signals"]]
    assert [plot["signal"] for plot in seen["plots"]] == signals
    for plot in seen["plots"]:
        assert plot["size"][0] > 100 and plot["size"][1] > 50, plot
        assert plot["bars"] >= 1 and plot["marks"] == 2, plot
    shown = [_words(row["prompt"][:300]) for row in result["windows"][-1]["top_inputs"]]
    assert len(seen["inputs"]) >= 10
    assert [_words(text) for text in seen["inputs"][: len(shown)]] == shown


def _words(text: str) -> str:
    """Text as the browser lays it out: runs of white space are one space."""
    return " ".join(text.split())
