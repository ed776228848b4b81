"""The OpenAI wire format, driven by the official `openai` client against a real server."""

from __future__ import annotations

import json

import httpx2 as httpx
import openai
import pytest

from .conftest import API_KEY

QUESTION = [{"role": "user", "content": "What is two plus two? (0)"}]


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)


def test_models_lists_the_base_and_every_run_with_its_parent(client, server) -> None:
    models = {model.id: model for model in client.models.list().data}
    base = server.state.registry.models["alpha"].parent
    assert set(models) == {base, "alpha", "beta"}
    assert models["alpha"].model_extra["parent"] == base
    assert models[base].model_extra["parent"] is None
    assert client.models.retrieve("beta").id == "beta"


def test_chat_completion_non_stream(client) -> None:
    answer = client.chat.completions.create(
        model="alpha", messages=QUESTION, max_tokens=6, temperature=0
    )
    assert answer.id.startswith("chatcmpl-") and answer.object == "chat.completion"
    assert answer.model == "alpha" and answer.system_fingerprint.startswith("fp_")
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = answer.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert 1 <= usage.completion_tokens <= 6


def test_stream_is_role_first_with_one_id_and_a_usage_chunk(client) -> None:
    whole = client.chat.completions.create(
        model="beta", messages=QUESTION, max_tokens=6, temperature=0
    )
    chunks = list(
        client.chat.completions.create(
            model="beta", messages=QUESTION, max_tokens=6, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert {chunk.id for chunk in chunks} == {chunks[0].id}
    assert {chunk.created for chunk in chunks} == {chunks[0].created}
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.content == ""
    *content, last, usage = chunks
    assert [c.choices[0].finish_reason for c in content] == [None] * len(content)
    assert last.choices[0].finish_reason == whole.choices[0].finish_reason
    assert usage.choices == [] and usage.usage.model_dump() == whole.usage.model_dump()
    assert all(chunk.usage is None for chunk in chunks[:-1])
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks[:-1])
    assert text == whole.choices[0].message.content


def test_raw_stream_ends_with_done_and_usage_chunk_has_empty_choices(server) -> None:
    body = {
        "model": "alpha", "messages": QUESTION, "max_tokens": 3, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    headers = {"authorization": f"Bearer {API_KEY}"}
    with httpx.stream(
        "POST", f"{server.base_url}/chat/completions", json=body, headers=headers
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    usage = json.loads(events[-2].removeprefix("data: "))
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] >= 1


def test_max_tokens_cut_is_finish_reason_length(client) -> None:
    for limit in ({"max_tokens": 1}, {"max_completion_tokens": 1}):
        answer = client.chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": "0 1 2 3 4 5"}],
            temperature=0, stop=None, **limit,
        )  # fmt: skip
        choice = answer.choices[0]
        assert answer.usage.completion_tokens <= 1
        assert choice.finish_reason == ("length" if answer.usage.completion_tokens else "stop")


def test_n_and_seed_and_stop(client) -> None:
    greedy = client.chat.completions.create(
        model="alpha", messages=QUESTION, max_tokens=5, temperature=0, n=3
    )
    assert [c.index for c in greedy.choices] == [0, 1, 2]
    assert len({c.message.content for c in greedy.choices}) == 1
    options = dict(model="base-of-alpha", messages=QUESTION, max_tokens=8, temperature=1.5)
    options["model"] = client.models.retrieve("alpha").model_extra["parent"]
    first = client.chat.completions.create(**options, seed=7, n=2)
    again = client.chat.completions.create(**options, seed=7, n=2)
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    text = greedy.choices[0].message.content
    if len(text) >= 2:
        cut = client.chat.completions.create(
            model="alpha", messages=QUESTION, max_tokens=5, temperature=0, stop=[text[1:]]
        )
        assert cut.choices[0].message.content == text[:1].strip()
        assert cut.choices[0].finish_reason == "stop"


def test_completions_endpoint(client) -> None:
    answer = client.completions.create(
        model="beta", prompt="The capital of", max_tokens=4, temperature=0
    )
    assert answer.object == "text_completion" and answer.id.startswith("cmpl-")
    assert isinstance(answer.choices[0].text, str)
    assert answer.usage.completion_tokens <= 4
    streamed = client.completions.create(
        model="beta", prompt="The capital of", max_tokens=4, temperature=0, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in streamed) == answer.choices[0].text


def test_errors_use_the_openai_envelope_and_status(client, server) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=QUESTION, max_tokens=2)
    assert missing.value.code == "model_not_found"
    assert missing.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="alpha", messages=QUESTION, max_tokens=2, n=10000)
    assert bad.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as long_prompt:
        client.chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": "two " * 300}], max_tokens=2
        )
    assert long_prompt.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as template:
        client.chat.completions.create(
            model="alpha", messages=QUESTION, extra_body={"chat_template": "{{ 7 * 7 }}"}
        )
    assert template.value.body["param"] == "chat_template"
    with pytest.raises(openai.AuthenticationError) as no_key:
        openai.OpenAI(base_url=server.base_url, api_key="wrong-key-0123456789", max_retries=0
                      ).models.list()  # fmt: skip
    assert no_key.value.code == "invalid_api_key"
    raw = httpx.post(
        f"{server.base_url}/chat/completions", content=b"{not json",
        headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"},
    )  # fmt: skip
    assert raw.status_code == 400
    assert set(raw.json()["error"]) == {"message", "type", "param", "code"}


def test_health_and_metrics(server) -> None:
    assert httpx.get(f"{server.root_url}/health").json() == {"status": "ok"}
    headers = {"authorization": f"Bearer {API_KEY}"}
    client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
    client.chat.completions.create(model="alpha", messages=QUESTION, max_tokens=2, temperature=0)
    text = httpx.get(f"{server.root_url}/metrics", headers=headers).text
    assert 'tunesmith_requests_total{model="alpha",route="chat.completions",status="200"}' in text
    for name in (
        "tunesmith_tokens_total",
        "tunesmith_request_latency_seconds_bucket",
        "tunesmith_time_to_first_token_seconds_bucket",
        "tunesmith_queue_wait_seconds",
    ):
        assert name in text  # fmt: skip
