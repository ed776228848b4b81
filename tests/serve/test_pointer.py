"""A promotion pointer: the server follows it, swapping the promoted run in without a restart."""

from __future__ import annotations

import os
from pathlib import Path

import openai

from tunesmith.serve.pointer import write_pointer

from .conftest import API_KEY, open_server

PROMPTS = ["What is two plus two? (0)", "capital of France? (1)", "say goodbye (0)"]


def _answers(client: openai.OpenAI, model: str) -> list[str]:
    return [
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": p}], max_tokens=8, temperature=0
        ).choices[0].message.content
        for p in PROMPTS
    ]  # fmt: skip


def test_the_server_follows_a_promotion_pointer(tiny_runs: list[Path], tmp_path: Path) -> None:
    alpha, beta = tiny_runs
    pointer = tmp_path / "facts.promoted.json"
    write_pointer(pointer, alpha)
    with open_server([pointer, beta], keys=[API_KEY]) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
        before = _answers(client, "facts")
        assert before != _answers(client, "beta")  # alpha and beta answer differently
        assert client.models.retrieve("facts").model_extra["root"] == str(alpha)

        write_pointer(pointer, beta)
        stat = pointer.stat()  # same-second writes: make the change visible to mtime
        os.utime(pointer, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
        after = _answers(client, "facts")
        assert after == _answers(client, "beta")
        assert client.models.retrieve("facts").model_extra["root"] == str(beta.resolve())
        assert "facts@beta" not in server.state.registry.models  # the staging id is gone

        write_pointer(pointer, alpha)  # and back: the adapter names never collide
        os.utime(pointer, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000))
        assert _answers(client, "facts") == before
