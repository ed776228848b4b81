"""What `tunesmith monitor` leaves behind: ``result.json`` and ``to_label.jsonl``.

``result.json`` holds the verdict (the newest tested window decides it, since a
scheduler asks "is traffic drifting now?"), the timeline of every window, and per
signal the statistic, raw and Holm-adjusted p-values, effect size and the smallest
statistic the window size detects. ``to_label.jsonl`` holds the most drifted inputs
as chat records (user turns, then the model's answer when the log has one) for a
person to check or correct and pass to `tunesmith retrain --add`.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.monitor.run import MonitorResult, WindowResult

RESULT_VERSION = 1


def _window_dict(result: MonitorResult, window: WindowResult) -> dict[str, object]:
    live = result.live
    positions = window.window.positions
    return {
        "index": window.window.index,
        "size": len(positions),
        "tested_size": window.tested_size,
        "perplexity_scored": window.perplexity_scored,
        "lines": [live.lines[positions[0]], live.lines[positions[-1]]] if len(positions) else [],
        "start": window.window.start.isoformat() if window.window.start else None,
        "end": window.window.end.isoformat() if window.window.end else None,
        "tested": bool(window.signals),
        "drifted": window.drifted,
        "signals": [s.to_dict() for s in window.signals],
        "top_inputs": [
            {"line": live.lines[p], "score": round(score, 4), "prompt": live.prompts[p]}
            for p, score in window.top_inputs[:10]
        ],
        "ngrams": window.ngrams,
    }


def result_dict(result: MonitorResult) -> dict[str, object]:
    latest = result.latest
    return {
        "version": RESULT_VERSION,
        "verdict": "drift" if result.drifted else "no drift",
        "run_dir": str(result.run_dir),
        "inputs": result.live.file,
        "n_inputs": len(result.live),
        "alpha": result.alpha,
        "correction": "holm across signals, within each window",
        "null": {
            "method": "reference-vs-reference windows drawn from the calibration half of the "
            "training inputs",
            "draws": result.draws,
            "reference_size": result.reference_size,
            "calibration_size": result.calibration_size,
        },
        "signals": result.signal_names,
        "perplexity_sample": result.perplexity_sample,
        "drifted_signals": [s.name for s in latest.signals if s.drifted],
        "windows_drifted": sum(w.drifted for w in result.windows),
        "windows": [_window_dict(result, w) for w in result.windows],
    }


def to_label_records(result: MonitorResult, limit: int) -> list[dict[str, object]]:
    """The most drifted inputs of the drifted windows (of all windows if none drifted)."""
    chosen = [w for w in result.windows if w.drifted] or result.windows
    ranked = sorted(
        (item for w in chosen for item in w.top_inputs), key=lambda item: item[1], reverse=True
    )
    seen: set[int] = set()
    records = []
    for position, _ in ranked:
        if position in seen:
            continue
        seen.add(position)
        messages = [{"role": "user", "content": result.live.prompts[position]}]
        answer = result.live.answers[position]
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
        records.append({"messages": messages})
        if len(records) == limit:
            break
    return records


def write_outputs(result: MonitorResult, to_label: int) -> dict[str, Path]:
    result.out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "result": result.out_dir / "result.json",
        "to_label": result.out_dir / "to_label.jsonl",
    }
    paths["result"].write_text(json.dumps(result_dict(result), indent=2, ensure_ascii=False))
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in to_label_records(result, to_label)]
    paths["to_label"].write_text("".join(lines), encoding="utf-8")
    from tunesmith.monitor.report import render_report

    paths["report"] = result.out_dir / "report.html"
    paths["report"].write_text(render_report(result), encoding="utf-8")
    return paths
