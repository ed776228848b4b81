"""Headless Chromium for the tests that render pages: the Debian browser, never a download
(``playwright install`` is not used), and a missing browser fails where it is required."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REQUIRE_BROWSER_ENV = "TUNESMITH_REQUIRE_BROWSER"
"""Set to 1 by `make test` after `make browser`: then a missing Chromium fails the test."""


def chromium_or_skip(purpose: str) -> None:
    if CHROMIUM.exists():
        return
    message = (
        "/usr/bin/chromium is absent; install it (make browser, or apt-get install -y chromium)"
    )
    if os.environ.get(REQUIRE_BROWSER_ENV) == "1":
        pytest.fail(f"{message}: {REQUIRE_BROWSER_ENV}=1 says the browser must be there")
    pytest.skip(f"{message} to {purpose}")


def is_blank(png: bytes) -> bool:
    """A screenshot with almost one colour: nothing was drawn (a blank or failed page)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("L")
    histogram = image.histogram()
    return max(histogram) > 0.98 * sum(histogram)
