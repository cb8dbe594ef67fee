"""Headless Chromium for the site's tests: the system's browser driven by Playwright, pages watched for errors.

``CHROMIUM`` names the browser (default: ``chromium`` on the PATH, else ``/usr/bin/chromium``).
Browsers are never downloaded: ``playwright install`` is not needed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def skip_reason() -> str | None:
    """Why browser tests cannot run here, or None."""
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[docs]')"
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)"
    return None


@contextlib.contextmanager
def launched():
    """A headless Chromium; skips the test where it does not start."""
    if reason := skip_reason():
        pytest.skip(reason)
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Error as error:
            pytest.skip(f"Chromium at {CHROMIUM} does not start: {error}")
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def watched_page(browser):
    """A page in a fresh context and the list of what went wrong on it: uncaught exceptions, console
    errors, failed requests and any request off the disk (a CDN), which is refused."""
    context = browser.new_context()
    errors: list[str] = []

    def only_files(route):
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            errors.append(f"request off the disk: {route.request.url}")
            route.abort()

    context.route("**/*", only_files)
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(f"pageerror: {error}"))
    page.on("console", lambda message: errors.append(f"console: {message.text}") if message.type == "error" else None)
    page.on("requestfailed", lambda request: errors.append(f"request failed: {request.url}"))
    try:
        yield page, errors
    finally:
        context.close()
