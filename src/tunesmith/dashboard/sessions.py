"""Dashboard sessions: the API key is exchanged once for a random session id in an
HttpOnly, SameSite=Strict cookie, and each session has its own CSRF token.

The key never reaches the page, the URL or the browser's storage; the page only holds
the CSRF token, which a cross-site page cannot read. The serve `Guard` asks `identify`
who a cookie belongs to and `csrf_ok` whether a state-changing request carries the
session's token in ``X-CSRF-Token`` (promise S5: one check in front of every route).
Sessions live in the server's memory: a restart logs everyone out, never in.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

COOKIE = "tunesmith_session"
LOGIN_COOKIE = "tunesmith_login"
"""Holds the login form's token before there is a session (double submit: login CSRF)."""
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 12 * 3600
STATIC_PREFIX = "/static/"
OPEN_PAGES = frozenset({"/login"})
PAGE_PREFIXES = ("/jobs", "/new", "/playground", "/compare", "/files")


@dataclass(frozen=True)
class Session:
    identity: str
    csrf: str
    expires: float


def cookie_value(headers: dict[str, str], name: str) -> str | None:
    try:
        jar = SimpleCookie(headers.get("cookie", ""))
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


def cookie_header(name: str, value: str, max_age: int, secure: bool = False) -> str:
    """``Set-Cookie`` for a secret the page's scripts must not read, sent same-site only."""
    flags = f"; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Strict"
    return f"{name}={value}{flags}{'; Secure' if secure else ''}"


class Sessions:
    """Session id → `Session`, in memory, thread-safe (uvicorn's loop and the thread pool)."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, identity: str) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        session = Session(identity, secrets.token_urlsafe(32), time.time() + SESSION_SECONDS)
        with self._lock:
            now = time.time()
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
            self._sessions[session_id] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None or session.expires <= time.time():
            return None
        return session

    def drop(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)

    def session_of(self, headers: dict[str, str]) -> Session | None:
        return self.get(cookie_value(headers, COOKIE))

    # what the serve Guard asks ------------------------------------------------------
    def is_open(self, path: str) -> bool:
        """The login page and the package's static files need no key (they hold no data)."""
        return path in OPEN_PAGES or path.startswith(STATIC_PREFIX)

    def identify(self, headers: dict[str, str]) -> str | None:
        session = self.session_of(headers)
        return session.identity if session is not None else None

    def csrf_ok(self, headers: dict[str, str]) -> bool:
        session = self.session_of(headers)
        presented = headers.get(CSRF_HEADER, "")
        return session is not None and hmac.compare_digest(presented.encode(),
                                                           session.csrf.encode())  # fmt: skip

    def wants_login(self, method: str, path: str) -> bool:
        """A browser asking for a page without a session is sent to the login page."""
        return method == "GET" and (path == "/" or path.startswith(PAGE_PREFIXES))
