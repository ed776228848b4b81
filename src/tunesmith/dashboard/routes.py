"""The dashboard's own routes: login and logout, the pages, and the run files a page
shows (the evaluation report, the data report, the loss curve) looked up by job id.

Everything a page changes (uploads, jobs, cancel/pause/resume, chats) goes through the
OpenAI routes of the same server, with the session cookie and the CSRF header, so the
dashboard can do nothing the API cannot and the `Guard` checks it all in one place.
"""

from __future__ import annotations

import hmac
import json
import secrets
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from tunesmith.dashboard.pages import REPORT_CSP, render, security_headers
from tunesmith.dashboard.sessions import (
    COOKIE,
    LOGIN_COOKIE,
    SESSION_SECONDS,
    Session,
    Sessions,
    cookie_header,
)
from tunesmith.runs import RunPaths

LOGIN_SECONDS = 600


def add_routes(app: FastAPI, state: Any, sessions: Sessions) -> None:
    """``state`` is the server's `ServerState`, with ``jobs`` set."""
    _login_routes(app, state, sessions)
    _page_routes(app, state, sessions)
    _run_file_routes(app, state)


def _session(request: Request, sessions: Sessions, state: Any) -> tuple[Session, str | None]:
    """The caller's session; without a key configured a browser gets one on sight
    (returns its new id to set), since the server is open to this machine anyway."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    session = sessions.session_of(headers)
    if session is not None:
        return session, None
    session_id, session = sessions.create(request.scope.get("state", {}).get("caller", "anon"))
    return session, session_id


def _with_cookie(response: Response, session_id: str | None) -> Response:
    if session_id is not None:
        response.headers.append("set-cookie", cookie_header(COOKIE, session_id, SESSION_SECONDS))
    return response


def _login_routes(app: FastAPI, state: Any, sessions: Sessions) -> None:
    def login_page(error: str = "", status: int = 200) -> Response:
        token = secrets.token_urlsafe(32)
        response = render("login", "Log in", token, status=status,
                          fill={"error": error, "csrf": token})  # fmt: skip
        response.headers.append("set-cookie", cookie_header(LOGIN_COOKIE, token, LOGIN_SECONDS))
        return response

    @app.get("/login", include_in_schema=False)
    async def login_form(request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        if sessions.session_of(headers) is not None or not state.keys.enabled:
            return RedirectResponse("/", status_code=303)
        return login_page()

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await request.form()
        token, key = str(form.get("csrf_token", "")), str(form.get("api_key", ""))
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
            return login_page("The login form expired; try again.", 403)
        identity = state.keys.identify(key.strip()) if state.keys.enabled else "anonymous"
        if identity is None:
            return login_page("That API key is not one of this server's keys.", 401)
        session_id, _ = sessions.create(identity)
        response = RedirectResponse("/", status_code=303)
        response.headers.append("set-cookie", cookie_header(COOKIE, session_id, SESSION_SECONDS))
        response.headers.append("set-cookie", cookie_header(LOGIN_COOKIE, "", 0))
        return response

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        sessions.drop(request.cookies.get(COOKIE))
        response = JSONResponse({"logged_out": True})
        response.headers.append("set-cookie", cookie_header(COOKIE, "", 0))
        return response


def _page_routes(app: FastAPI, state: Any, sessions: Sessions) -> None:
    def page(request: Request, name: str, title: str, data: dict | None = None,
             status: int = 200) -> Response:  # fmt: skip
        session, new_id = _session(request, sessions, state)
        return _with_cookie(render(name, title, session.csrf, data, status), new_id)

    @app.get("/", include_in_schema=False)
    async def jobs_page(request: Request) -> Response:
        return page(request, "jobs", "Jobs")

    @app.get("/jobs/{job_id}", include_in_schema=False)
    async def job_page(request: Request, job_id: str) -> Response:
        if state.jobs.store.job(job_id) is None:
            return page(request, "missing", "Not found", {"what": job_id}, status=404)
        return page(request, "job", job_id, {"job": job_id})

    @app.get("/new", include_in_schema=False)
    async def new_job_page(request: Request) -> Response:
        return page(request, "new", "New job", {"bases": sorted(state.jobs.base_models)})

    @app.get("/playground", include_in_schema=False)
    async def playground_page(request: Request) -> Response:
        return page(request, "playground", "Playground")

    @app.get("/compare", include_in_schema=False)
    async def compare_page(request: Request) -> Response:
        return page(request, "compare", "Compare runs")


def _run(state: Any, job_id: str) -> RunPaths | None:
    """The run directory of a job the store knows; the id never becomes a path otherwise."""
    if state.jobs.store.job(job_id) is None:
        return None
    return RunPaths(state.jobs.store.workspace.run_dir(job_id))


def _not_found(what: str) -> JSONResponse:
    body = {"error": {"message": f"no {what} yet", "type": "invalid_request_error",
                      "param": None, "code": "not_found"}}  # fmt: skip
    return JSONResponse(body, status_code=404)


def _run_file_routes(app: FastAPI, state: Any) -> None:
    @app.get("/jobs/{job_id}/report", include_in_schema=False)
    async def eval_report(job_id: str) -> Response:
        from tunesmith.evaluate.report import REPORT_NAME

        run = _run(state, job_id)
        if run is None or not (run.eval / REPORT_NAME).is_file():
            return _not_found("evaluation report")
        return FileResponse(run.eval / REPORT_NAME, media_type="text/html",
                            headers=security_headers(REPORT_CSP))  # fmt: skip

    @app.get("/jobs/{job_id}/data-report", include_in_schema=False)
    async def data_report(job_id: str) -> Response:
        run = _run(state, job_id)
        if run is None or not run.data_report.is_file():
            return _not_found("data report")
        text = run.data_report.read_text(encoding="utf-8")
        return Response(without_server_paths(state.jobs.store, job_id, text),
                        media_type="application/json")  # fmt: skip

    @app.get("/jobs/{job_id}/curve", include_in_schema=False)
    async def loss_curve(job_id: str) -> Response:
        run = _run(state, job_id)
        if run is None:
            return _not_found("job")
        return JSONResponse(read_curve(state.jobs.store, job_id, run.metrics))


def without_server_paths(store: Any, job_id: str, text: str) -> str:
    """The data report as the uploader knows it: our path of each uploaded file becomes
    the name it was uploaded under, and the workspace never shows (promise S4)."""
    body = json.loads(store.job(job_id)["body"])
    for key in ("training_file", "validation_file"):
        rows = store.query("SELECT * FROM files WHERE id = ?", (body.get(key),))
        if rows:
            path = json.dumps(str(store.file_path(rows[0])))[1:-1]
            text = text.replace(path, json.dumps(rows[0]["filename"])[1:-1])
    return text.replace(json.dumps(str(store.workspace.root))[1:-1], "<workspace>")


def read_curve(store: Any, job_id: str, metrics: Path) -> dict[str, list[list[float]]]:
    """Training loss from the job's metrics events (what the API reports) and validation
    loss from the run's ``metrics.jsonl``, skipping a line still being written."""
    rows = store.query(
        "SELECT data FROM events WHERE job_id = ? AND type = 'metrics' ORDER BY seq", (job_id,)
    )
    train = sorted({json.loads(r["data"])["step"]: json.loads(r["data"])["train_loss"]
                    for r in rows}.items())  # fmt: skip
    validation: list[list[float]] = []
    if metrics.is_file():
        for line in metrics.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("val_loss"), int | float):
                validation.append([record["step"], record["val_loss"]])
    total = json.loads(rows[-1]["data"]).get("total_steps") if rows else None
    return {"train": [list(p) for p in train], "validation": validation, "total_steps": total}
