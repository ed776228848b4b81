"""The dashboard's login, session cookie and CSRF checks, over plain HTTP on a real server;
and the body caps: 100 MB-class uploads on the upload route only."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
from fastapi.routing import APIRoute

from tunesmith.jobs.server import attach_jobs
from tunesmith.serve import Limits, build_state, start_in_background
from tunesmith.serve.server import BackgroundServer

from ..serve.conftest import API_KEY

PAGES = ("/", "/new", "/playground", "/compare", "/jobs/ftjob-000")
CSRF_META = re.compile(r'name="csrf-token" content="([^"]+)"')
LOGIN_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
SERVE_CAP = 4_000
UPLOAD_CAP = 50_000


@pytest.fixture
def server(tmp_path: Path) -> Iterator[BackgroundServer]:
    state = build_state([], keys=[API_KEY], device="cpu",
                        limits=Limits(max_body_bytes=SERVE_CAP))  # fmt: skip
    attach_jobs(state, tmp_path / "workspace", {})
    state.jobs.max_upload_bytes = UPLOAD_CAP
    with start_in_background(state) as running:
        yield running


@pytest.fixture
def browser(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.root_url, follow_redirects=False, timeout=30) as client:
        yield client


def _log_in(browser: httpx.Client, key: str = API_KEY) -> httpx.Response:
    form = browser.get("/login")
    token = LOGIN_TOKEN.search(form.text).group(1)
    return browser.post("/login", data={"csrf_token": token, "api_key": key})


def _csrf(browser: httpx.Client) -> str:
    return CSRF_META.search(browser.get("/").text).group(1)


def test_pages_send_a_browser_without_a_session_to_the_login(browser: httpx.Client) -> None:
    for path in PAGES:
        answer = browser.get(path)
        assert (answer.status_code, answer.headers["location"]) == (303, "/login"), path
    assert browser.get("/v1/fine_tuning/jobs").status_code == 401  # the API still says 401
    assert browser.get("/static/app.js").status_code == 200  # no data in the package's files
    login = browser.get("/login")
    assert (
        login.status_code == 200
        and "default-src 'none'" in login.headers["content-security-policy"]
    )


def _api_routes(routes: list) -> Iterator[APIRoute]:
    """Every route, also those of an included router (FastAPI wraps it in one entry)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):
            yield from _api_routes(route.original_router.routes)


def test_no_route_of_the_jobs_server_answers_without_a_key_or_session(
    server: BackgroundServer, browser: httpx.Client
) -> None:
    routes = list(_api_routes(server.server.config.app.routes))
    assert len(routes) >= 30  # serve's, the files and jobs routes, the dashboard's
    for route in routes:
        path = route.path.replace("{model_id:path}", "m").replace("{job_id}", "ftjob-0")
        path = path.replace("{file_id}", "file-0")
        for method in route.methods:
            answer = browser.request(method, path)
            if path in ("/health", "/login"):
                assert answer.status_code in (200, 303, 403), (method, path)  # open by design
            elif method == "GET" and answer.status_code == 303:
                assert answer.headers["location"] == "/login", path  # a page: to the login
            else:
                assert answer.status_code == 401, (method, path, answer.status_code)


def test_login_exchanges_the_key_for_an_http_only_strict_cookie(browser: httpx.Client) -> None:
    assert _log_in(browser, "not-the-key-0123456789").status_code == 401
    answer = _log_in(browser)
    assert (answer.status_code, answer.headers["location"]) == (303, "/")
    cookie = next(c for c in answer.headers.get_list("set-cookie")
                  if c.startswith("tunesmith_session="))  # fmt: skip
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    for path in PAGES[:-1]:
        page = browser.get(path)
        assert page.status_code == 200 and API_KEY not in page.text, path
    assert browser.get("/jobs/ftjob-000").status_code == 404
    assert browser.get("/v1/models").status_code == 200  # the cookie stands for the key


def test_a_login_post_without_its_form_token_is_refused(browser: httpx.Client) -> None:
    browser.get("/login")
    answer = browser.post("/login", data={"csrf_token": "forged", "api_key": API_KEY})
    assert answer.status_code == 403 and "tunesmith_session" not in answer.headers.get(
        "set-cookie", ""
    )


def test_state_changes_need_the_csrf_token_of_the_session(browser: httpx.Client) -> None:
    _log_in(browser)
    token = _csrf(browser)
    body = {"model": "smollm2-135m-instruct"}
    for headers in ({}, {"x-csrf-token": "forged"}):
        refused = browser.post("/v1/fine_tuning/jobs", json=body, headers=headers)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
    upload = browser.post("/v1/files", data={"purpose": "fine-tune"},
                          files={"file": ("a.jsonl", b"{}\n")})  # fmt: skip
    assert upload.status_code == 403
    allowed = browser.post("/v1/fine_tuning/jobs", json=body, headers={"x-csrf-token": token})
    assert allowed.status_code == 400 and allowed.json()["error"]["param"] == "training_file"
    elsewhere = {"x-csrf-token": token, "origin": "http://evil.example"}
    foreign = browser.post("/v1/fine_tuning/jobs", json=body, headers=elsewhere)
    assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "cross_origin"
    assert browser.post("/logout", headers={"x-csrf-token": token}).status_code == 200
    assert browser.get("/").status_code == 303  # the session is gone on the server too


def test_only_the_upload_route_takes_a_large_body(browser: httpx.Client) -> None:
    key = {"authorization": f"Bearer {API_KEY}"}
    rows = b'{"messages": [{"role": "user", "content": "hi"}]}\n' * 200  # ~10 kB > SERVE_CAP
    uploaded = browser.post("/v1/files", data={"purpose": "fine-tune"}, headers=key,
                            files={"file": ("big.jsonl", rows)})  # fmt: skip
    assert uploaded.status_code == 200 and uploaded.json()["bytes"] == len(rows)
    chat = {"model": "x", "messages": [{"role": "user", "content": "a" * SERVE_CAP}]}
    assert browser.post("/v1/chat/completions", json=chat, headers=key).status_code == 413
    huge = browser.post("/v1/files", data={"purpose": "fine-tune"}, headers=key,
                        files={"file": ("huge.jsonl", rows * 10)})  # fmt: skip
    assert huge.status_code == 413
