"""The short summary an export ends with: what was written, its size, how it checked out."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunesmith.export.result import ExportResult


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _checks(verification: dict | None) -> str:
    if not verification:
        return "not verified"
    if "replies_identical" not in verification:
        return (
            f"reloaded: max |Δlogit| {verification['max_abs_logit_delta']:.2g} on "
            f"{verification['prompts']} prompts"
        )
    v = verification
    return (
        f"tokens {v['tokenizer_identical']}/{v['prompts']} identical · greedy "
        f"{v['replies_identical']}/{v['prompts']} identical · top-1 {v['top1_agreement']:.1%} · "
        f"max |Δlogit| {v['max_abs_logit_delta']:.2g} · {v['metric']} "
        f"{v['metric_llama_cpp']:.3f} (transformers {v['metric_transformers']:.3f}) · ppl "
        f"{v['perplexity_llama_cpp']:.2f} ({v['perplexity_transformers']:.2f}) · "
        f"{v['tokens_per_second']:.0f} tok/s"
    )


def print_export_summary(result: ExportResult, console: Console) -> None:
    table = Table(title=f"export --to {result.target}: {result.out_dir}", show_lines=True)
    table.add_column("file")
    table.add_column("size", justify="right")
    table.add_column("checked in its runtime against transformers")
    for artifact in result.artifacts:
        table.add_row(
            f"{artifact.path.name} ({artifact.role})",
            _size(artifact.size),
            _checks(artifact.verification),
        )
    console.print(table)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    for note in result.notes:
        console.print(escape(note), highlight=False)
    console.print(f"report: {result.out_dir.parent / 'report.json'}")
