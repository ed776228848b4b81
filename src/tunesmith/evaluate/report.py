"""report.html: one self-contained page that shows whether fine-tuning paid off.

The page must open anywhere, offline, attached to an e-mail or a CI artifact: plots are
inline base64 PNGs, the CSS is inline, and there is no JavaScript. The same plots are
also written next to it as PNG files for slides and issues.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from tunesmith.data.records import Conversation
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.compare import Comparison, MetricRow
from tunesmith.evaluate.generate import split_prompt_and_reference
from tunesmith.evaluate.perplexity import ForgettingCheck

REPORT_NAME = "report.html"
BETTER = "#1a7f37"
WORSE = "#cf222e"
NEUTRAL = "#9a6700"
SYSTEM_COLOURS = ["#8c959f", "#54aeff", "#1a7f37", "#bf8700", "#8250df"]


class ReportInputError(TunesmithError, ValueError):
    """An input of the report (metrics.jsonl) is malformed; the message names file and line."""


@dataclass(frozen=True)
class SampleRow:
    """One test item side by side: prompt, reference, each system's output and its score."""

    prompt: str
    reference: str
    outputs: dict[str, str]
    scores: dict[str, float]


def pick_samples(
    test_items: Sequence[Conversation],
    systems: dict[str, list[str]],
    comparison: Comparison,
    n: int = 12,
) -> list[SampleRow]:
    """Up to ``n`` items, the fine-tuned model's worst first (by the primary metric's item score).

    Errors are what a user needs to read; ties keep test-set order so the pick is stable.
    """
    primary = comparison.scores[comparison.primary.metric]
    candidate_scores = primary[comparison.candidate].per_item
    order = sorted(range(len(test_items)), key=lambda index: (candidate_scores[index], index))
    rows = []
    for index in order[:n]:
        prompt, reference = split_prompt_and_reference(test_items[index])
        rows.append(
            SampleRow(
                prompt="\n\n".join(f"[{message.role}] {message.content}" for message in prompt),
                reference=test_items[index].label or reference,
                outputs={system: outputs[index] for system, outputs in systems.items()},
                scores={system: float(primary[system].per_item[index]) for system in systems},
            )
        )
    return rows


@dataclass(frozen=True)
class LossCurves:
    """Training and validation loss by step, read from a run's metrics.jsonl."""

    train: list[tuple[int, float]]
    validation: list[tuple[int, float]]

    @property
    def best_validation(self) -> tuple[int, float] | None:
        return min(self.validation, key=lambda point: point[1]) if self.validation else None


def read_loss_curves(metrics_jsonl_path: Path) -> LossCurves:
    """``train_loss`` and ``val_loss`` points by ``step``; other keys and lines are ignored."""
    train: list[tuple[int, float]] = []
    validation: list[tuple[int, float]] = []
    with metrics_jsonl_path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                raise ReportInputError(
                    f"{metrics_jsonl_path}:{number}: not valid JSON ({error.msg}); each line "
                    'must be one JSON object such as {"step": 10, "train_loss": 1.2}'
                ) from None
            if not isinstance(record, dict) or "step" not in record:
                continue
            for key, points in (("train_loss", train), ("val_loss", validation)):
                value = record.get(key)
                if isinstance(value, int | float) and math.isfinite(value):
                    points.append((int(record["step"]), float(value)))
    return LossCurves(sorted(train), sorted(validation))


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _styled_axes(figure: Figure, title: str):
    axes = figure.add_subplot()
    axes.set_title(title, loc="left", fontsize=11, fontweight="bold")
    axes.spines[["top", "right"]].set_visible(False)
    axes.grid(alpha=0.25)
    return axes


def loss_curve_png(curves: LossCurves) -> bytes:
    """Train and validation loss against step, with the best validation step marked."""
    figure = Figure(figsize=(7, 3.6))
    axes = _styled_axes(figure, "Loss")
    if curves.train:
        steps, losses = zip(*curves.train, strict=True)
        axes.plot(steps, losses, color="#54aeff", linewidth=1.4, label="train loss")
    if curves.validation:
        steps, losses = zip(*curves.validation, strict=True)
        axes.plot(steps, losses, color="#bf8700", marker="o", markersize=3, label="validation loss")
    best = curves.best_validation
    if best is not None:
        axes.axvline(best[0], color=BETTER, linestyle="--", linewidth=1)
        axes.annotate(
            f"best val {best[1]:.3f} @ step {best[0]}",
            xy=best,
            xytext=(6, 10),
            textcoords="offset points",
            color=BETTER,
            fontsize=9,
        )
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.legend(frameon=False)
    return _png(figure)


def comparison_png(comparison: Comparison) -> bytes:
    """Each metric per system with its 95% interval as error bars (points = metric x 100)."""
    figure = Figure(figsize=(7, 3.6))
    axes = _styled_axes(figure, "Metrics by system (95% CI)")
    width = 0.8 / len(comparison.systems)
    for position, system in enumerate(comparison.systems):
        centres = [
            metric + (position - (len(comparison.systems) - 1) / 2) * width
            for metric in range(len(comparison.rows))
        ]
        intervals = [row.intervals[system] for row in comparison.rows]
        scales = [100 if row.proportion else 1 for row in comparison.rows]
        heights = [
            interval.estimate * scale for interval, scale in zip(intervals, scales, strict=True)
        ]
        errors = [
            [
                max(0.0, (interval.estimate - interval.low) * scale)
                for interval, scale in zip(intervals, scales, strict=True)
            ],
            [
                max(0.0, (interval.high - interval.estimate) * scale)
                for interval, scale in zip(intervals, scales, strict=True)
            ],
        ]
        axes.bar(
            centres,
            heights,
            width * 0.92,
            yerr=errors,
            capsize=3,
            label=system,
            color=SYSTEM_COLOURS[position % len(SYSTEM_COLOURS)],
        )
    axes.set_xticks(range(len(comparison.rows)), [row.metric for row in comparison.rows])
    axes.set_ylabel(
        "points" if all(row.proportion for row in comparison.rows) else "points (shares) / value"
    )
    axes.legend(
        frameon=False,
        fontsize=9,
        ncols=len(comparison.systems),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12),
    )
    return _png(figure)


def forgetting_png(forgetting: ForgettingCheck) -> bytes:
    """Base vs fine-tuned perplexity on general text; red when the rise is flagged."""
    figure = Figure(figsize=(5, 3.2))
    axes = _styled_axes(figure, "General-text perplexity (lower is better)")
    tuned_colour = WORSE if forgetting.flagged else BETTER
    values = [forgetting.base_perplexity, forgetting.fine_tuned_perplexity]
    bars = axes.bar(["base", "fine-tuned"], values, color=["#8c959f", tuned_colour], width=0.5)
    axes.bar_label(bars, labels=[f"{value:.2f}" for value in values], padding=3)
    axes.axhline(
        forgetting.base_perplexity * (1 + forgetting.threshold),
        color=NEUTRAL,
        linestyle="--",
        linewidth=1,
        label=f"flag above +{forgetting.threshold:.0%}",
    )
    axes.set_ylim(0, max(values) * 1.25)
    axes.legend(frameon=False, fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    return _png(figure)


_CSS = """
body{font:15px/1.5 -apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif;
color:#1f2328;background:#f6f8fa;margin:0}
main{max-width:1100px;margin:0 auto;padding:28px 24px 60px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 10px}
.sub{color:#59636e;margin:0 0 18px}
.card{background:#fff;border:1px solid #d1d9e0;border-radius:10px;padding:16px 18px;margin:12px 0}
.verdict{font-size:17px;font-weight:600;border-left:6px solid}
.verdict.good{border-color:#1a7f37;color:#1a7f37}.verdict.bad{border-color:#9a6700;color:#7d4e00}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:7px 10px;border-bottom:1px solid #e5e9ee;text-align:left;vertical-align:top}
th{background:#f0f3f6;font-weight:600;font-size:13px;color:#424a53}
td.num{text-align:right;white-space:nowrap}.ci{color:#6e7781;font-size:12px}
.better{color:#1a7f37;font-weight:600}.worse{color:#cf222e;font-weight:600}
.unclear{color:#9a6700;font-weight:600}
td.ok{background:#dafbe1}td.wrong{background:#ffebe9}
.samples td{font-size:13px;max-width:260px;white-space:pre-wrap;word-break:break-word}
img{max-width:100%;height:auto;display:block}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots .card{flex:1 1 420px}
.flag{color:#cf222e;font-weight:600}.fine{color:#1a7f37;font-weight:600}
.muted{color:#6e7781}
"""


def _img(png: bytes, alt: str) -> str:
    encoded = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _css(row: MetricRow) -> str:
    return "better" if row.clearly_better else "worse" if row.clearly_worse else "unclear"


def _comparison_html(comparison: Comparison) -> str:
    head = "".join(f"<th>{html.escape(system)}</th>" for system in comparison.systems)
    rows = []
    for row in comparison.rows:
        cells = []
        for system in comparison.systems:
            interval = row.intervals[system]
            css = ""
            if system == comparison.candidate:
                css = _css(row)
            cells.append(
                f'<td class="num"><span class="{css}">{row.shown(interval.estimate)}</span>'
                f'<br><span class="ci">[{row.shown(interval.low)}, {row.shown(interval.high)}]'
                "</span></td>"
            )
        difference = row.difference
        shown = row.shown_difference
        cells.append(
            f'<td class="num"><span class="{_css(row)}">{shown(difference.estimate)}</span>'
            f'<br><span class="ci">[{shown(difference.low)}, {shown(difference.high)}]'
            f" vs {html.escape(row.best_baseline)}</span></td>"
        )
        name = row.metric + ("" if row.higher_is_better else " (lower is better)")
        rows.append(f'<tr><th scope="row">{html.escape(name)}</th>{"".join(cells)}</tr>')
    return (
        '<table class="comparison"><thead><tr><th>metric</th>'
        f"{head}<th>{html.escape(comparison.candidate)} − best baseline</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _samples_html(samples: Sequence[SampleRow], systems: Sequence[str]) -> str:
    if not samples:
        return '<p class="muted">No samples.</p>'
    head = "".join(f"<th>{html.escape(system)}</th>" for system in systems)
    rows = []
    for sample in samples:
        outputs = "".join(
            f'<td class="{"ok" if sample.scores[system] >= 0.5 else "wrong"}">'
            f"{html.escape(sample.outputs[system])}"
            f'<br><span class="ci">score {sample.scores[system]:.2f}</span></td>'
            for system in systems
        )
        rows.append(
            f"<tr><td>{html.escape(sample.prompt)}</td>{outputs}"
            f"<td>{html.escape(sample.reference)}</td></tr>"
        )
    return (
        '<table class="samples"><thead><tr><th>prompt</th>'
        f"{head}<th>reference</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def write_report(
    out_dir: str | Path,
    comparison: Comparison,
    metrics_jsonl_path: str | Path | None,
    forgetting: ForgettingCheck | None,
    samples: Sequence[SampleRow],
    *,
    task: str = "held-out test items",
    samples_title: str | None = None,
) -> Path:
    """Write ``report.html`` (self-contained) and a PNG of each plot into ``out_dir``.

    ``metrics_jsonl_path`` and ``forgetting`` may be None (evaluation without a training run,
    or with the forgetting check off); their sections then say so instead of showing a plot.
    ``task`` names what was evaluated ("held-out preference pairs"); ``samples_title``
    heads the side-by-side table (default: worst fine-tuned items first).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, bytes] = {"comparison.png": comparison_png(comparison)}
    loss_section = '<p class="muted">No training metrics (metrics.jsonl) were given.</p>'
    if metrics_jsonl_path is not None and Path(metrics_jsonl_path).is_file():
        curves = read_loss_curves(Path(metrics_jsonl_path))
        if curves.train or curves.validation:
            plots["loss_curves.png"] = loss_curve_png(curves)
            best = curves.best_validation
            note = (
                f"Best validation loss {best[1]:.4f} at step {best[0]}."
                if best
                else "No validation loss was logged."
            )
            loss_section = (
                f"{_img(plots['loss_curves.png'], 'train and validation loss')}"
                f'<p class="muted">{note}</p>'
            )
    forgetting_section = '<p class="muted">The forgetting check was not run.</p>'
    if forgetting is not None:
        plots["forgetting.png"] = forgetting_png(forgetting)
        css = "flag" if forgetting.flagged else "fine"
        forgetting_section = (
            f"{_img(plots['forgetting.png'], 'general-text perplexity')}"
            f'<p class="{css}">{html.escape(forgetting.summary())}</p>'
            f'<p class="muted">{forgetting.n_tokens} tokens of '
            f"{html.escape(forgetting.text_source)}.</p>"
        )
    for name, png in plots.items():
        (out / name).write_bytes(png)
    verdict_css = "good" if comparison.beats_baseline else "bad"
    default_samples_title = (
        f"Side-by-side outputs ({comparison.primary.metric}; worst fine-tuned first)"
    )
    primary = comparison.primary.difference
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tunesmith evaluation report</title><style>{_CSS}</style></head>
<body><main>
<h1>Evaluation report</h1>
<p class="sub">{comparison.n_items} {html.escape(task)} · {primary.n_resamples} paired bootstrap
resamples · shares in points (metric × 100)</p>
<div class="card verdict {verdict_css}" id="verdict">{html.escape(comparison.verdict)}</div>
<h2>Fine-tuned vs baselines</h2>
<div class="card">{_comparison_html(comparison)}</div>
<div class="plots">
<div class="card"><h2>Metrics</h2>{_img(plots["comparison.png"], "metrics by system")}</div>
<div class="card"><h2>Catastrophic forgetting</h2>{forgetting_section}</div>
</div>
<h2>Training</h2>
<div class="card">{loss_section}</div>
<h2>{html.escape(samples_title or default_samples_title)}</h2>
<div class="card">{_samples_html(samples, comparison.systems)}</div>
</main></body></html>
"""
    path = out / REPORT_NAME
    path.write_text(page, encoding="utf-8")
    return path
