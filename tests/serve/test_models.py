"""Served = evaluated, one base under many adapters, batching that never changes an answer,
runs added and removed while serving, and the request log."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx2 as httpx
import openai
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.data.formats import read_file

from .conftest import API_KEY, open_server, train_tiny_run

PROMPTS = ["What is two plus two? (0)", "capital of France? (1)", "say goodbye (0)", "a number (1)"]


def _ask(client: openai.OpenAI, model: str, prompt: str, max_tokens: int = 8) -> str:
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
        temperature=0,
    )  # fmt: skip
    return answer.choices[0].message.content


def test_greedy_answers_equal_tunesmith_generate(server, tiny_runs) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
    base = server.state.registry.models["alpha"].parent
    runner = CliRunner()
    answers = {}
    for run_dir, model, flags in [
        (tiny_runs[0], "alpha", []), (tiny_runs[1], "beta", []), (tiny_runs[0], base, ["--base"]),
    ]:  # fmt: skip
        for prompt in PROMPTS[:3]:
            result = runner.invoke(
                app, ["generate", str(run_dir), "-p", prompt, "--max-new-tokens", "8", *flags]
            )
            assert result.exit_code == 0, result.output
            served = _ask(client, model, prompt)
            assert served == result.output.strip(), (model, prompt)
            answers[model, prompt] = served
    # the three models are really three: the runs learned different answers
    assert len({answers[m, p] for m, p in answers}) > 3


def test_one_base_in_memory_for_both_adapters(server) -> None:
    models = server.state.registry.models
    base = models["alpha"].parent
    assert models["alpha"].module is models["beta"].module is models[base].module
    fingerprints = {models[name].fingerprint for name in (base, "alpha", "beta")}
    assert len(fingerprints) == 3


def _burst(client: openai.OpenAI, jobs: list[tuple[str, str]]) -> list[str]:
    results: list[str | None] = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def work(index: int) -> None:
        start.wait()
        results[index] = _ask(client, *jobs[index])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results  # type: ignore[return-value]


def test_a_concurrent_burst_across_three_models_equals_one_at_a_time(server) -> None:
    """Exact string equality, no tolerance: fp32 on CPU, rows left-padded as in eval."""
    client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
    base = server.state.registry.models["alpha"].parent
    jobs = [(model, prompt) for model in (base, "alpha", "beta") for prompt in PROMPTS]
    alone = [_ask(client, model, prompt) for model, prompt in jobs]
    rows = server.state.metrics.batch_rows
    before = _histogram(rows)
    together = _burst(client, jobs)
    assert together == alone
    batches, total_rows = (after - was for after, was in zip(_histogram(rows), before, strict=True))
    assert total_rows == len(jobs) and batches < len(jobs)  # requests really shared batches


def _histogram(histogram) -> tuple[float, float]:
    samples = {s.name: s.value for s in histogram.collect()[0].samples if not s.labels.get("le")}
    return samples["tunesmith_batch_rows_count"], samples["tunesmith_batch_rows_sum"]


def test_runs_are_added_and_removed_while_serving(tiny_runs, serve_base_dir, tmp_path) -> None:
    full_run = train_tiny_run(tmp_path, serve_base_dir, "whole", method="{name: full}", steps=20)
    headers = {"authorization": f"Bearer {API_KEY}"}
    with open_server(tiny_runs[:1], keys=[API_KEY]) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key=API_KEY, max_retries=0)
        before = _ask(client, "alpha", PROMPTS[0])
        added = httpx.post(
            srv.root_url + "/admin/runs", headers=headers,
            json={"run_dir": str(tiny_runs[1]), "name": "beta-live"},
        )  # fmt: skip
        assert added.status_code == 200, added.text
        full = httpx.post(
            srv.root_url + "/admin/runs", headers=headers, json={"run_dir": str(full_run)}
        )
        assert full.status_code == 200, full.text
        models = {m.id: m for m in client.models.list().data}
        assert {"alpha", "beta-live", "whole"} <= set(models)
        registry = srv.state.registry.models
        assert registry["beta-live"].module is registry["alpha"].module  # adapter on the base
        assert registry["whole"].module is not registry["alpha"].module  # a model of its own
        assert _ask(client, "beta-live", PROMPTS[0])
        assert _ask(client, "whole", PROMPTS[0]) is not None
        removed = httpx.delete(srv.root_url + "/admin/runs/beta-live", headers=headers)
        assert removed.status_code == 200
        try:
            _ask(client, "beta-live", PROMPTS[0])
            raise AssertionError("a removed run still answered")
        except openai.NotFoundError:
            pass
        assert _ask(client, "alpha", PROMPTS[0]) == before
        missing = httpx.post(
            srv.root_url + "/admin/runs", headers=headers, json={"run_dir": str(tmp_path / "no")}
        )
        assert missing.status_code == 400 and "config.yaml" in missing.json()["error"]["message"]


def test_admin_routes_need_a_key_to_exist(tiny_runs) -> None:
    with open_server(tiny_runs[:1]) as srv:
        response = httpx.post(srv.root_url + "/admin/runs", json={"run_dir": str(tiny_runs[1])})
        assert response.status_code == 403


def test_request_log_is_chat_training_data_and_rotates(tiny_runs, tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    with open_server(tiny_runs[:1], log_requests=log_dir, log_max_bytes=1500) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
        answers = [_ask(client, "alpha", prompt) for prompt in PROMPTS * 2]
    files = sorted(log_dir.glob("requests*.jsonl"))
    assert len(files) >= 2  # rotated by size
    lines = [json.loads(line) for path in files for line in path.read_text().splitlines()]
    assert sorted(line["answer"] for line in lines) == sorted(answers)
    first = lines[0]
    assert first["model"] == "alpha" and first["completion_tokens"] >= 1
    assert first["messages"][-1] == {"role": "assistant", "content": first["answer"]}
    for path in files:
        read = read_file(path)
        assert read.format == "chat" and len(read.records) >= 1
        assert not [p for p in read.problems if getattr(p, "severity", "error") == "error"]


def test_requests_join_a_running_batch_between_decode_steps(server, monkeypatch) -> None:
    """A request sent while another decodes is admitted into that running batch (the batch
    held a row when it joined), and both answers equal their one-at-a-time answers."""
    from tunesmith.serve.continuous import RunningBatch

    client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
    base = server.state.registry.models["alpha"].parent
    long_alone = client.chat.completions.create(
        model=base, messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=200,
        temperature=0,
    )  # fmt: skip
    assert long_alone.choices[0].finish_reason == "length"  # it really decodes 200 steps
    short_alone = _ask(client, "beta", PROMPTS[1])
    admitted_beside: list[int] = []
    admit = RunningBatch.admit

    def recording_admit(self: RunningBatch, jobs: list) -> None:
        admitted_beside.append(len(self))
        admit(self, jobs)

    monkeypatch.setattr(RunningBatch, "admit", recording_admit)
    long_text: list[str] = []
    thread = threading.Thread(
        target=lambda: long_text.append(_ask(client, base, PROMPTS[0], max_tokens=200))
    )
    thread.start()
    for _ in range(5000):
        if admitted_beside:
            break
        threading.Event().wait(0.001)
    short = _ask(client, "beta", PROMPTS[1])
    thread.join(timeout=60)
    assert admitted_beside == [0, 1]  # the short request joined the long one's batch
    assert short == short_alone and long_text == [long_alone.choices[0].message.content]
