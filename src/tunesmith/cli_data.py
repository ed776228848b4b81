"""``tunesmith data …``: inspect, validate and prepare data before training on it.

``check`` validates files; ``prepare`` runs the data stage of a run config
(read, validate, split, tokenize through the model's chat template, cache) and
writes ``data_report.json`` into the run directory; ``show`` prints examples as
the model will see them, trained tokens highlighted. They call the same
functions the trainer calls, so what passes here passes there. Exit code 0
means no errors (warnings may remain), 2 means errors were found; problems are
printed, never a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text as RichText
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tunesmith.config import ConfigError, RunConfig, load_config
from tunesmith.data.cache import TokenizedSplit, tokenize_with_cache
from tunesmith.data.formats import FORMATS
from tunesmith.data.load import PreparedRecords, prepare_configured_records, prepare_records
from tunesmith.data.report import HISTOGRAM_FILE, SPLITS, DataReport, print_report
from tunesmith.data.tokenize import TokenizedExample, TokenizeError, trained_pieces
from tunesmith.data.validate import DataError, Problem
from tunesmith.models import ModelError
from tunesmith.models.loading import resolve_model_path
from tunesmith.objectives import Objective, ObjectiveError, get_objective

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


TRAINED_STYLE = "bold green on grey15"
CONTEXT_STYLE = "dim"
PLAIN_MARKS = ("[[", "]]")
"""How trained tokens are marked when stdout is not a terminal (logs, pipes, tests)."""

ConfigArgument = typer.Argument(
    ..., metavar="CONFIG", help="Run config YAML (the one `tunesmith train` takes)."
)
SetOption = typer.Option(
    [], "--set", "-s", help="Override a setting, e.g. --set data.max_length=512 (repeatable)."
)


def _fail(console: Console, message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False)
    return typer.Exit(EXIT_DATA_ERRORS)


def _prepare(config: RunConfig, console: Console) -> PreparedRecords:
    """`prepare_records` as the trainer calls it; on data errors print the report and exit 2."""
    try:
        return prepare_configured_records(config.data)
    except DataError as error:
        if error.report is not None:
            print_report(error.report, console)
        raise _fail(console, str(error)) from None


def load_tokenizer(config: RunConfig) -> PreTrainedTokenizerBase:
    """The tokenizer of ``config.model`` alone (no weights), set up as the trainer sets it up,
    so both compute the same cache key."""
    path = resolve_model_path(config.model.name, config.model.cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, trust_remote_code=config.model.trust_remote_code
        )
    except (OSError, ValueError) as error:
        raise ModelError(
            f"{path}: cannot load its tokenizer ({error}). Point model.name at a directory "
            "with the tokenizer files (tokenizer.json, tokenizer_config.json)."
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _setup(
    config_path: Path, overrides: Sequence[str], console: Console
) -> tuple[RunConfig, PreparedRecords, PreTrainedTokenizerBase, Objective]:
    try:
        config = load_config(config_path, list(overrides))
        if not config.data.train:
            raise ConfigError(f"{config_path}: no training data; set data.train.")
        prepared = _prepare(config, console)
        return config, prepared, load_tokenizer(config), get_objective(config.objective.name)
    except (ConfigError, ModelError, ObjectiveError) as error:
        raise _fail(console, str(error)) from None


def print_example(
    console: Console,
    tokenizer: PreTrainedTokenizerBase,
    example: TokenizedExample,
) -> None:
    """One example as the model sees it: trained tokens highlighted (``[[…]]`` off a terminal)."""
    console.print(
        f"[bold]{escape(str(example.source))}[/bold]  tokens {len(example)}  "
        f"trained {example.trained_tokens}",
        highlight=False,
    )
    text = RichText()
    opening, closing = PLAIN_MARKS
    for piece, is_trained in trained_pieces(tokenizer, example):
        if console.is_terminal:
            text.append(piece, style=TRAINED_STYLE if is_trained else CONTEXT_STYLE)
        else:
            text.append(f"{opening}{piece}{closing}" if is_trained else piece)
    console.print(text, highlight=False, markup=False, soft_wrap=True)


def _over_length_line(report: DataReport, max_length: int) -> str | None:
    """The D5 sentence: ``dropped 2/100 (2.0%) examples over 2048 tokens (ids: …)``."""
    sources = report.dropped.get("over_length", [])
    if not sources:
        return None
    considered = report.rows_kept + len(sources)
    shown = ", ".join(str(s) for s in sources[:10]) + (" …" if len(sources) > 10 else "")
    return (
        f"dropped {len(sources)}/{considered} ({len(sources) / considered:.1%}) examples over "
        f"{max_length} tokens (ids: {shown})"
    )


@data_app.command("prepare")
def prepare(
    config_path: Path = ConfigArgument,
    set_: list[str] = SetOption,
    cache_dir: Path | None = typer.Option(
        None,
        "--cache-dir",
        help="Where tokenized splits are cached (default ~/.cache/tunesmith/tokenized, "
        "or $TUNESMITH_CACHE/tokenized).",
    ),
) -> None:
    """Read, validate, split and tokenize the data of a run config; write data_report.json."""
    console = Console()
    config, prepared, tokenizer, objective = _setup(config_path, set_, console)
    report = prepared.report
    tokenized: dict[str, TokenizedSplit] = {}
    problems: list[Problem] = []
    for name in SPLITS:
        try:
            tokenized[name] = tokenize_with_cache(
                objective,
                tokenizer,
                getattr(prepared, name),
                max_length=config.data.max_length,
                on_overlength=config.data.on_overlength,
                cache_dir=cache_dir,
            )
        except DataError as error:  # keep going: list the failing records of every split
            problems.extend(error.problems)
    if problems:
        raise _fail(console, str(TokenizeError(problems)))
    for split in tokenized.values():
        for reason, source in split.dropped:
            report.add_dropped(reason, source)
    train = tokenized["train"].examples
    report.set_token_stats([len(e) for e in train], [objective.units(e) for e in train])
    report.check_row_invariant()
    written = report.write(config.run_dir)

    print_report(report, console)
    if train:
        console.print("First training example (trained tokens highlighted):")
        print_example(console, tokenizer, train[0])
    over_length = _over_length_line(report, config.data.max_length)
    if over_length:
        console.print(over_length, highlight=False, soft_wrap=True)
    tokens = sum(len(e) for e in train)
    trained = sum(objective.units(e) for e in train)
    cache = ", ".join(
        f"{name} {'hit' if split.cache_hit else 'miss'}" for name, split in tokenized.items()
    )
    histogram = f" and {HISTOGRAM_FILE}" if train else ""
    kept = ", ".join(f"{name} {report.split_sizes[name]}" for name in SPLITS)
    console.print(
        f"rows in {report.rows_in}, kept {report.rows_kept} ({kept}), dropped "
        f"{report.rows_dropped}; train tokens {tokens:,} ({trained:,} trained); "
        f"cache: {cache}; wrote {written}{histogram}",
        highlight=False,
        soft_wrap=True,
    )


@data_app.command("show")
def show(
    config_path: Path = ConfigArgument,
    n: int = typer.Option(3, "--n", "-n", min=1, help="How many examples to show."),
    split: str = typer.Option("train", "--split", help="train, validation or test."),
    set_: list[str] = SetOption,
) -> None:
    """Print examples rendered through the model's chat template, trained tokens highlighted."""
    if split not in SPLITS:
        raise typer.BadParameter(f"{split!r} is not a split; choose one of {', '.join(SPLITS)}")
    console = Console()
    config, prepared, tokenizer, objective = _setup(config_path, set_, console)
    records = getattr(prepared, split)[:n]
    if not records:
        raise _fail(console, f"the {split} split is empty; nothing to show.")
    try:
        examples, dropped = objective.tokenize(
            tokenizer,
            records,
            max_length=config.data.max_length,
            on_overlength=config.data.on_overlength,
        )
    except DataError as error:
        raise _fail(console, str(error)) from None
    for example in examples:
        print_example(console, tokenizer, example)
        console.print()
    for reason, source in dropped:
        console.print(f"{source}: dropped ({reason})", highlight=False, markup=False)
