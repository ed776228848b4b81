"""A tiny classification run on real Snips requests, and live inputs that do and do not drift.

The run trains the tiny model of tests/conftest.py for two steps: the monitor only needs
a run directory with its config, data and tokenizer (the perplexity signal needs the
weights, and any weights will do for its plumbing). Live inputs are the held-out Snips
requests (no drift) and SMS messages (another domain), both slices in tests/fixtures.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tunesmith import api
from tunesmith.config import load_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TRAIN_ROWS = 250


def snips_rows() -> list[dict[str, str]]:
    lines = (FIXTURES / "snips_requests.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    # the file holds 47 requests of each intent in turn; interleave them so that any
    # prefix holds every intent
    order = sorted(range(len(rows)), key=lambda i: (i % 47, rows[i]["intent"]))
    return [rows[i] for i in order]


def sms_texts() -> list[str]:
    lines = (FIXTURES / "sms_spam" / "SMSSpamCollection").read_text(encoding="utf-8").splitlines()
    return [line.split("\t", 1)[1] for line in lines[1:]]


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def log_line(prompt: str, answer: str, stamp: str) -> dict[str, object]:
    """A line as `tunesmith serve --log-requests` writes it."""
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
        "model": "snips", "answer": answer, "timestamp": stamp, "latency_s": 0.01,
        "prompt_tokens": 5, "completion_tokens": 2, "finish_reason": "stop",
    }  # fmt: skip


@pytest.fixture(scope="session")
def snips_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    workdir = tmp_path_factory.mktemp("monitor-run")
    rows = [{"text": r["text"], "label": r["intent"]} for r in snips_rows()[:TRAIN_ROWS]]
    write_jsonl(workdir / "snips.jsonl", rows)
    config = workdir / "run.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            model: {{name: "{tiny_model_dir}"}}
            data: {{train: snips.jsonl, split: [0.9, 0.1, 0.0], max_length: 64}}
            method: {{name: lora, r: 4, alpha: 8}}
            train: {{max_steps: 2, batch_size: 4, eval_every: 100, early_stopping_patience: null}}
            eval: {{enabled: false}}
            output: {{dir: "{workdir}", name: snips}}
            """
        )
    )
    return api.train(load_config(config), show_progress=False).run_dir


@pytest.fixture(scope="session")
def held_out_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Snips requests the run never saw, as a request log (answers are their intents)."""
    rows = snips_rows()[TRAIN_ROWS:]
    lines = [
        log_line(r["text"], r["intent"], f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}+00:00")
        for i, r in enumerate(rows)
    ]
    return write_jsonl(tmp_path_factory.mktemp("live") / "requests.jsonl", lines)


@pytest.fixture(scope="session")
def sms_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SMS messages sent to the Snips model: another domain; answers are what it would say."""
    lines = [
        log_line(text, "PlayMusic", f"2026-01-02T00:{i // 60:02d}:{i % 60:02d}+00:00")
        for i, text in enumerate(sms_texts()[:80])
    ]
    return write_jsonl(tmp_path_factory.mktemp("live") / "requests.jsonl", lines)
