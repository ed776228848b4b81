"""``report.html``: one self-contained page (inline SVG and CSS, no script, no CDN).

It opens with the verdict, then the drift timeline (a cell per window and signal,
darker for smaller Holm-adjusted p-values, outlined where the signal drifted), then
the newest window's signals: a table with p-values, effect sizes and the smallest
detectable statistic, and for each signal its calibrated null as a histogram with the
observed value drawn on it. It ends with the most drifted inputs and n-grams.
"""

from __future__ import annotations

import math
from html import escape

import numpy as np

from tunesmith.monitor.output import result_dict
from tunesmith.monitor.run import MonitorResult, WindowResult

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em}table{border-collapse:collapse}
td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}.drift{color:#b00;font-weight:600}
.ok{color:#070}.plots{display:flex;flex-wrap:wrap;gap:12px}.plot{width:260px}
.small{color:#666;font-size:12px}
"""


def render_report(result: MonitorResult) -> str:
    summary = result_dict(result)
    latest = result.latest
    verdict_class = "drift" if result.drifted else "ok"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>tunesmith monitor: {escape(summary['verdict'])}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Drift report: <span id='verdict' class='{verdict_class}'>"
        f"{escape(summary['verdict'])}</span></h1>",
        f"<p>{len(result.live)} live inputs from <code>{escape(result.live.file)}</code> against "
        f"the training inputs of <code>{escape(str(result.run_dir))}</code>; "
        f"{summary['windows_drifted']} of {len(result.windows)} window(s) drifted. The verdict "
        f"is the newest window's. Each signal's null comes from {result.draws} windows drawn "
        f"from {result.calibration_size} training inputs, compared with the other "
        f"{result.reference_size}; p-values are Holm-corrected across signals at "
        f"α = {result.alpha}.{_perplexity_note(result)}</p>",
        "<h2>Timeline</h2>",
        _timeline(result),
        f"<h2>Newest window ({latest.tested_size} inputs)</h2>",
        _signal_table(latest),
        "<p class='small'>detectable: the statistic a shift must reach to be flagged with 80% "
        "power at this window size (null quantile at α/k plus 0.84 null sd; approximate). "
        "Larger windows detect smaller shifts: the null's spread falls like 1/√n.</p>",
        "<div class='plots'>",
        *(
            _null_plot(s, result.nulls.get(latest.tested_size, {}).get(s.name))
            for s in latest.signals
        ),
        "</div>",
        "<h2>Most drifted inputs</h2>",
        _top_inputs(result, latest),
        "<h2>Characteristic n-grams of the newest window</h2>",
        _ngrams(latest),
        "</body></html>",
    ]
    return "\n".join(parts)


def _perplexity_note(result: MonitorResult) -> str:
    if result.perplexity_sample is None:
        return ""
    scored = result.latest.perplexity_scored
    return (
        f" Perplexity scores a seeded sample of {result.perplexity_sample} prompts per window "
        f"({scored} in the newest), its null drawn at the same size."
    )


def _timeline(result: MonitorResult) -> str:
    names = result.signal_names
    cell, left, top = 18, 170, 10
    width = left + cell * len(result.windows) + 10
    height = top + cell * len(names) + 30
    out = [
        f"<svg id='timeline' xmlns='http://www.w3.org/2000/svg' width='{width}' "
        f"height='{height}' role='img' aria-label='drift timeline'>"
    ]
    for row, name in enumerate(names):
        y = top + row * cell
        out.append(
            f"<text x='{left - 6}' y='{y + 13}' font-size='11' text-anchor='end'>"
            f"{escape(name)}</text>"
        )
        for col, window in enumerate(result.windows):
            signal = next((s for s in window.signals if s.name == name), None)
            x = left + col * cell
            if signal is None:
                out.append(
                    f"<rect x='{x}' y='{y}' width='{cell - 2}' height='{cell - 2}' "
                    "fill='#eee'><title>not tested</title></rect>"
                )
                continue
            strength = min(1.0, -math.log10(max(signal.p_adjusted, 1e-4)) / 3)
            shade = int(255 - 200 * strength)
            stroke = " stroke='#b00' stroke-width='2'" if signal.drifted else ""
            out.append(
                f"<rect x='{x}' y='{y}' width='{cell - 2}' height='{cell - 2}' "
                f"fill='rgb(255,{shade},{shade})'{stroke}><title>window {col + 1}: {escape(name)} "
                f"p={signal.p_value:.4f} Holm {signal.p_adjusted:.4f}</title></rect>"
            )
    y = top + cell * len(names) + 16
    out.append(
        f"<text x='{left}' y='{y}' font-size='11'>window 1 → {len(result.windows)} "
        "(darker: smaller adjusted p; outlined: drift)</text></svg>"
    )
    return "".join(out)


def _signal_table(window: WindowResult) -> str:
    rows = [
        "<table><tr><th>signal</th><th>statistic</th><th>window</th><th>reference</th>"
        "<th>p</th><th>Holm p</th><th>effect (sd)</th><th>detectable</th><th></th>"
        "<th>what it measures</th></tr>"
    ]
    for s in window.signals:
        mark = "<span class='drift'>drift</span>" if s.drifted else "<span class='ok'>ok</span>"
        numbers = (
            s.statistic,
            s.window_value,
            s.reference_value,
            s.p_value,
            s.p_adjusted,
            s.effect_size,
            s.detectable,
        )
        cells = "".join(f"<td class='n'>{_fmt(v)}</td>" for v in numbers)
        rows.append(
            f"<tr><td>{escape(s.name)}</td>{cells}<td>{mark}</td><td>{escape(s.meaning)}</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4g}"


def _null_plot(signal, null: np.ndarray | None) -> str:
    if null is None or len(null) == 0:
        return ""
    width, height, pad = 260, 120, 18
    low = float(min(null.min(), signal.statistic))
    high = float(max(null.max(), signal.statistic, signal.detectable))
    span = (high - low) or 1.0
    counts, _ = np.histogram(null, bins=30, range=(low, high))
    tallest = max(int(counts.max()), 1)
    bar = (width - 2 * pad) / len(counts)

    def x_of(value: float) -> float:
        return pad + (value - low) / span * (width - 2 * pad)

    out = [
        f"<div class='plot'><svg xmlns='http://www.w3.org/2000/svg' width='{width}' "
        f"height='{height + 20}' data-signal='{escape(signal.name)}' role='img' "
        f"aria-label='{escape(signal.name)}: null and observed'>"
    ]
    for i, count in enumerate(counts):
        h = count / tallest * (height - pad)
        out.append(
            f"<rect x='{pad + i * bar:.1f}' y='{height - h:.1f}' width='{bar - 1:.1f}' "
            f"height='{h:.1f}' fill='#9ab'/>"
        )
    colour = "#b00" if signal.drifted else "#070"
    for value, style in (
        (signal.statistic, f"stroke='{colour}' stroke-width='2'"),
        (signal.detectable, "stroke='#555' stroke-dasharray='3,3'"),
    ):
        x = x_of(value)
        out.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='4' y2='{height}' {style}/>")
    out.append(
        f"<text x='{pad}' y='{height + 14}' font-size='11'>{escape(signal.name)}: "
        f"{signal.statistic:.4g} (p {signal.p_value:.3f})</text></svg></div>"
    )
    return "".join(out)


def _top_inputs(result: MonitorResult, window: WindowResult) -> str:
    rows = [
        "<table id='top-inputs'><tr><th>line</th><th>score</th><th>input</th><th>answer</th></tr>"
    ]
    for position, score in window.top_inputs:
        answer = result.live.answers[position]
        rows.append(
            f"<tr><td class='n'>{result.live.lines[position]}</td><td class='n'>{score:.2f}</td>"
            f"<td>{escape(result.live.prompts[position][:300])}</td>"
            f"<td>{escape((answer or '')[:120])}</td></tr>"
        )
    rows.append(
        "</table><p class='small'>score: the domain classifier's out-of-fold logit "
        "(higher: less like the training inputs). These are in to_label.jsonl.</p>"
    )
    return "".join(rows)


def _ngrams(window: WindowResult) -> str:
    if not window.ngrams:
        return "<p>none stands out.</p>"
    rows = [
        "<table><tr><th>n-gram</th><th>share of window</th><th>share of training</th>"
        "<th>log-odds</th></tr>"
    ]
    for gram in window.ngrams:
        rows.append(
            f"<tr><td>{escape(str(gram['ngram']))}</td>"
            f"<td class='n'>{gram['window_share']:.1%}</td>"
            f"<td class='n'>{gram['reference_share']:.1%}</td>"
            f"<td class='n'>{gram['log_odds']:.2f}</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)
