"""``tunesmith data …``: inspect and validate data files before training on them.

``tunesmith data check`` runs the same `prepare_records` the trainer runs, so a
file that passes here passes there. Exit code 0 means no errors (warnings may
remain), 2 means errors were found; problems are printed, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from tunesmith.data.formats import FORMATS
from tunesmith.data.load import prepare_records
from tunesmith.data.report import DataReport, print_report
from tunesmith.data.validate import DataError

data_app = typer.Typer(help="Inspect and validate training data.", no_args_is_help=True)

EXIT_DATA_ERRORS = 2


def parse_columns(pairs: list[str]) -> dict[str, str]:
    """``["text=SMS", "label=Label"]`` → ``{"text": "SMS", "label": "Label"}``."""
    columns = {}
    for pair in pairs:
        ours, sep, theirs = pair.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            raise typer.BadParameter(
                f"{pair!r} is not ours=theirs (e.g. text=SMS)", param_hint="--column"
            )
        columns[ours.strip()] = theirs.strip()
    return columns


@data_app.command("check")
def check(
    files: list[Path] = typer.Argument(
        ..., help="Training data files (JSONL, JSON, CSV, TSV, Parquet, TXT; .gz ok)."
    ),
    format: str = typer.Option(
        "auto", "--format", "-f", help=f"Record format: auto or one of {', '.join(FORMATS)}."
    ),
    column: list[str] = typer.Option(
        [],
        "--column",
        "-c",
        help="Map a file column onto ours, e.g. --column text=SMS (repeatable).",
    ),
    validation: list[Path] = typer.Option(
        [],
        "--validation",
        help="Validation file(s); otherwise a validation split is carved from the data.",
    ),
    test: list[Path] = typer.Option(
        [], "--test", help="Test file(s) to check for overlap with the training data."
    ),
    seed: int = typer.Option(42, help="Seed of the train/validation/test split."),
    dedup: bool = typer.Option(False, "--dedup", help="Drop exact duplicates, keeping the first."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the report as JSON instead of tables."
    ),
) -> None:
    """Validate data files: every problem with file:line, code, field and fix; exit 2 on errors."""
    if format != "auto" and format not in FORMATS:
        raise typer.BadParameter(
            f"{format!r} is not a format; choose auto or one of {', '.join(FORMATS)}",
            param_hint="--format",
        )
    report: DataReport
    try:
        prepared = prepare_records(
            files,
            validation=validation or None,
            test=test or None,
            format=format,
            seed=seed,
            dedup=dedup,
            columns=parse_columns(column),
        )
        report = prepared.report
    except DataError as error:
        report = error.report
    console = Console()
    if as_json:
        typer.echo(report.to_json())
    else:
        print_report(report, console)
    if report.errors:
        if not as_json:
            console.print(
                f"[red]{len(report.errors)} error(s): the data cannot be trained on as is.[/]"
            )
        raise typer.Exit(EXIT_DATA_ERRORS)
