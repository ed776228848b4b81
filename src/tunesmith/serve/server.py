"""Start the server: load the runs, check the bind is safe, run uvicorn.

`serve` is what ``tunesmith serve`` and ``tunesmith.api.serve`` call and blocks until
stopped; `start_in_background` runs the same server in a thread on a port the OS
picks (tests and benchmarks drive it with a real HTTP client).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from tunesmith.engine.threads import configure_threads, usable_cpus
from tunesmith.serve.app import Limits, ServerState, create_app
from tunesmith.serve.decoding import Decoder, Job
from tunesmith.serve.metrics import ServeMetrics
from tunesmith.serve.pointer import POINTER_SUFFIX, FollowedPointer, is_pointer, read_pointer
from tunesmith.serve.registry import Registry
from tunesmith.serve.requestlog import DEFAULT_MAX_BYTES, RequestLog
from tunesmith.serve.security import KeyChecker, check_bind, load_api_keys


def parse_run_argument(argument: str | Path) -> tuple[Path, str | None]:
    """``RUN_DIR`` or ``NAME=RUN_DIR``: the model id defaults to the directory's name."""
    text = str(argument)
    name, separator, path = text.partition("=")
    if separator and name and "/" not in name:
        return Path(path), name
    return Path(text), None


def build_state(
    run_dirs: Sequence[str | Path],
    *,
    keys: Sequence[str] = (),
    max_batch: int = 8,
    log_requests: Path | None = None,
    limits: Limits | None = None,
    device: str = "auto",
    log_max_bytes: int = DEFAULT_MAX_BYTES,
) -> ServerState:
    """Load every run (one base in memory per base model) and the decoder that runs them.

    A promotion pointer (``*.promoted.json``) in place of a run directory serves the run it
    names and is followed: when it changes, the newly named run replaces it.
    """
    registry = Registry(device=device)
    pointers = []
    for argument in run_dirs:
        run_dir, name = parse_run_argument(argument)
        if is_pointer(run_dir):
            target = read_pointer(run_dir)
            model_id = name or run_dir.name.removesuffix(POINTER_SUFFIX)
            stamp = run_dir.stat().st_mtime_ns
            registry.add(target, model_id)
            pointers.append(FollowedPointer(run_dir, model_id, stamp, target))
            continue
        registry.add(run_dir, name)
    metrics = ServeMetrics()

    def observe(batch: list[Job]) -> None:
        now = time.monotonic()
        for job in batch:
            metrics.queue_wait.observe(now - job.enqueued)
        metrics.batch_rows.observe(sum(len(job.rows) for job in batch))

    return ServerState(
        registry=registry,
        decoder=Decoder(max_batch=max_batch, on_batch=observe),
        limits=limits or Limits(),
        keys=KeyChecker(list(keys)),
        metrics=metrics,
        request_log=RequestLog(log_requests, log_max_bytes) if log_requests else None,
        pointers=pointers,
    )


def _print_loaded(registry: Registry, threads: int | None) -> None:
    names = ", ".join(registry.models)
    packed = registry.packed_bytes() / 2**20
    kernels = f"weights packed for decoding (+{packed:,.0f} MiB)" if packed else "plain kernels"
    threads_text = f", {threads} torch thread(s)" if threads else ""
    print(f"tunesmith serve: {len(registry.models)} models ({names}); {kernels}{threads_text}")


def serve(
    run_dirs: Sequence[str | Path],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key_file: Path | None = None,
    insecure_no_auth: bool = False,
    max_batch: int = 8,
    log_requests: Path | None = None,
    limits: Limits | None = None,
    device: str = "auto",
    jobs_workspace: Path | None = None,
    threads: int | None = None,
) -> None:
    """Serve the runs (and their bases) until interrupted. Refuses a non-loopback bind
    without an API key before anything is loaded. ``jobs_workspace`` adds the files and
    fine-tuning jobs routes over that workspace and starts a worker.

    ``threads`` (default: one CPU fewer than usable) are torch's intra-op threads. The
    HTTP loop and the chat templates need a CPU of their own while the decoder steps: a
    decode step is hundreds of small parallel regions, and each waits for its slowest
    thread, so one preempted thread stalls them all (measured on 2 CPUs at 16 clients:
    82 output tokens/s with 2 threads, 146 with 1)."""
    keys = load_api_keys(api_key_file)
    check_bind(host, keys, insecure_no_auth)
    if threads is None and not os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = max(1, usable_cpus() - 1)
    configure_threads(threads, 1)
    state = build_state(
        run_dirs, keys=keys, max_batch=max_batch, log_requests=log_requests,
        limits=limits, device=device,
    )  # fmt: skip
    _print_loaded(state.registry, threads)
    worker = None
    if jobs_workspace is not None:
        from tunesmith.jobs.server import attach_jobs, start_worker

        attach_jobs(state, jobs_workspace)
        worker = start_worker(jobs_workspace)
    try:
        uvicorn.run(create_app(state), host=host, port=port, log_level="info")
    finally:
        state.decoder.stop()
        if worker is not None:
            worker.terminate()


@dataclass
class BackgroundServer:
    """A real uvicorn server on 127.0.0.1 in a thread; `stop` (or the context) ends it."""

    server: uvicorn.Server
    thread: threading.Thread
    state: ServerState
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.state.decoder.stop()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_in_background(state: ServerState, *, timeout: float = 30.0) -> BackgroundServer:
    """Bind a free port on 127.0.0.1 (the OS chooses it) and serve ``state`` from a thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(state), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    return BackgroundServer(server=server, thread=thread, state=state, port=port)
