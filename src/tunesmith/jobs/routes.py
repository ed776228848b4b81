"""The OpenAI files and fine-tuning jobs routes, mounted on `tunesmith serve --jobs`.

Request paths carry ids only; every id is looked up in the store, and the store makes
the file names (promise S4). A job that succeeded is published in the server's
registry under its ``fine_tuned_model`` before any answer that could reveal its name.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from tunesmith.jobs.schemas import (
    checkpoint_object,
    event_object,
    file_object,
    job_object,
    parse_create,
)
from tunesmith.jobs.store import SUFFIXES, Store, new_id
from tunesmith.serve.errors import APIError

CHUNK = 1 << 16
UPLOAD_PATH = "/v1/files"
MULTIPART_SLACK = 1 << 20
"""Room for the multipart framing and the ``purpose`` field around the file's bytes."""


@dataclass
class JobsState:
    """What the jobs routes need: the store, the base models jobs may start from (id →
    name or dir, the operator's choice) and the upload cap."""

    store: Store
    base_models: dict[str, str]
    max_upload_bytes: int = 100_000_000
    published: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def upload_body_cap(jobs: JobsState) -> int:
    """The body cap of the upload route alone; every other route keeps serve's cap."""
    return jobs.max_upload_bytes + MULTIPART_SLACK


def mount_jobs(app: FastAPI, serve_state: Any, jobs: JobsState) -> None:
    """Add the routes to the server's app; ``serve_state`` is its `ServerState`."""
    router = APIRouter()
    _file_routes(router, jobs)
    _job_routes(router, jobs, serve_state)
    app.include_router(router)

    @app.middleware("http")
    async def publish_first(request: Request, call_next):
        if request.url.path.startswith(("/v1/models", "/v1/chat", "/v1/completions")):
            await run_in_threadpool(publish_finished, jobs, serve_state)
        return await call_next(request)


def publish_finished(jobs: JobsState, serve_state: Any) -> None:
    """Serve every succeeded job's run that is not served yet (on the decoder thread)."""
    rows = jobs.store.query("SELECT id, fine_tuned_model FROM jobs WHERE status = 'succeeded'")
    with jobs.lock:
        for row in rows:
            name = row["fine_tuned_model"]
            if name in jobs.published or serve_state.registry.get(name) is not None:
                jobs.published.add(name)
                continue
            run_dir = jobs.store.workspace.run_dir(row["id"])
            serve_state.decoder.call(lambda r=run_dir, n=name: serve_state.registry.add(r, n))
            jobs.published.add(name)


def _suffix(filename: str) -> str:
    lowered = filename.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if lowered.endswith(suffix):
            return suffix
    raise APIError(400, f"file type not supported; use one of {', '.join(SUFFIXES)}",
                   param="file")  # fmt: skip


def _file_routes(router: APIRouter, jobs: JobsState) -> None:
    store = jobs.store

    @router.post(UPLOAD_PATH)
    async def create_file(request: Request) -> dict[str, Any]:
        form = await request.form()
        purpose, upload = form.get("purpose"), form.get("file")
        if purpose != "fine-tune":
            raise APIError(400, "purpose must be 'fine-tune' on this server", param="purpose")
        if upload is None or isinstance(upload, str):
            raise APIError(400, "Missing required parameter: 'file'.", param="file")
        filename = (upload.filename or "upload.jsonl").replace("\\", "/").rsplit("/", 1)[-1]
        suffix = _suffix(filename)
        file_id = new_id("file")
        target = store.workspace.files / f"{file_id}{suffix}"
        digest, size = hashlib.sha256(), 0
        with target.open("wb") as out:
            while block := await upload.read(CHUNK):
                size += len(block)
                if size > jobs.max_upload_bytes:
                    out.close()
                    target.unlink(missing_ok=True)
                    raise APIError(413, f"file over {jobs.max_upload_bytes} bytes", param="file")
                digest.update(block)
                out.write(block)
        store.add_file(file_id, filename, purpose, size, digest.hexdigest(), suffix)
        return file_object(store.file(file_id))

    @router.get("/v1/files")
    async def list_files() -> dict[str, Any]:
        return {"object": "list", "data": [file_object(r) for r in store.files()],
                "has_more": False}  # fmt: skip

    @router.get("/v1/files/{file_id}")
    async def retrieve_file(file_id: str) -> dict[str, Any]:
        return file_object(_file(store, file_id))

    @router.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str) -> dict[str, Any]:
        _file(store, file_id)
        store.delete_file(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    @router.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str) -> FileResponse:
        row = _file(store, file_id)
        return FileResponse(store.file_path(row), media_type="application/octet-stream")


def _file(store: Store, file_id: str):
    row = store.file(file_id)
    if row is None:
        raise APIError(404, f"No such File object: {file_id}", param="id", code="not_found")
    return row


def _job(store: Store, job_id: str):
    row = store.job(job_id)
    if row is None:
        raise APIError(404, f"Fine-tuning job {job_id} not found", param="id", code="not_found")
    return row


def _job_routes(router: APIRouter, jobs: JobsState, serve_state: Any) -> None:
    store = jobs.store

    @router.post("/v1/fine_tuning/jobs")
    async def create_job(request: Request) -> dict[str, Any]:
        try:
            raw = json.loads(await request.body())
        except json.JSONDecodeError:
            raise APIError(400, "We could not parse the JSON body of your request.") from None
        body = parse_create(raw)
        if body["model"] not in jobs.base_models:
            known = ", ".join(sorted(jobs.base_models))
            raise APIError(400, f"model {body['model']!r} cannot be fine-tuned here; "
                           f"choose one of: {known}", param="model", code="model_not_available")  # fmt: skip  # noqa: E501
        for key in ("training_file", "validation_file"):
            if body.get(key) and store.file(body[key]) is None:
                raise APIError(400, f"invalid {key}: no such file {body[key]}", param=key)
        job_id = new_id("ftjob")
        store.add_job(job_id, {**body, "base_path": jobs.base_models[body["model"]]})
        return job_object(store.job(job_id))

    @router.get("/v1/fine_tuning/jobs")
    async def list_jobs(after: str | None = None, limit: int = 20) -> dict[str, Any]:
        store.release_stale()
        rows, more = store.jobs_page(after, max(1, min(limit, 100)))
        return {"object": "list", "data": [job_object(r) for r in rows], "has_more": more}

    @router.get("/v1/fine_tuning/jobs/{job_id}")
    async def retrieve_job(job_id: str) -> dict[str, Any]:
        store.release_stale()
        row = _job(store, job_id)
        if row["status"] == "succeeded":
            await run_in_threadpool(publish_finished, jobs, serve_state)
        return job_object(row)

    async def control(job_id: str, action: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        row = _job(store, job_id)
        if not store.request_control(job_id, action, allowed):
            raise APIError(400, f"cannot {action} a job that is {row['status']}", param="id")
        return job_object(store.job(job_id))

    @router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    async def cancel(job_id: str) -> dict[str, Any]:
        return await control(job_id, "cancel", ("validating_files", "queued", "running",
                                                "paused"))  # fmt: skip

    @router.post("/v1/fine_tuning/jobs/{job_id}/pause")
    async def pause(job_id: str) -> dict[str, Any]:
        return await control(job_id, "pause", ("validating_files", "queued", "running"))

    @router.post("/v1/fine_tuning/jobs/{job_id}/resume")
    async def resume(job_id: str) -> dict[str, Any]:
        row = _job(store, job_id)
        if row["status"] != "paused":
            raise APIError(400, f"cannot resume a job that is {row['status']}", param="id")
        store.set_job(job_id, "Job resumed; queued", status="queued")
        return job_object(store.job(job_id))

    @router.get("/v1/fine_tuning/jobs/{job_id}/events")
    async def events(job_id: str, after: str | None = None, limit: int = 20) -> dict[str, Any]:
        _job(store, job_id)
        rows, more = store.events(job_id, after, max(1, min(limit, 1000)))
        return {"object": "list", "data": [event_object(r) for r in rows], "has_more": more}

    @router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    async def checkpoints(job_id: str, after: str | None = None,
                          limit: int = 10) -> dict[str, Any]:  # fmt: skip
        row = _job(store, job_id)
        name = row["fine_tuned_model"] or f"ft:{json.loads(row['body'])['model']}:local::{job_id}"
        data = [checkpoint_object(r, name) for r in store.checkpoints(job_id)]
        return {"object": "list", "data": data[:limit], "has_more": len(data) > limit,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None}  # fmt: skip
