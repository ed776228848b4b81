"""The `tunesmith` command: one subcommand per stage; parse, load config, call the stage, print."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import typer
from rich.console import Console
from rich.markup import escape

from tunesmith.config import ConfigError, load_config
from tunesmith.errors import TunesmithError
from tunesmith.quiet import quiet_third_party

quiet_third_party()

app = typer.Typer(
    name="tunesmith",
    help="Fine-tune a language model on your own data, prove it beats the base model, ship it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., object])

TrustRemoteCode = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        help="Run Python code shipped with the base model. Only this flag grants it; a run "
        "directory's own config.yaml never does.",
    ),
]


ConfigArgument = Annotated[
    Path | None, typer.Argument(help="Run config YAML (see examples/). Optional.")
]
DataOption = Annotated[
    list[Path] | None,
    typer.Option("--data", "-d", help="Training data file(s); sets data.train."),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a setting, e.g. --set train.epochs=2."),
]


def friendly_errors(command: F) -> F:
    """Errors the user can fix are printed plainly, never as a traceback, and exit 2 unless
    the error names a code of its own (a full disk: 74)."""

    @functools.wraps(command)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return command(*args, **kwargs)
        except TunesmithError as error:
            err_console.print(
                f"[bold red]error:[/bold red] {escape(str(error))}", markup=True, highlight=False
            )
            raise typer.Exit(error.exit_code) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@friendly_errors
def train(
    config: ConfigArgument = None,
    data: DataOption = None,
    set_: SetOption = None,
    resume: Annotated[
        str | None,
        typer.Option(help="'auto' (newest complete checkpoint of the run) or a checkpoint path."),
    ] = None,
    resume_allow_mismatch: Annotated[
        bool,
        typer.Option(help="Resume even if data or batch settings changed (not reproducible)."),
    ] = False,
    evaluate: Annotated[
        bool, typer.Option("--eval/--no-eval", help="Evaluate on the test split afterwards.")
    ] = True,
) -> None:
    """Fine-tune a model. Every setting has a default: `tunesmith train --data my.jsonl` works."""
    run_config = _run_config(config, data, set_)
    if not evaluate:
        run_config.eval.enabled = False

    from tunesmith import api

    if os.environ.get("RANK", "0") == "0":
        console.print(f"[bold]tunesmith train[/bold] → {run_config.run_dir}")
    summary = api.train(
        run_config, resume=resume, allow_mismatch=resume_allow_mismatch, console=console
    )
    if summary.rank != 0:  # the other processes of a multi-process run have nothing to add
        return
    _print_train_summary(summary)
    if summary.stopped_by_signal:
        from tunesmith.engine.signals import STOPPED_BY_SIGNAL_EXIT_CODE

        raise typer.Exit(STOPPED_BY_SIGNAL_EXIT_CODE)
    if run_config.eval.enabled:
        _run_evaluation(
            summary.run_dir,
            test_files=None,
            metrics=None,
            max_items=None,
            trust_remote_code=run_config.model.trust_remote_code,
        )


def _run_config(config: Path | None, data: list[Path] | None, set_: list[str] | None):
    """The run config of `train` and `plan`: the file, then --data, then --set."""
    overrides = list(set_ or [])
    if data:
        overrides.append("data.train=[" + ",".join(f"'{p}'" for p in data) + "]")
    run_config = load_config(config, overrides)
    if not run_config.data.train:
        raise ConfigError(
            "no training data: pass --data FILE or set data.train in the config file."
        )
    return run_config


@app.command()
@friendly_errors
def plan(
    config: ConfigArgument = None,
    data: DataOption = None,
    set_: SetOption = None,
    device: Annotated[
        str,
        typer.Option(
            help="auto (this machine), cpu, cuda, or a GPU such as a100-80gb, "
            "h100-80gb, l4-24gb, t4-16gb."
        ),
    ] = "auto",
    calibrate: Annotated[
        int, typer.Option(help="Time this many real training steps here first (0: don't).")
    ] = 0,
    memory_limit: Annotated[
        str | None,
        typer.Option(help="Memory the run must fit in, e.g. 8GB; default: the device's."),
    ] = None,
    price_per_hour: Annotated[
        float | None, typer.Option(help="$ per machine-hour; default: the device table's.")
    ] = None,
    api_price: Annotated[
        float, typer.Option(help="$ per million trained tokens of a hosted fine-tuning API.")
    ] = 25.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole plan as JSON.")] = False,
) -> None:
    """Memory, time and cost of a run before training it: fits or not, and what to change."""
    import json

    from tunesmith import api
    from tunesmith.plan import PlanRequest
    from tunesmith.plan.devices import lookup_device, parse_bytes
    from tunesmith.plan.render import breakdown, one_line

    if device != "auto":
        lookup_device(device)  # an unknown name fails before any data is read
    request = PlanRequest(
        device=device, memory_limit=parse_bytes(memory_limit) if memory_limit else None,
        calibrate_steps=calibrate, price_per_hour=price_per_hour, api_price_per_mtok=api_price,
    )  # fmt: skip
    run_config = _run_config(config, data, set_)
    if not as_json:
        err_console.print(
            f"planning {run_config.run_dir.name} (reading the data, probing the model)"
        )
    made = api.plan(run_config, request)
    if as_json:
        sys.stdout.write(json.dumps(made.to_dict(), indent=2) + "\n")
        return
    console.print("\n".join(breakdown(made)), highlight=False)
    console.print(one_line(made), highlight=False)


@app.command()
@friendly_errors
def sweep(
    config: Annotated[Path, typer.Argument(help="Run config YAML whose run is searched around.")],
    space: Annotated[
        Path,
        typer.Option(
            "--space",
            help="Search space YAML (docs/plan.md), e.g. "
            "learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}.",
        ),
    ],
    trials: Annotated[int, typer.Option(min=1, help="Trials in the study (all runs).")] = 10,
    budget: Annotated[
        str | None, typer.Option(help="Wall-clock budget such as 30m or 2h; no new trial after.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a setting of every trial."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Sweep directory (study.db, trials/); default RUN-sweep.")
    ] = None,
) -> None:
    """Optuna search (TPE, pruned on validation loss), one process per trial, a tested winner."""
    from rich.table import Table

    from tunesmith import api
    from tunesmith.plan.sweep import parse_duration, ranked

    budget_seconds = parse_duration(budget) if budget else None
    result = api.sweep(
        config, space, overrides=list(set_ or []), trials=trials,
        budget_seconds=budget_seconds, directory=out,
        say=lambda line: console.print(escape(line), highlight=False),
    )  # fmt: skip
    table = Table(title=f"sweep {result.directory}: trials by task metric")
    for column in ("rank", "trial", "settings", "metric", "score", "seconds"):
        table.add_column(column)
    for rank, trial in enumerate(ranked(result.trials), start=1):
        settings = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in trial.params.items())  # fmt: skip
        table.add_row(str(rank), str(trial.number), settings, trial.metric or "-",
                      f"{abs(trial.score):.4f}", f"{trial.seconds:.0f}")  # fmt: skip
    console.print(table)
    pruned = sum(t.state == "pruned" for t in result.trials)
    failed = sum(t.state == "failed" for t in result.trials)
    console.print(f"{len(result.trials)} trial(s): {pruned} pruned, {failed} failed")
    console.print(escape(result.verdict), highlight=False)
    if result.best_config:
        console.print(f"best config: {result.best_config}")
    if result.plot:
        console.print(f"score vs cost: {result.plot}")


def _print_train_summary(summary) -> None:
    resumed = summary.resumed_at_step
    if resumed is not None and resumed == summary.steps:
        lines = [f"[bold green]done[/bold green]: all {summary.steps} steps were already trained"]
    else:
        lines = [
            f"[bold green]done[/bold green] in {summary.seconds:.0f} s, {summary.steps} steps"
            + (f" ({summary.steps - resumed} after resuming at step {resumed})" if resumed else "")
            + f", {summary.real_tokens_per_second:.0f} tokens/s while training",
        ]
    if summary.val_loss_before is not None and summary.val_loss_after is not None:
        lines.append(
            f"validation loss {summary.val_loss_before:.4f} → {summary.val_loss_after:.4f}"
            + (f" (best step {summary.best_step})" if summary.best_step else "")
        )
    if summary.stopped_early:
        lines.append("stopped early: validation loss stopped improving")
    if summary.stopped_by_signal:
        lines.append(f"stopped by signal; resume with --resume auto (run dir {summary.run_dir})")
    for warning in summary.warnings:
        lines.append(f"[yellow]warning:[/yellow] {warning}")
    if not summary.stopped_by_signal:
        lines.append(f"model: {summary.final_dir}")
        lines.append(f"try it: tunesmith chat {summary.run_dir}")
    console.print("\n".join(lines))


def _run_evaluation(run_dir: Path, **options: object) -> None:
    from tunesmith import api
    from tunesmith.evaluate.compare import print_comparison
    from tunesmith.evaluate.run import KIND_DESCRIPTIONS

    console.print(f"[bold]evaluating[/bold] {run_dir} on its held-out data")
    result = api.evaluate(run_dir, on_notice=_print_notice, **options)
    console.print(KIND_DESCRIPTIONS[result.kind])
    print_comparison(result.comparison, console)
    if result.forgetting is not None:
        check = result.forgetting
        flag = "[red]forgetting flagged[/red]" if check.flagged else "[green]ok[/green]"
        console.print(
            f"general-text perplexity {check.base_perplexity:.2f} → "
            f"{check.fine_tuned_perplexity:.2f} ({100 * check.relative_change:+.1f}%) {flag}"
        )
    console.print(f"report: {result.report_path}\nresults: {result.results_path}")


@app.command("eval")
@friendly_errors
def evaluate_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `tunesmith train`.")],
    test: Annotated[
        list[Path] | None,
        typer.Option("--test", help="Held-out file(s); default: the run's own test split."),
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "--metric",
            help="exact_match, accuracy, macro_f1, rouge_l, bleu, json_valid, json_match, "
            "json_exact; default: chosen from the data.",
        ),
    ] = None,
    max_items: Annotated[int | None, typer.Option(help="Evaluate at most this many items.")] = None,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Prove the fine-tune was worth it: base zero-shot vs few-shot vs fine-tuned, with CIs."""
    _run_evaluation(
        run_dir,
        test_files=test,
        metrics=metric,
        max_items=max_items,
        trust_remote_code=trust_remote_code,
    )


@app.command()
@friendly_errors
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories that were evaluated.")],
) -> None:
    """Several evaluated runs side by side (reads each run's eval/results.json)."""
    import json

    from rich.table import Table

    from tunesmith.runs import RunError, RunPaths, read_run_config

    table = Table(title="runs compared on their own test splits")
    for column in ("run", "method", "metric", "base zero-shot", "base few-shot", "fine-tuned"):
        table.add_column(column)
    table.add_column("verdict", max_width=60)
    plans = Table(title="the plan checked: peak memory and speed of each run")
    for column in ("run", "peak predicted", "peak measured", "tokens/s"):
        plans.add_column(column, justify="left" if column == "run" else "right")
    for run_dir in run_dirs:
        results = RunPaths(run_dir).eval / "results.json"
        if not results.is_file():
            raise RunError(f"{results} is missing: run `tunesmith eval {run_dir}` first.")
        comparison = json.loads(results.read_text())["comparison"]
        primary = comparison["metrics"][0]
        values = primary["values"]
        table.add_row(
            str(run_dir),
            read_run_config(run_dir).method.name,
            primary["metric"],
            *(f"{values[name]['estimate']:.3f}" for name in comparison["systems"]),
            comparison["verdict"],
        )
        plans.add_row(str(run_dir), *_plan_columns(RunPaths(run_dir).summary))
    console.print(table)
    console.print(plans)


def _plan_columns(summary_path: Path) -> list[str]:
    """Predicted and measured peak memory (with the error) and tokens/s of a run."""
    import json

    from tunesmith.plan.render import size

    if not summary_path.is_file():
        return ["-", "-", "-"]
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    predicted, measured = summary.get("predicted_peak_bytes"), summary.get("measured_peak_bytes")
    error = f" ({100 * (predicted / measured - 1):+.0f}%)" if predicted and measured else ""
    source = f" {summary['peak_memory_source']}" if summary.get("peak_memory_source") else ""
    return [
        size(predicted) if predicted else "-",
        f"{size(measured)}{source}{error}" if measured else "-",
        f"{summary.get('real_tokens_per_second', 0):.0f}",
    ]


@app.command()
@friendly_errors
def merge(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `tunesmith train`.")],
    out: Annotated[
        Path | None, typer.Option(help="Where to write the merged model; default RUN_DIR/merged.")
    ] = None,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Fold the trained adapter into the base weights: a plain model any tool loads."""
    from tunesmith import api

    target = api.merge(run_dir, out, trust_remote_code=trust_remote_code, on_notice=_print_notice)
    console.print(
        f"merged {run_dir} into the base model: {target}\n"
        f"load it with AutoModelForCausalLM.from_pretrained({str(target)!r})"
    )


@app.command("export")
@friendly_errors
def export_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `tunesmith train`.")],
    to: Annotated[str, typer.Option("--to", help="gguf, gguf-lora, ollama, hf or vllm.")] = "gguf",
    quant: Annotated[
        list[str] | None,
        typer.Option(
            help="GGUF encoding: f16, bf16, q8_0 (no compiler needed), q4_k_m, q5_k_m, q6_k "
            "(llama.cpp's quantizer). Repeat it with --to gguf for a table of several."
        ),
    ] = None,
    verify_items: Annotated[
        int, typer.Option(help="Held-out prompts the written files are checked on.")
    ] = 20,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Write only; skip the checks after writing.")
    ] = False,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Ship the run: GGUF for llama.cpp/Ollama, HF and vLLM folders, each verified after writing."""
    from tunesmith import api
    from tunesmith.export.summary import print_export_summary

    console.print(f"exporting {run_dir} --to {to} …")
    result = api.export(
        run_dir,
        to,
        quant=quant,
        verify_items=0 if no_verify else verify_items,
        trust_remote_code=trust_remote_code,
        on_notice=_print_notice,
        on_progress=lambda line: console.print(f"  {escape(line)} …", highlight=False),
    )
    print_export_summary(result, console)


@app.command()
@friendly_errors
def generate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `tunesmith train`.")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The user message.")],
    system: Annotated[str | None, typer.Option(help="Optional system message.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Generation length limit.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    base: Annotated[
        bool, typer.Option("--base", help="Answer with the untrained base model instead.")
    ] = False,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Answer one prompt with the fine-tuned model, streaming tokens."""
    from tunesmith.chat import reply
    from tunesmith.runs import base_model_of

    trained = _load_trained(run_dir, trust_remote_code)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    with (
        base_model_of(trained) if base else contextlib.nullcontext(trained.model) as model,
        trained.precision.autocast(trained.device),
    ):
        reply(
            model,
            trained.tokenizer,
            messages,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            on_text=_write_stdout,
        )
    sys.stdout.write("\n")


@app.command()
@friendly_errors
def chat(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `tunesmith train`.")],
    system: Annotated[str | None, typer.Option(help="Optional system message.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Generation length limit per reply.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    base: Annotated[
        bool, typer.Option("--base", help="Talk to the untrained base model instead.")
    ] = False,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Talk to the fine-tuned model. Empty line or Ctrl-D ends; /reset clears the history."""
    from tunesmith.runs import base_model_of

    trained = _load_trained(run_dir, trust_remote_code)
    who = "the base model of " if base else ""
    console.print(f"chatting with {who}{run_dir} ([dim]empty line or Ctrl-D to quit, /reset[/dim])")
    with (
        base_model_of(trained) if base else contextlib.nullcontext(trained.model) as model,
        trained.precision.autocast(trained.device),
    ):
        _chat_loop(model, trained.tokenizer, system, max_new_tokens, temperature)


def _chat_loop(model, tokenizer, system: str | None, max_new_tokens: int, temperature: float):
    from tunesmith.chat import reply

    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            text = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if not text:
            break
        if text == "/reset":
            history = history[:1] if system else []
            continue
        history.append({"role": "user", "content": text})
        sys.stdout.write("model> ")
        answer = reply(
            model,
            tokenizer,
            history,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            on_text=_write_stdout,
        )
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": answer})


def _load_trained(run_dir: Path, trust_remote_code: bool):
    from tunesmith.runs import load_trained

    trained = load_trained(run_dir, trust_remote_code=trust_remote_code)
    for notice in trained.notices:
        _print_notice(notice)
    return trained


def _print_notice(notice: str) -> None:
    err_console.print(f"[yellow]notice:[/yellow] {escape(notice)}", markup=True, highlight=False)


def _write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@app.command()
@friendly_errors
def serve(
    run_dirs: Annotated[
        list[str] | None,
        typer.Argument(help="Run directories to serve (NAME=RUN_DIR renames one)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind; beyond loopback needs a key.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key_file: Annotated[
        Path | None, typer.Option(help="File with one API key per line (or $TUNESMITH_API_KEY).")
    ] = None,
    insecure_no_auth: Annotated[
        bool, typer.Option(help="Allow a non-loopback bind without a key (anyone may call).")
    ] = False,
    max_batch: Annotated[int, typer.Option(help="Rows decoded together at most.")] = 8,
    log_requests: Annotated[
        Path | None, typer.Option(help="Write every chat request as JSONL here (off by default).")
    ] = None,
    requests_per_minute: Annotated[int, typer.Option(help="Rate limit per API key.")] = 600,
    tokens_per_minute: Annotated[
        int, typer.Option(help="Prompt + completion tokens per minute per API key.")
    ] = 200_000,
    max_tokens: Annotated[int, typer.Option(help="Largest max_tokens a request may ask.")] = 2048,
    jobs: Annotated[
        bool,
        typer.Option(help="Also serve files, fine-tuning jobs (a worker) and the dashboard at /."),
    ] = False,
    workspace: Annotated[
        Path, typer.Option(help="Where --jobs keeps its store, uploads and runs.")
    ] = Path("tunesmith-jobs"),
    threads: Annotated[
        int | None, typer.Option(help="Torch CPU threads (default: usable CPUs minus one).")
    ] = None,
) -> None:
    """Serve the runs and their base models over an OpenAI-compatible HTTP API."""
    from tunesmith import api
    from tunesmith.serve import Limits

    limits = Limits(
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
        max_tokens=max_tokens,
    )
    api.serve(
        run_dirs or [], host=host, port=port, api_key_file=api_key_file,
        insecure_no_auth=insecure_no_auth, max_batch=max_batch, log_requests=log_requests,
        limits=limits, jobs_workspace=workspace if jobs else None, threads=threads,
    )  # fmt: skip


@app.command()
@friendly_errors
def worker(
    workspace: Annotated[
        Path, typer.Option(help="The workspace of `tunesmith serve --jobs`.")
    ] = Path("tunesmith-jobs"),
) -> None:
    """Train the fine-tuning jobs of a workspace, one at a time, each in a child process."""
    from tunesmith.jobs.worker import main as worker_main

    worker_main(["--workspace", str(workspace)])


@app.command()
@friendly_errors
def monitor(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `tunesmith train`.")],
    inputs: Annotated[
        Path,
        typer.Argument(
            help="Live inputs: the request log of `serve --log-requests`, or a data file."
        ),
    ],
    window: Annotated[
        str | None,
        typer.Option(help="Inputs per window (500) or a duration (30m, 1h, 1d); default 500."),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only inputs logged at or after this ISO 8601 time.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Where to write the results; default RUN_DIR/monitor.")
    ] = None,
    draws: Annotated[
        int | None, typer.Option(help="Null windows per window size (default 400).")
    ] = None,
    alpha: Annotated[
        float | None, typer.Option(help="Family-wise error rate per window (default 0.05).")
    ] = None,
    perplexity: Annotated[
        bool,
        typer.Option(help="Score prompts with the fine-tuned model (slowest signal)."),
    ] = True,
    perplexity_sample: Annotated[
        int | None,
        typer.Option(
            help="Prompts per window the fine-tuned model scores, a seeded sample whose null "
            "is drawn at the same size (default 100)."
        ),
    ] = None,
) -> None:
    """Is live traffic drifting from the training data? Exit 0: no drift, 3: drift."""
    from tunesmith import api
    from tunesmith.monitor.errors import DRIFT_EXIT_CODE

    err_console.print(f"[bold]tunesmith monitor[/bold] {inputs} against {run_dir}")
    result = api.monitor(
        run_dir, inputs, window=window, since=since, out_dir=out, draws=draws, alpha=alpha,
        perplexity=perplexity, perplexity_sample=perplexity_sample, on_progress=_print_progress,
    )  # fmt: skip
    _print_monitor_summary(result)
    if result.drifted:
        raise typer.Exit(DRIFT_EXIT_CODE)


def _print_progress(line: str) -> None:
    err_console.print(f"[dim]{escape(line)}[/dim]", highlight=False)


def _print_monitor_summary(result) -> None:
    latest = result.latest
    drifted = [w for w in result.windows if w.drifted]
    verdict = (
        "[bold red]DRIFT[/bold red]" if result.drifted else "[bold green]no drift[/bold green]"
    )
    lines = [
        f"{verdict} in the newest window ({latest.tested_size} inputs); "
        f"{len(drifted)}/{len(result.windows)} window(s) drifted"
    ]
    for signal in latest.signals:
        mark = "[red]drift[/red]" if signal.drifted else "ok"
        lines.append(
            f"  {signal.name:<22} {signal.statistic:>9.4f}  p={signal.p_value:.4f} "
            f"(Holm {signal.p_adjusted:.4f})  effect {signal.effect_size:+.1f} sd  {mark}"
        )
    for name, path in result.paths.items():
        lines.append(f"{name}: {path}")
    console.print("\n".join(lines), highlight=False)


@app.command()
@friendly_errors
def retrain(
    run_dir: Annotated[
        Path, typer.Argument(help="The champion run, or its <family>.promoted.json pointer.")
    ],
    add: Annotated[
        Path, typer.Option("--add", help="New labelled rows (e.g. a checked to_label.jsonl).")
    ],
    start: Annotated[
        str,
        typer.Option("--from", help="base: train afresh; continue: on the champion's weights."),
    ] = "base",
    margin: Annotated[
        float | None,
        typer.Option(help="How much worse the old test may get, in metric units (0.02)."),
    ] = None,
) -> None:
    """Train <name>-vN on old + new data; promote it only if it beats the champion."""
    from tunesmith import api

    err_console.print(f"[bold]tunesmith retrain[/bold] {run_dir} with {add}")
    result = api.retrain(run_dir, add, start=start, margin=margin, on_progress=_print_progress)
    mark = "[bold green]promoted[/bold green]" if result.promoted else "[yellow]kept[/yellow]"
    console.print(
        f"{mark} {result.challenger if result.promoted else result.champion}\n"
        f"{escape(result.decision)}\ngate: {result.gate_path}\npointer: {result.pointer} "
        f"(serve it with `tunesmith serve {result.pointer}`)",
        highlight=False,
    )


def _mount_subcommands() -> None:
    from tunesmith.cli_data import data_app

    app.add_typer(data_app, name="data", help="Check, prepare and inspect training data.")


_mount_subcommands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
