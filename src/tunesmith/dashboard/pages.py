"""The dashboard's HTML: one shell around each page's body, filled from package files.

Bodies live in ``templates/*.html`` (shipped with the package) and hold no data: each
page's script reads the OpenAI routes of this same server and fills them in, so the
dashboard shows exactly what the API answers. The only values put into a page here are
the CSRF token and ids, HTML-escaped.
"""

from __future__ import annotations

import html
import json
from functools import cache
from importlib import resources

from fastapi.responses import HTMLResponse

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
"""Nothing from another origin can load, run or be framed (no CDN, no network)."""
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"
"""report.html is self-contained: inline CSS, plots as data: URIs, no script."""

NAV = (("/", "Jobs"), ("/new", "New job"), ("/playground", "Playground"), ("/compare", "Compare"))


@cache
def template(name: str) -> str:
    return (resources.files("tunesmith.dashboard") / "templates" / f"{name}.html").read_text(
        encoding="utf-8"
    )


@cache
def has_script(name: str) -> bool:
    return (resources.files("tunesmith.dashboard") / "static" / f"{name}.js").is_file()


def security_headers(csp: str = PAGE_CSP) -> dict[str, str]:
    return {
        "content-security-policy": csp,
        "x-content-type-options": "nosniff",
        "referrer-policy": "same-origin",
        "cache-control": "no-store",
    }


def render(page: str, title: str, csrf: str, data: dict[str, object] | None = None,
           status: int = 200, fill: dict[str, str] | None = None) -> HTMLResponse:  # fmt: skip
    """The page ``page`` (``templates/<page>.html`` and ``static/<page>.js``); ``data``
    reaches its script as JSON in ``data-page-data``; ``fill`` replaces ``{{name}}``."""
    body = template(page)
    for name, value in (fill or {}).items():
        body = body.replace("{{" + name + "}}", html.escape(value))
    links = "".join(f'<a href="{href}">{label}</a>' for href, label in NAV)
    nav = "" if page == "login" else (
        f'<nav>{links}<button type="button" id="logout">Log out</button></nav>'
    )  # fmt: skip
    text = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{html.escape(csrf)}">
<title>{html.escape(title)} · tunesmith</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/app.css">
<script src="/static/app.js" defer></script>
{f'<script src="/static/{page}.js" defer></script>' if has_script(page) else ""}
</head><body data-page="{page}" data-page-data="{html.escape(json.dumps(data or {}))}">
<header><a class="brand" href="/">tunesmith</a>{nav}</header>
<main>{body}</main>
</body></html>
"""
    return HTMLResponse(text, status_code=status, headers=security_headers())
