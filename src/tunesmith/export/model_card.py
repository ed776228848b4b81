"""The README.md of an exported model: what it is, what it learned from, how it scored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tunesmith
from tunesmith.export.source import ExportSource


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def _evaluation_lines(results: dict[str, Any] | None) -> list[str]:
    if not results or not results.get("comparison"):
        return ["Not evaluated: run `tunesmith eval RUN_DIR`, then export again."]
    comparison = results["comparison"]
    systems = comparison.get("systems") or []
    lines = [
        "| metric | " + " | ".join(systems) + " |",
        "|---" * (len(systems) + 1) + "|",
    ]
    for row in comparison.get("metrics", []):
        cells = []
        for system in systems:
            value = row["values"][system]
            cells.append(f"{value['estimate']:.4g} [{value['low']:.4g}, {value['high']:.4g}]")
        lines.append(f"| {row['metric']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"{comparison.get('n_items')} test items, 95% bootstrap intervals. "
        f"Verdict: {comparison.get('verdict')}",
    ]
    forgetting = results.get("forgetting")
    if forgetting:
        lines += [
            "",
            "Forgetting (perplexity on general text): base "
            f"{forgetting.get('base_perplexity', float('nan')):.4g}, fine-tuned "
            f"{forgetting.get('fine_tuned_perplexity', float('nan')):.4g} "
            f"({forgetting.get('relative_change', 0):+.1%}"
            + (", flagged" if forgetting.get("flagged") else "")
            + ").",
        ]
    return lines


def _data_lines(report: dict[str, Any] | None) -> list[str]:
    if not report:
        return ["No data report recorded."]
    lines = [f"{report.get('rows_kept')} of {report.get('rows_in')} rows kept."]
    for entry in report.get("files", []):
        lines.append(
            f"- `{Path(entry['file']).name}` ({entry['role']}, {entry.get('format')}): "
            f"{entry.get('records')} records"
        )
    lines.append("Licences: not recorded by tunesmith; state the licence of each file above.")
    return lines


def model_card(source: ExportSource, kind: str) -> str:
    config = source.config
    method = config.method.model_dump(exclude_none=True)
    training = config.train.model_dump(
        include={"epochs", "max_steps", "batch_size", "learning_rate", "seed", "precision"}
    )
    parts = [
        "---",
        f"base_model: {config.model.name}",
        "library_name: transformers",
        "tags: [tunesmith, fine-tuned]",
        "---",
        f"# {source.name}",
        "",
        f"{kind} of `{config.model.name}`, fine-tuned with tunesmith {tunesmith.__version__}"
        f" (method `{config.method.name}`, objective `{config.objective.name}`).",
        "",
        "## Data",
        *_data_lines(_read_json(source.paths.data_report)),
        "",
        "## Settings",
        f"- method: `{json.dumps(method)}`",
        f"- training: `{json.dumps(training, default=str)}`",
        "",
        "## Evaluation (held-out test split, against the base model)",
        *_evaluation_lines(_read_json(source.paths.eval / "results.json")),
        "",
        "## Files",
        "`manifest.json` lists the sha256 of every file in this folder.",
    ]
    return "\n".join(parts) + "\n"
