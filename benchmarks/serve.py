"""Serving throughput and latency on SmolLM2: tunesmith serve (base + 2 LoRA runs from one
base) against `transformers serve` (one merged model) and one-request-at-a-time generate.

Every number comes from streaming chat requests through the official `openai` client:
output tokens/s over the whole run, time to first token and latency p50/p95. Every server
is started once and driven in turns, round after round (the order turned each round), so
a machine whose speed drifts, as a shared host's memory bandwidth does by 20-30% within
minutes, slows each side alike; a row's throughput is its median round, and the last line
is tunesmith's best setting over the peer's best, round by round.

    python benchmarks/serve.py                          # 1, 4, 16 clients, 3 rounds
    python benchmarks/serve.py --clients 1 4 --requests 2 --max-tokens 16   # quicker
    python benchmarks/serve.py --clients 16 --precision fp32   # fp32 runs on a bf16 CPU
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import openai

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Play some jazz by Miles Davis",
    "What's the weather in Paris tomorrow?",
    "Add milk to my shopping list",
    "Book a table for two at an Italian place tonight",
]


def train_runs(workdir: Path, precision: str = "auto") -> list[Path]:
    from tunesmith import api
    from tunesmith.config import load_config

    runs = []
    for name, seed in (("support-a", 1), ("support-b", 2)):
        overrides = [
            f"output.dir={workdir}", f"output.name={name}", "train.max_steps=2",
            "train.batch_size=4", "train.eval_every=100", "eval.enabled=false",
            f"train.seed={seed}", f"train.precision={precision}",
        ]  # fmt: skip
        config = load_config(REPO / "examples" / "support-lora.yaml", overrides)
        runs.append(api.train(config, show_progress=False).run_dir)
    return runs


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def drive(base_url: str, key: str, models: list[str], clients: int, requests: int, max_tokens: int):
    """``clients`` threads, each sending ``requests`` streaming requests; cycles the models."""
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)
    first_tokens: list[float] = []
    latencies: list[float] = []
    tokens = [0]
    lock = threading.Lock()

    def one(index: int) -> None:
        model = models[index % len(models)]
        started = time.perf_counter()
        first = None
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}],
            max_tokens=max_tokens, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        used = 0
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
            if chunk.usage is not None:
                used = chunk.usage.completion_tokens
        if used == 0:
            raise RuntimeError(f"{base_url} answered no tokens to request {index}")
        with lock:
            latencies.append(time.perf_counter() - started)
            first_tokens.append(first if first is not None else latencies[-1])
            tokens[0] += used

    errors: list[BaseException] = []

    def worker(worker_index: int) -> None:
        try:
            for request in range(requests):
                one(worker_index * requests + request)
        except Exception as error:  # handed to the caller below
            errors.append(error)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed; the first: {errors[0]}")
    return tokens[0] / wall, first_tokens, latencies


def one_at_a_time(run_dir: Path, clients: int, requests: int, max_tokens: int):
    """The baseline: HF generate on one request after another (what a naive server does)."""
    from tunesmith.chat import reply
    from tunesmith.models.packed_linear import pack_linears
    from tunesmith.runs import load_trained

    trained = load_trained(run_dir, device="auto")
    pack_linears(trained.model)  # once, as a server would: `reply` alone packs per call
    first_tokens, latencies, tokens = [], [], 0
    started = time.perf_counter()
    for index in range(clients * requests):
        begin = time.perf_counter()
        seen: list[float] = []

        def first_piece(piece: str, seen: list[float] = seen, begin: float = begin) -> None:
            if not seen:
                seen.append(time.perf_counter() - begin)

        text = reply(
            trained.model, trained.tokenizer,
            [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}],
            max_new_tokens=max_tokens,
            on_text=first_piece,
        )  # fmt: skip
        latencies.append(time.perf_counter() - begin)
        first_tokens.append(seen[0] if seen else latencies[-1])
        tokens += len(trained.tokenizer(text)["input_ids"])
    wall = time.perf_counter() - started
    # latencies here are service times: N clients of such a server would also queue
    return tokens / wall, first_tokens, latencies


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """A server process whose output goes to a file: a pipe nobody reads fills up with its
    request log and stops the server mid-benchmark."""
    with tempfile.NamedTemporaryFile(prefix="serve-bench-", suffix=".log", delete=False) as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    process.log_path = log.name  # type: ignore[attr-defined]
    return process


def log_tail(process: subprocess.Popen) -> str:
    return Path(process.log_path).read_text(errors="replace")[-500:]  # type: ignore[attr-defined]


def wait_until_serving(process: subprocess.Popen, url: str, key: str) -> None:
    client = openai.OpenAI(base_url=url, api_key=key, max_retries=0)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(log_tail(process))
        try:
            client.models.list()
            return
        except openai.APIConnectionError:
            time.sleep(1)
    process.kill()
    raise RuntimeError("did not start in 180 s")


def start_tunesmith_serve(runs: list[Path], key_file: Path, max_batch: int, threads: int | None):
    """`tunesmith serve` in its own process, as a user runs it (and as `transformers serve`
    runs below): the clients' threads then do not share the server's interpreter.
    ``threads``: its `--threads` (None: its default)."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "tunesmith"), "serve", *map(str, runs),
               "--port", str(port), "--api-key-file", str(key_file), "--max-batch",
               str(max_batch), "--requests-per-minute", "100000",
               "--tokens-per-minute", "100000000"]  # fmt: skip
    if threads is not None:
        command += ["--threads", str(threads)]
    process = launch(command)
    url = f"http://127.0.0.1:{port}/v1"
    wait_until_serving(process, url, key_file.read_text().strip())
    return process, url


def start_transformers_serve(
    model_dir: Path, continuous: bool, threads: int | None, dtype: str = "auto"
) -> tuple[subprocess.Popen, str]:
    """``threads``: OMP_NUM_THREADS for the server (None: torch's own default); ``dtype``
    its ``--dtype`` (auto: the merged weights' own, fp32)."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "transformers"), "serve", "--host", "127.0.0.1",
               "--port", str(port), "--dtype", dtype, str(model_dir)]  # fmt: skip
    if continuous:
        # its paged cache takes 90% of free memory by default (13.7 GB here, and its
        # attention masks grow with it): two of them side by side were killed for memory.
        # A tenth still holds every client's tokens hundreds of times over.
        command += ["--continuous-batching", "--cb-max-memory-percent", "0.1"]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    process = launch(command, env)
    url = f"http://127.0.0.1:{port}/v1"
    wait_until_serving(process, url, "none")
    return process, url


@dataclass
class Server:
    """One server under test, started once and driven in every round."""

    name: str
    url: str
    key: str
    models: list[str]
    process: subprocess.Popen
    failure: str = ""


def start_transformers(merged: Path, threads: int | None, dtype: str = "auto") -> Server | str:
    """`transformers serve` on the merged run: with continuous batching, or without it where
    that does not start; the reason in words where neither does."""
    label = "default threads" if threads is None else f"{threads} torch thread(s)"
    if dtype != "auto":
        label += f", {dtype}"
    reason = ""
    for continuous in (True, False):
        name = "transformers serve" + (" --continuous-batching" if continuous else "")
        try:
            process, url = start_transformers_serve(merged, continuous, threads, dtype)
        except RuntimeError as error:
            reason = f"| {name} | - | not run: {str(error).splitlines()[-1][:80]} | | | | |"
            continue
        return Server(f"{name} (1 merged model, {label})", url, "none", [str(merged)], process)
    return reason


def models_of(url: str, key: str) -> list[str]:
    return [model.id for model in openai.OpenAI(base_url=url, api_key=key).models.list()]


def row(name: str, clients: int, results: list) -> str:
    """The median round's throughput; latencies pooled over the rounds."""
    rate = statistics.median(rate for rate, _, _ in results)
    first = [value for _, values, _ in results for value in values]
    latency = [value for _, _, values in results for value in values]
    return (
        f"| {name} | {clients} | {rate:.1f} | {percentile(first, 0.5):.2f} | "
        f"{percentile(first, 0.95):.2f} | {percentile(latency, 0.5):.2f} | "
        f"{percentile(latency, 0.95):.2f} |"
    )


def drive_rounds(servers: list[Server], args) -> dict[tuple[str, int], list]:
    """Every server at every client count, round after round, the order turned each round:
    a machine whose speed drifts (shared memory bandwidth) slows each side alike. A server
    that fails is reported and left out of the rounds after."""
    results: dict[tuple[str, int], list] = {}
    for round_index in range(args.rounds):
        turn = round_index % len(servers)
        for clients in args.clients:
            for server in servers[turn:] + servers[:turn]:
                if server.failure:
                    continue
                try:
                    result = drive(server.url, server.key, server.models, clients,
                                   args.requests, args.max_tokens)  # fmt: skip
                except Exception as error:  # the other servers' rows still stand
                    server.failure = f"{error} ({log_tail(server.process)[-200:]!r})"
                    print(f"{server.name} failed: {server.failure}", flush=True)
                    continue
                results.setdefault((server.name, clients), []).append(result)
                print(f"round {round_index + 1}: {server.name}, {clients} clients: "
                      f"{result[0]:.1f} tok/s", flush=True)  # fmt: skip
    return results


def ratio_line(results: dict[tuple[str, int], list], clients: int) -> str:
    """Per round, tunesmith's best setting over the peer's best, at ``clients``."""

    def best(prefix: str) -> list[float]:
        rounds = [rates for (name, count), rates in results.items()
                  if name.startswith(prefix) and count == clients]  # fmt: skip
        # a server that failed has fewer rounds: compare the rounds every server ran
        return [max(result[0] for result in same) for same in zip(*rounds, strict=False)]

    ours, theirs = best("tunesmith"), best("transformers")
    if not ours or not theirs:
        return ""
    ratios = sorted(a / b for a, b in zip(ours, theirs, strict=False))
    listed = ", ".join(f"{value:.2f}" for value in ratios)
    return (f"\ntunesmith / transformers serve at {clients} clients, best setting each, "
            f"per round: {listed}; median {statistics.median(ratios):.2f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=4, help="Requests per client.")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--skip-transformers-serve", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="Turns at every server.")
    parser.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "bf16"],
        help="The runs' train.precision, which tunesmith serves them in (and the merged "
        "model's weights keep): fp32 compares fp32 with fp32 on a bf16 CPU.",
    )  # fmt: skip
    args = parser.parse_args()

    import torch

    from tunesmith import api
    from tunesmith.engine.threads import usable_cpus
    from tunesmith.models import resolve_precision

    workdir = Path(tempfile.mkdtemp(prefix="tunesmith-serve-bench-"))
    runs = train_runs(workdir, args.precision)
    lines = [
        "| server | clients | output tok/s | TTFT p50 s | TTFT p95 s | latency p50 s "
        "| latency p95 s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    key = "bench-key-0123456789abcd"
    key_file = workdir / "keys.txt"
    key_file.write_text(key + "\n")
    # tunesmith at its default thread count (one CPU left for the HTTP loop) and at all
    # usable CPUs; the peer below at both too, so each side's best setting is shown
    settings = sorted({max(1, usable_cpus() - 1), usable_cpus()})
    servers: list[Server] = []
    try:
        for threads in settings:
            process, url = start_tunesmith_serve(runs, key_file, args.max_batch, threads)
            models = models_of(url, key)
            label = f"{len(models)} models, 1 base, {threads} torch thread(s)"
            servers.append(Server(f"tunesmith serve ({label})", url, key, models, process))
        if not args.skip_transformers_serve:
            merged = api.merge(runs[0])
            # the peer at its own default (torch's: every core) and at tunesmith's default;
            # where the CPU computes bf16 natively (tunesmith serves in bf16 there), in bf16
            # too, as a user of it there would ask for
            settings = [(None, "auto"), (max(1, usable_cpus() - 1), "auto")]
            if resolve_precision("auto", torch.device("cpu")).compute == torch.bfloat16:
                settings.append((None, "bfloat16"))
            for threads, dtype in settings:
                started = start_transformers(merged, threads, dtype)
                if isinstance(started, str):
                    lines.append(started)
                else:
                    servers.append(started)
        results = drive_rounds(servers, args)
    finally:
        for server in servers:
            server.process.terminate()
            server.process.wait(timeout=30)
    for server in servers:
        lines.extend(row(server.name, clients, results[server.name, clients])
                     for clients in args.clients if (server.name, clients) in results)  # fmt: skip
        if server.failure:
            lines.append(f"| {server.name} | - | failed: {server.failure[:120]} | | | | |")
    for clients in args.clients:
        result = one_at_a_time(runs[0], clients, args.requests, args.max_tokens)
        lines.append(row("HF generate, one at a time", clients, [result]))
        print(lines[-1], flush=True)
    lines.append(ratio_line(results, max(args.clients)))
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
