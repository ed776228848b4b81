"""The web dashboard of `tunesmith serve --jobs`, at ``/`` on the same server.

sessions.py (the key exchanged for an HttpOnly, SameSite=Strict cookie; CSRF tokens) ·
pages.py (the HTML shell, security headers) · routes.py (login, pages, run files) ·
templates/ and static/ (the pages' bodies, CSS and scripts, shipped in the package:
no CDN, nothing fetched from elsewhere, no build step).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from tunesmith.dashboard.routes import add_routes
from tunesmith.dashboard.sessions import STATIC_PREFIX, Sessions


def mount_dashboard(app: FastAPI, state: Any) -> Sessions:
    """Add the pages to the app of ``state`` (a `ServerState` with ``jobs``); returns the
    sessions the serve `Guard` checks cookies against."""
    sessions = Sessions()
    add_routes(app, state, sessions)
    static = resources.files("tunesmith.dashboard") / "static"
    app.mount(STATIC_PREFIX.rstrip("/"), StaticFiles(directory=str(static)), name="static")
    return sessions


__all__ = ["Sessions", "mount_dashboard"]
