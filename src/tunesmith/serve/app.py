"""The HTTP routes: OpenAI's models, chat completions and completions, plus health,
metrics and the admin routes that add or remove a run while serving.

A handler checks the request, renders the prompt with the model's own chat template,
queues one `Job` for the decoder and turns the decoder's events into OpenAI's JSON
or server-sent events.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunesmith.data.records import Message
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.generate import prompt_token_ids
from tunesmith.serve.decoding import Decoder, Job, Row, Sampling
from tunesmith.serve.errors import APIError, model_not_found
from tunesmith.serve.metrics import ServeMetrics
from tunesmith.serve.pointer import FollowedPointer
from tunesmith.serve.registry import Registry, ServedModel
from tunesmith.serve.requestlog import RequestLog
from tunesmith.serve.schemas import AddRunRequest, ChatCompletionRequest, CompletionRequest
from tunesmith.serve.security import Guard, KeyChecker, RateLimiter


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask (promise S6); each is a `tunesmith serve` option."""

    max_body_bytes: int = 1_000_000
    max_messages: int = 256
    max_tokens: int = 2048
    max_n: int = 16
    max_stop: int = 4
    requests_per_minute: int = 600
    tokens_per_minute: int = 200_000
    """Prompt tokens plus the completion tokens a request may produce, per key (OpenAI's TPM)."""
    template_seconds: float = 2.0
    """Wall-clock limit on rendering one request's chat template (promise S3)."""


@dataclass
class ServerState:
    registry: Registry
    decoder: Decoder
    limits: Limits = field(default_factory=Limits)
    keys: KeyChecker = field(default_factory=lambda: KeyChecker([]))
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    request_log: RequestLog | None = None
    jobs: Any = None
    """A `tunesmith.jobs.routes.JobsState` when serving with ``--jobs``."""
    sessions: Any = None
    """The dashboard's `tunesmith.dashboard.sessions.Sessions` (with ``--jobs``)."""
    pointers: list[FollowedPointer] = field(default_factory=list)
    """Promotion pointers whose runs are swapped in when they change (serve/pointer.py)."""
    token_limiter: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.token_limiter = RateLimiter(self.limits.tokens_per_minute)


def create_app(state: ServerState) -> FastAPI:
    """The FastAPI app over a loaded registry; wrapped in the `Guard` before anything else."""
    app = FastAPI(title="tunesmith", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state
    _install_error_handlers(app)
    _add_routes(app, state)
    body_caps: dict[str, int] = {}
    if state.jobs is not None:
        from tunesmith.dashboard import mount_dashboard
        from tunesmith.jobs.routes import UPLOAD_PATH, mount_jobs, upload_body_cap

        mount_jobs(app, state, state.jobs)
        state.sessions = mount_dashboard(app, state)
        body_caps[UPLOAD_PATH] = upload_body_cap(state.jobs)
    limiter = RateLimiter(state.limits.requests_per_minute)
    app.add_middleware(
        Guard, keys=state.keys, limiter=limiter, max_body_bytes=state.limits.max_body_bytes,
        sessions=state.sessions, body_caps=body_caps,
    )  # fmt: skip
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        first = problems[0] if problems else {}
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(location) or None
        message = first.get("msg", "invalid request body")
        if first.get("type") == "json_invalid":
            message, param = "We could not parse the JSON body of your request.", None
        elif param:
            message = f"Invalid value for '{param}': {message}"
        return APIError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        return APIError(error.status_code, str(error.detail), code=code).response()

    @app.exception_handler(TunesmithError)
    async def user_error(request: Request, error: TunesmithError) -> JSONResponse:
        return APIError(400, str(error)).response()


def _add_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        state.metrics.queue_depth.set(state.decoder.waiting())
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models() -> dict[str, object]:
        await _follow_pointers(state)
        cards = [model.card() for model in state.registry.models.values()]
        return {"object": "list", "data": cards}

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> dict[str, object]:
        served = state.registry.get(model_id)
        if served is None:
            raise model_not_found(model_id)
        return served.card()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        await _follow_pointers(state)
        served = _model(state, body.model)
        _check_caps(state.limits, body, len(body.messages))
        if body.tools:
            raise APIError(400, "tools are not supported by this server", param="tools")
        if body.logprobs:
            raise APIError(400, "logprobs are not supported by this server", param="logprobs")
        messages = [message.as_dict() for message in body.messages]
        prompt_ids = await _render(served, messages, state.limits.template_seconds)
        call = _Completion(state, served, body, prompt_ids, chat=True, messages=messages)
        _charge_tokens(state, request, call)
        return await call.answer(request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        await _follow_pointers(state)
        served = _model(state, body.model)
        _check_caps(state.limits, body, 0)
        if body.echo or body.logprobs:
            raise APIError(400, "echo and logprobs are not supported", param="echo")
        prompt = body.prompt if isinstance(body.prompt, str) else None
        if prompt is None:
            if len(body.prompt) != 1:
                raise APIError(400, "send one prompt per request")
            prompt = body.prompt[0]
        prompt_ids = list(served.tokenizer(prompt)["input_ids"])
        call = _Completion(state, served, body, prompt_ids, chat=False, messages=None)
        _charge_tokens(state, request, call)
        return await call.answer(request)

    @app.post("/admin/runs")
    async def add_run(body: AddRunRequest) -> dict[str, object]:
        _admin_allowed(state)
        added = await run_in_threadpool(
            state.decoder.call, lambda: state.registry.add(Path(body.run_dir), body.name)
        )
        return {"object": "list", "data": [model.card() for model in added]}

    @app.delete("/admin/runs/{model_id:path}")
    async def remove_run(model_id: str) -> dict[str, object]:
        _admin_allowed(state)
        if state.registry.get(model_id) is None:
            raise model_not_found(model_id)
        await run_in_threadpool(state.decoder.call, lambda: state.registry.remove(model_id))
        return {"id": model_id, "object": "model", "deleted": True}


async def _follow_pointers(state: ServerState) -> None:
    """Swap in the run a promotion pointer now names (on the decoder thread, like admin)."""
    for pointer in state.pointers:
        run_dir = pointer.changed()
        if run_dir is not None:
            await run_in_threadpool(
                state.decoder.call,
                lambda p=pointer, r=run_dir: state.registry.replace(p.model_id, r),
            )


def _admin_allowed(state: ServerState) -> None:
    if not state.keys.enabled:
        raise APIError(
            403,
            "admin routes load files from this machine: start the server with "
            "--api-key-file to use them.",
            code="admin_needs_api_key",
        )


def _model(state: ServerState, model_id: str) -> ServedModel:
    served = state.registry.get(model_id)
    if served is None:
        raise model_not_found(model_id)
    return served


def _check_caps(limits: Limits, body: ChatCompletionRequest | CompletionRequest, messages: int):
    if body.n > limits.max_n:
        raise APIError(400, f"n must be at most {limits.max_n}", param="n")
    if messages > limits.max_messages:
        raise APIError(400, f"at most {limits.max_messages} messages", param="messages")
    limit = body.token_limit
    if limit is not None and limit > limits.max_tokens:
        raise APIError(400, f"max_tokens must be at most {limits.max_tokens}", param="max_tokens")
    if len(body.stop_strings) > limits.max_stop:
        raise APIError(400, f"at most {limits.max_stop} stop sequences", param="stop")


async def _render(served: ServedModel, messages: list[dict[str, str]], seconds: float) -> list[int]:
    """The prompt as `tunesmith eval` renders it: the run's own template, sandboxed by
    transformers' Jinja sandbox, in a worker thread with a wall-clock limit so a runaway
    template answers 400 and the server goes on serving."""
    prompt = [Message(m["role"], m["content"]) for m in messages]
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(prompt_token_ids, served.tokenizer, prompt), timeout=seconds
        )
    except TimeoutError:
        raise APIError(
            400,
            f"rendering the chat template took longer than {seconds:g} s; the request was "
            "refused (a template that loops on these messages).",
            param="messages",
            code="template_timeout",
        ) from None
    except Exception as error:  # a template that rejects the conversation (roles, order)
        raise APIError(
            400, f"the chat template rejected these messages: {error}", param="messages"
        ) from None


def _charge_tokens(state: ServerState, request: Request, call: _Completion) -> None:
    """Per-key tokens per minute: the prompt plus every token the request may generate,
    charged up front as OpenAI estimates it."""
    limiter: RateLimiter = state.token_limiter
    amount = len(call.prompt_ids) + call.max_new_tokens * call.body.n
    caller = request.scope.get("state", {}).get("caller", "anonymous")
    allowed, remaining, wait = limiter.take(caller, amount)
    if allowed:
        return
    headers = {
        "retry-after": str(max(1, math.ceil(wait))),
        "x-ratelimit-limit-tokens": str(limiter.per_minute),
        "x-ratelimit-remaining-tokens": str(remaining),
        "x-ratelimit-reset-tokens": f"{wait:.3f}s",
    }
    too_large = amount > limiter.per_minute
    raise APIError(
        429,
        f"Request too large: {amount} tokens (prompt + max_tokens x n) against a limit of "
        f"{limiter.per_minute} tokens per minute; lower max_tokens."
        if too_large
        else f"Rate limit reached: {limiter.per_minute} tokens per minute "
        f"(this request needs {amount}). Retry after {wait:.1f} s.",
        type="tokens",
        code="rate_limit_exceeded",
        headers=headers,
    )


class _Completion:
    """One request on its way through the decoder, with what its answer needs."""

    def __init__(
        self,
        state: ServerState,
        served: ServedModel,
        body: ChatCompletionRequest | CompletionRequest,
        prompt_ids: list[int],
        *,
        chat: bool,
        messages: list[dict[str, str]] | None,
    ) -> None:
        self.state, self.served, self.body, self.chat = state, served, body, chat
        self.messages = messages
        self.prompt_ids = prompt_ids
        room = served.context_length - len(prompt_ids)
        limit = body.token_limit
        if room < 1 or (limit is not None and limit > room):
            asked = limit or 1
            raise APIError(
                400,
                f"This model's maximum context length is {served.context_length} tokens. "
                f"However, you requested {len(prompt_ids) + asked} tokens "
                f"({len(prompt_ids)} in the messages, {asked} in the completion). "
                "Please reduce the length of the messages or completion.",
                param="messages" if chat else None,
                code="context_length_exceeded",
            )
        self.max_new_tokens = min(limit or state.limits.max_tokens, room)
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.started = time.monotonic()
        self.events: asyncio.Queue = asyncio.Queue()
        self.route = "chat.completions" if chat else "completions"

    def _job(self) -> Job:
        loop = asyncio.get_running_loop()

        def emit(event: tuple) -> None:
            loop.call_soon_threadsafe(self.events.put_nowait, event)

        temperature = 1.0 if self.body.temperature is None else self.body.temperature
        sampling = Sampling(
            temperature=temperature,
            top_p=1.0 if self.body.top_p is None else self.body.top_p,
            seed=self.body.seed,
        )
        rows = [
            Row(
                index=index,
                prompt_ids=self.prompt_ids,
                max_new_tokens=self.max_new_tokens,
                stop_strings=self.body.stop_strings,
                stop_ids=self.served.stop_ids,
                tokenizer=self.served.tokenizer,
                strip=self.chat,
                emit=emit,
            )
            for index in range(self.body.n)
        ]
        served = self.served
        return Job(served.module, served.adapter, rows, sampling, served.pad_id, served.precision)

    async def answer(self, request: Request) -> Response:
        self.job = self._job()
        self.state.decoder.submit(self.job)
        if self.body.stream:
            return StreamingResponse(
                self._stream(),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
            )
        texts = [""] * self.body.n
        reasons: list[str | None] = [None] * self.body.n
        completion_tokens = 0
        try:
            while any(reason is None for reason in reasons):
                event = await self.events.get()
                if event[0] == "text":
                    texts[event[1]] += event[2]
                elif event[0] == "done":
                    reasons[event[1]] = event[2]
                    completion_tokens += event[3]
                else:
                    raise APIError(500, event[1], type="server_error")
        finally:
            self._cancel()
        self._record(texts, reasons, completion_tokens, status=200)
        return JSONResponse(self._completion(texts, reasons, completion_tokens))

    def _cancel(self) -> None:
        for row in self.job.rows:
            row.cancelled = True

    def _usage(self, completion_tokens: int) -> dict[str, int]:
        prompt = len(self.prompt_ids)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        }

    def _completion(self, texts: list[str], reasons: list, completion_tokens: int) -> dict:
        if self.chat:
            choices = [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": reasons[index],
                }
                for index, text in enumerate(texts)
            ]
        else:
            choices = [
                {"index": index, "text": text, "logprobs": None, "finish_reason": reasons[index]}
                for index, text in enumerate(texts)
            ]
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.served.id,
            "system_fingerprint": self.served.fingerprint,
            "choices": choices,
            "usage": self._usage(completion_tokens),
        }

    def _chunk(self, choices: list[dict], usage: dict | None = None) -> str:
        chunk: dict[str, object] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.served.id,
            "system_fingerprint": self.served.fingerprint,
            "choices": choices,
        }
        if self.body.wants_usage_chunk:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    def _choice(self, index: int, piece: str | None, reason: str | None, first: bool = False):
        if not self.chat:
            return {"index": index, "text": piece or "", "logprobs": None, "finish_reason": reason}
        delta: dict[str, object] = {}
        if first:
            delta = {"role": "assistant", "content": ""}
        elif piece is not None:
            delta = {"content": piece}
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}

    async def _stream(self) -> AsyncIterator[str]:
        n = self.body.n
        texts = [""] * n
        reasons: list[str | None] = [None] * n
        completion_tokens = 0
        first_token_seen = False
        try:
            if self.chat:
                for index in range(n):
                    yield self._chunk([self._choice(index, None, None, first=True)])
            while any(reason is None for reason in reasons):
                event = await self.events.get()
                if event[0] == "error":
                    error = APIError(500, event[1], type="server_error")
                    yield f"data: {json.dumps(error.body())}\n\n"
                    break
                if not first_token_seen:
                    first_token_seen = True
                    self.state.metrics.first_token.labels(self.served.id).observe(
                        time.monotonic() - self.started
                    )
                if event[0] == "text":
                    texts[event[1]] += event[2]
                    yield self._chunk([self._choice(event[1], event[2], None)])
                else:
                    reasons[event[1]] = event[2]
                    completion_tokens += event[3]
                    yield self._chunk([self._choice(event[1], None, event[2])])
            if self.body.wants_usage_chunk:
                yield self._chunk([], usage=self._usage(completion_tokens))
            yield "data: [DONE]\n\n"
            self._record(texts, reasons, completion_tokens, status=200)
        finally:
            self._cancel()  # a client gone mid-stream frees its rows at the next token

    def _record(self, texts: list[str], reasons: list, completion_tokens: int, status: int):
        metrics, model = self.state.metrics, self.served.id
        elapsed = time.monotonic() - self.started
        metrics.requests.labels(self.route, model, str(status)).inc()
        metrics.tokens.labels(model, "prompt_tokens").inc(len(self.prompt_ids))
        metrics.tokens.labels(model, "completion_tokens").inc(completion_tokens)
        metrics.latency.labels(model).observe(elapsed)
        if not self.body.stream:
            metrics.first_token.labels(model).observe(elapsed)
        log = self.state.request_log
        if log is not None and self.chat and self.messages is not None:
            for text, reason in zip(texts, reasons, strict=True):
                log.write(
                    model=model, messages=self.messages, answer=text, latency_s=elapsed,
                    prompt_tokens=len(self.prompt_ids),
                    completion_tokens=completion_tokens // max(1, len(texts)),
                    finish_reason=str(reason),
                )  # fmt: skip
