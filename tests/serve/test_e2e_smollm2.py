"""End to end on the bundled SmolLM2-135M-Instruct: the base and two LoRA runs behind one
server, driven by the official `openai` client (a few training steps per run)."""

from __future__ import annotations

import threading
from pathlib import Path

import openai
import pytest
import torch

from tunesmith import api
from tunesmith.chat import reply
from tunesmith.config import load_config
from tunesmith.runs import load_trained
from tunesmith.serve import Limits

from .conftest import API_KEY, open_server

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
QUESTION = [{"role": "user", "content": "Play some jazz by Miles Davis"}]


def _train(tmp_path: Path, name: str, seed: int) -> Path:
    overrides = [
        f"output.dir={tmp_path}", f"output.name={name}", "train.max_steps=2",
        "train.batch_size=4", "train.eval_every=100", "eval.enabled=false",
        f"train.seed={seed}", "method.r=4",
        # Batched greedy answers equal one-at-a-time ones exactly in fp32; under bf16
        # autocast a padded batch rounds differently (1 of 9 burst replies differed).
        "train.precision=fp32",
    ]  # fmt: skip
    config = load_config(REPO / "examples" / "support-lora.yaml", overrides)
    return api.train(config, show_progress=False).run_dir


def test_smollm2_base_and_two_runs_behind_one_server(tmp_path: Path) -> None:
    runs = [_train(tmp_path, "support-a", 1), _train(tmp_path, "support-b", 2)]
    limits = Limits(requests_per_minute=40)
    with open_server(runs, keys=[API_KEY], limits=limits, max_batch=8) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key=API_KEY, max_retries=0)
        ids = [model.id for model in client.models.list().data]
        assert set(ids) == {"smollm2-135m-instruct", "support-a", "support-b"}

        answer = client.chat.completions.create(
            model="support-a", messages=QUESTION, max_tokens=16, temperature=0
        )
        trained = load_trained(runs[0], device="cpu")
        with trained.precision.autocast(torch.device("cpu")):  # as served and evaluated
            expected = reply(trained.model, trained.tokenizer, QUESTION, max_new_tokens=16)
        assert answer.choices[0].message.content == expected
        chunks = list(
            client.chat.completions.create(
                model="support-b", messages=QUESTION, max_tokens=8, temperature=0, stream=True,
                stream_options={"include_usage": True},
            )
        )  # fmt: skip
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1

        jobs = [(model, f"{text} {i}") for model in ids for i, text in enumerate(["Play jazz"] * 3)]
        alone = [_ask(client, model, prompt) for model, prompt in jobs]
        together: list[str | None] = [None] * len(jobs)
        barrier = threading.Barrier(len(jobs))

        def work(index: int) -> None:
            barrier.wait()
            together[index] = _ask(client, *jobs[index])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert together == alone

        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="gpt-4", messages=QUESTION, max_tokens=2)
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="support-a", messages=QUESTION, n=10000)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.base_url, api_key="x" * 20, max_retries=0).models.list()
        with pytest.raises(openai.RateLimitError):
            for _ in range(50):
                client.models.list()


def _ask(client: openai.OpenAI, model: str, prompt: str) -> str:
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=12, temperature=0
    )
    return answer.choices[0].message.content
