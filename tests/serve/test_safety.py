"""Safe by default (promises S5, S6): keys on every route, loopback bind, caps, rate limits."""

from __future__ import annotations

import json
import random
import threading

import httpx2 as httpx
import openai
import pytest
from fastapi.routing import APIRoute

from tunesmith.serve import Limits
from tunesmith.serve.errors import ServeError
from tunesmith.serve.security import OPEN_PATHS, check_bind, load_api_keys

from .conftest import API_KEY, open_server

QUESTION = [{"role": "user", "content": "What is two plus two? (0)"}]


def _concrete(path: str) -> str:
    return path.replace("{model_id:path}", "alpha").replace("{model_id}", "alpha")


def test_every_route_but_health_answers_401_without_the_key(server) -> None:
    app = server.server.config.app
    routes = [route for route in app.routes if isinstance(route, APIRoute)]
    assert len(routes) >= 8  # the enumeration sees the routes (models, chat, admin, …)
    checked = 0
    for route in routes:
        for method in route.methods:
            url = server.root_url + _concrete(route.path)
            for headers in ({}, {"authorization": "Bearer wrong-key-0123456789"}):
                response = httpx.request(method, url, headers=headers, json={})
                if route.path in OPEN_PATHS:
                    assert response.status_code == 200
                else:
                    assert response.status_code == 401, (method, route.path)
                    assert response.json()["error"]["code"] == "invalid_api_key"
                checked += 1
    assert checked >= 16
    unknown = httpx.get(server.root_url + "/v1/no-such-route")
    assert unknown.status_code == 401  # no route map for callers without a key


def test_a_public_bind_without_a_key_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("TUNESMITH_API_KEY", raising=False)
    with pytest.raises(ServeError, match=r"refusing to listen on 0\.0\.0\.0"):
        check_bind("0.0.0.0", load_api_keys(None), insecure_no_auth=False)
    check_bind("127.0.0.1", [], insecure_no_auth=False)
    check_bind("::1", [], insecure_no_auth=False)
    keys = tmp_path / "keys"
    keys.write_text("# one key a line\n" + API_KEY + "\n")
    check_bind("0.0.0.0", load_api_keys(keys), insecure_no_auth=False)
    keys.write_text("short\n")
    with pytest.raises(ServeError, match="shorter than 16"):
        load_api_keys(keys)


def test_the_cli_exits_non_zero_on_a_public_bind_without_a_key(tiny_runs) -> None:
    from typer.testing import CliRunner

    from tunesmith.cli import app

    result = CliRunner().invoke(app, ["serve", str(tiny_runs[0]), "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "refusing to listen" in result.output


def test_the_key_is_never_in_an_answer_or_the_metrics(server, capfd) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
    client.chat.completions.create(model="alpha", messages=QUESTION, max_tokens=2)
    metrics = httpx.get(
        server.root_url + "/metrics", headers={"authorization": f"Bearer {API_KEY}"}
    )
    assert API_KEY not in metrics.text
    captured = capfd.readouterr()
    assert API_KEY not in captured.out + captured.err


def test_rate_limit_answers_429_with_retry_after(tiny_runs) -> None:
    with open_server(tiny_runs[:1], keys=[API_KEY], limits=Limits(requests_per_minute=3)) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key=API_KEY, max_retries=0)
        for _ in range(3):
            client.models.list()
        with pytest.raises(openai.RateLimitError) as limited:
            client.models.list()
        response = limited.value.response
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["x-ratelimit-limit-requests"] == "3"
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        assert limited.value.code == "rate_limit_exceeded"
        assert httpx.get(srv.root_url + "/health").status_code == 200  # liveness is never limited


def test_tokens_per_minute_limit_answers_429_with_token_headers(tiny_runs) -> None:
    limits = Limits(tokens_per_minute=130)
    with open_server(tiny_runs[:1], keys=[API_KEY], limits=limits) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key=API_KEY, max_retries=0)
        ask = dict(model="alpha", messages=QUESTION, max_tokens=40)
        client.chat.completions.create(**ask)  # 22 prompt + 40 of the 130 tokens
        client.chat.completions.create(**ask)
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(**ask)
        headers = limited.value.response.headers
        assert headers["x-ratelimit-limit-tokens"] == "130"
        assert int(headers["retry-after"]) >= 1
        with pytest.raises(openai.RateLimitError, match="Request too large"):
            client.chat.completions.create(model="alpha", messages=QUESTION, max_tokens=200)


def test_a_runaway_template_times_out_and_the_server_goes_on(tiny_runs) -> None:
    limits = Limits(template_seconds=0.2)
    with open_server(tiny_runs, limits=limits) as srv:
        slow = srv.state.registry.models["beta"]
        slow.tokenizer.chat_template = (  # ~1.5 s of looping, then a plain prompt
            "{% for i in range(1000) %}{% for j in range(50000) %}{% endfor %}{% endfor %}"
            "{{ messages[0]['content'] }}"
        )
        client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="beta", messages=QUESTION, max_tokens=4)
        assert refused.value.code == "template_timeout"
        answer = client.chat.completions.create(model="alpha", messages=QUESTION, max_tokens=4)
        assert answer.choices[0].finish_reason in ("stop", "length")


def test_caps_on_body_messages_tokens_and_n(tiny_runs) -> None:
    limits = Limits(max_body_bytes=2000, max_messages=3, max_tokens=16, max_n=2)
    with open_server(tiny_runs[:1], limits=limits) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
        cases = [
            (dict(messages=QUESTION * 5), "messages"),
            (dict(messages=QUESTION, max_tokens=17), "max_tokens"),
            (dict(messages=QUESTION, n=3), "n"),
        ]
        for options, param in cases:
            with pytest.raises(openai.BadRequestError) as capped:
                client.chat.completions.create(model="alpha", **options)
            assert capped.value.body["param"] == param
        with pytest.raises(openai.APIStatusError) as too_big:
            client.chat.completions.create(
                model="alpha", messages=[{"role": "user", "content": "x" * 5000}]
            )
        assert too_big.value.status_code == 413


def _malformed_bodies(rng: random.Random) -> list[bytes]:
    good = {"model": "alpha", "messages": QUESTION, "max_tokens": 2}
    junk = [None, -1, 0, 1e308, "", "x" * 50, [], {}, [1, 2], {"a": {"b": []}}, True, 2**70]
    bodies: list[bytes] = [b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"model": "alpha"', b"1"]
    for _ in range(300):
        body = dict(good)
        for _ in range(rng.randint(1, 3)):
            key = rng.choice([*good, "n", "stop", "temperature", "top_p", "seed", "stream",
                              "stream_options", "max_completion_tokens", "tools"])  # fmt: skip
            body[key] = rng.choice(junk)
        if rng.random() < 0.3:
            body["messages"] = [
                {"role": rng.choice(["user", "tool", 3, None]), "content": rng.choice(junk)}
            ]
        bodies.append(json.dumps(body).encode())
    return bodies


def test_fuzzed_bodies_get_4xx_and_the_server_still_answers(server) -> None:
    headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
    statuses: dict[int, int] = {}
    url = f"{server.base_url}/chat/completions"
    with httpx.Client(timeout=60) as http:
        for body in _malformed_bodies(random.Random(0)):
            response = http.post(url, content=body, headers=headers)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code != 200:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert all(status in (200, 400, 404, 413) for status in statuses), statuses
    assert statuses.get(400, 0) > 200
    client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
    answer = client.chat.completions.create(
        model="alpha", messages=QUESTION, max_tokens=3, temperature=0
    )
    assert answer.choices[0].message.content


def test_a_client_that_disconnects_mid_stream_frees_its_row(tiny_runs) -> None:
    with open_server(tiny_runs[:1], max_batch=4) as srv:
        decoder = srv.state.decoder
        seen: list = []
        observe = decoder.on_batch
        decoder.on_batch = lambda batch: (seen.extend(batch), observe(batch))
        candidates = ["0 1 2 3", "the a an of", "Paris Rome", "####", "spam ham", "{", "Four."]
        base = srv.state.registry.models["alpha"].parent  # untrained: rarely says eos
        body = {"model": base, "max_tokens": 200, "temperature": 0, "stream": True}
        for prompt in candidates:  # a prompt that, left alone, runs to the token limit
            body["prompt"] = prompt
            whole = httpx.post(f"{srv.base_url}/completions", json={**body, "stream": False})
            if whole.json()["usage"]["completion_tokens"] == 200:
                break
        else:
            raise AssertionError("no candidate prompt runs to the limit; add one")
        seen.clear()
        with httpx.stream("POST", f"{srv.base_url}/completions", json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
                    break  # the first piece of text arrived: hang up
        row = seen[0].rows[0]
        for _ in range(500):
            if row.done:
                break
            threading.Event().wait(0.01)
        assert row.cancelled and row.done
        assert len(row.tokens) < 200
        client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
        assert client.completions.create(model="alpha", prompt="0 1", max_tokens=2).choices
