"""``tunesmith serve RUN --jobs`` from the command line: the official client uploads,
fine-tunes the served run's base and chats with the result; SIGTERM stops it all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
from openai import OpenAI

from ..conftest import FACTS, REPO_ROOT
from ..serve.conftest import API_KEY, train_tiny_run
from .conftest import LEARNING_RATE_MULTIPLIER, TERMINAL, TINY_OVERRIDES, facts_file, wait_for


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(process: subprocess.Popen, root: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "tunesmith serve exited before answering"
        try:
            if httpx.get(root + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"tunesmith serve did not answer {root}/health in {timeout}s")


def test_serve_jobs_from_the_command_line(tmp_path: Path, serve_base_dir: Path) -> None:
    run_dir = train_tiny_run(tmp_path, serve_base_dir, "served")
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"# the test's key\n{API_KEY}\n")
    port = _free_port()
    command = [
        sys.executable, "-c", "from tunesmith.cli import app; app()", "serve", str(run_dir),
        "--jobs", "--workspace", str(tmp_path / "workspace"), "--api-key-file", str(key_file),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, cwd=tmp_path)
    root = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(process, root)
        assert httpx.get(root + "/").headers["location"] == "/login"  # the dashboard is there
        client = OpenAI(base_url=root + "/v1", api_key=API_KEY, max_retries=0)
        base = serve_base_dir.name
        assert {"served", base} <= {model.id for model in client.models.list().data}
        uploaded = client.files.create(file=facts_file(tmp_path).open("rb"), purpose="fine-tune")
        hyper = {"batch_size": 4, "learning_rate_multiplier": LEARNING_RATE_MULTIPLIER}
        job = client.fine_tuning.jobs.create(
            model=base, training_file=uploaded.id, suffix="cli", seed=3,
            method={"type": "supervised", "supervised": {"hyperparameters": hyper}},
            extra_body={"tunesmith": {"overrides": TINY_OVERRIDES}},
        )  # fmt: skip
        done = wait_for(client, job.id, TERMINAL)
        assert done.status == "succeeded", done.error
        answer = client.chat.completions.create(
            model=done.fine_tuned_model, max_tokens=8, temperature=0,
            messages=[{"role": "user", "content": "capital of France? (0)"}],
        )  # fmt: skip
        assert answer.choices[0].message.content.strip() in {a for _, a in FACTS}
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    assert code in (0, -signal.SIGTERM)
    _wait_gone(str(tmp_path / "workspace"))


def _wait_gone(workspace: str, timeout: float = 15) -> None:
    """No process (the server's worker, its training child) is left on the workspace."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in Path("/proc").glob("[0-9]*/cmdline") if _mentions(p, workspace)]
        if not left:
            return
        time.sleep(0.2)
    raise AssertionError(f"processes left running on {workspace}: {left}")


def _mentions(cmdline: Path, text: str) -> bool:
    try:
        return text.encode() in cmdline.read_bytes()
    except OSError:  # the process ended meanwhile
        return False
