"""Safe by default (promises S5, S6): who may call, how big a request may be, how often.

Every route except ``/health`` needs the key, checked in one ASGI middleware in front
of the router, so a route added later is covered without anyone remembering to
(vLLM's key guarded path prefixes and left ``/metrics``, ``/tokenize``… open).
Unknown paths answer 401 too, so a caller without a key cannot map the routes.
Keys are compared in constant time and never written to a log or an answer.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tunesmith.serve.errors import APIError, ServeError

OPEN_PATHS = frozenset({"/health"})
"""Liveness only: no model, no data, nothing a caller could learn from."""

KEY_ENV = "TUNESMITH_API_KEY"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def load_api_keys(key_file: Path | None) -> list[str]:
    """Keys from ``--api-key-file`` (one a line, ``#`` comments) or ``$TUNESMITH_API_KEY``."""
    keys: list[str] = []
    if key_file is not None:
        try:
            lines = key_file.read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise ServeError(f"cannot read the API key file {key_file}: {error.strerror}") from None
        keys = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        if not keys:
            raise ServeError(f"the API key file {key_file} holds no key (one key per line).")
    elif os.environ.get(KEY_ENV):
        keys = [os.environ[KEY_ENV].strip()]
    short = [index for index, key in enumerate(keys) if len(key) < 16]
    if short:
        raise ServeError(
            f"API key(s) on line(s) {', '.join(str(i + 1) for i in short)} are shorter than "
            "16 characters; make one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`."
        )
    return keys


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, keys: list[str], insecure_no_auth: bool) -> None:
    """Refuse to listen beyond this machine without a key: the server would be open to anyone."""
    if not is_loopback(host) and not keys and not insecure_no_auth:
        raise ServeError(
            f"refusing to listen on {host} without an API key: anyone who can reach this "
            "machine could use the models. Pass --api-key-file FILE (or set "
            f"${KEY_ENV}), bind 127.0.0.1, or pass --insecure-no-auth if you mean it."
        )


class KeyChecker:
    """Matches a presented key against every configured key in constant time."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode() for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, presented: str) -> str | None:
        """A stable, non-secret id of the matching key (for rate limits and logs), or None."""
        candidate = presented.encode()
        match = None
        for key in self._keys:  # no early exit: the time does not depend on which key matched
            if hmac.compare_digest(candidate, key):
                match = key
        return None if match is None else "key-" + hashlib.sha256(match).hexdigest()[:12]


@dataclass
class RateLimiter:
    """A token bucket per caller: ``per_minute`` units (requests, or tokens), refilled
    continuously."""

    per_minute: int

    def __post_init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, caller: str, amount: float = 1.0) -> tuple[bool, int, float]:
        """(allowed, remaining, seconds until ``amount`` more would be allowed)."""
        rate = self.per_minute / 60.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(caller, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * rate)
            allowed = tokens >= amount
            if allowed:
                tokens -= amount
            self._buckets[caller] = (tokens, now)
        wait = 0.0 if tokens >= amount else (amount - tokens) / rate
        return allowed, int(tokens), wait


def _error(status: int, message: str, code: str | None, headers: dict[str, str] | None = None):
    error = APIError(
        status,
        message,
        code=code,
        type="requests" if status == 429 else "invalid_request_error",
        headers=headers,
    )
    payload = json.dumps(error.body()).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(payload)),
    ]
    raw_headers += [(k.encode(), v.encode()) for k, v in error.headers.items()]
    return payload, raw_headers


class CookieSessions(Protocol):
    """Browser sessions (the dashboard's): a cookie stands for a key that logged in."""

    def is_open(self, path: str) -> bool: ...
    def identify(self, headers: dict[str, str]) -> str | None: ...
    def csrf_ok(self, headers: dict[str, str]) -> bool: ...
    def wants_login(self, method: str, path: str) -> bool: ...


def cross_origin(headers: dict[str, str]) -> bool:
    """A browser sent this from another site's page (``Origin`` is not this host)."""
    origin = headers.get("origin")
    if origin is None:
        return False
    return origin.partition("://")[2].rstrip("/") != headers.get("host", "")


class Guard:
    """ASGI middleware: API key (or a dashboard session with its CSRF token), per-key rate
    limit and body-size cap, before any route runs. ``body_caps`` raises the cap for
    the paths named (the file upload), every other path keeps ``max_body_bytes``."""

    def __init__(
        self, app: ASGIApp, keys: KeyChecker, limiter: RateLimiter, max_body_bytes: int,
        sessions: CookieSessions | None = None, body_caps: Mapping[str, int] | None = None,
    ) -> None:  # fmt: skip
        self.app = app
        self.keys = keys
        self.limiter = limiter
        self.max_body_bytes = max_body_bytes
        self.sessions = sessions
        self.body_caps = dict(body_caps or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        unsafe = scope["method"] not in SAFE_METHODS
        if unsafe and cross_origin(headers):
            await _reply(send, 403, "Cross-site request refused.", "cross_origin")
            return
        if self.sessions is not None and self.sessions.is_open(path):
            await self.app(scope, receive, send)
            return
        caller = await self._caller(scope, headers, send)
        if caller is None:
            return
        scope.setdefault("state", {})["caller"] = caller
        await self._limited(scope, receive, send, headers, caller)

    async def _caller(self, scope: Scope, headers: dict[str, str], send: Send) -> str | None:
        """Who calls, or None once a refusal (401, login redirect, CSRF 403) has been sent."""
        scheme, _, presented = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.keys.enabled:
            identity = self.keys.identify(presented.strip())
            if identity is not None:
                return identity
        session = self.sessions.identify(headers) if self.sessions is not None else None
        if session is not None:
            if scope["method"] not in SAFE_METHODS and not self.sessions.csrf_ok(headers):
                await _reply(send, 403, "Missing or wrong CSRF token: reload the page.",
                             "csrf_failed")  # fmt: skip
                return None
            return session
        if not self.keys.enabled:
            return "anonymous"
        if self.sessions is not None and self.sessions.wants_login(scope["method"],
                                                                   scope["path"]):  # fmt: skip
            await _redirect(send, "/login")
            return None
        await _reply(send, 401, "Incorrect or missing API key: send "
                     "`Authorization: Bearer <key>`.", "invalid_api_key")  # fmt: skip
        return None

    async def _limited(self, scope: Scope, receive: Receive, send: Send,
                       headers: dict[str, str], caller: str) -> None:  # fmt: skip
        allowed, remaining, wait = self.limiter.take(caller)
        limit_headers = {
            "x-ratelimit-limit-requests": str(self.limiter.per_minute),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": f"{wait:.3f}s",
        }
        if not allowed:
            limit_headers["retry-after"] = str(max(1, math.ceil(wait)))
            message = f"Rate limit reached: {self.limiter.per_minute} requests per minute."
            await _reply(send, 429, message, "rate_limit_exceeded", limit_headers)
            return
        cap = self.body_caps.get(scope["path"], self.max_body_bytes)
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > cap):
            await _reply(send, 413, f"Request body over {cap} bytes.", None)
            return
        await self.app(scope, self._capped(receive, cap), send)

    def _capped(self, receive: Receive, cap: int) -> Receive:
        """A chunked body without Content-Length is counted as it arrives."""
        seen = 0

        async def capped() -> MutableMapping[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise APIError(413, f"Request body over {cap} bytes.")
            return message

        return capped


async def _redirect(send: Send, location: str) -> None:
    headers = [(b"location", location.encode()), (b"content-length", b"0")]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _reply(
    send: Send, status: int, message: str, code: str | None, headers: dict[str, str] | None = None
) -> None:
    payload, raw_headers = _error(status, message, code, headers)
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})
