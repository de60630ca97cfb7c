"""Headless Debian Chromium driven by Playwright's async API (the suite runs in one session event loop)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.demo import VIEWER_TOKEN
from worker.http.auth import SESSION_COOKIE

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 390, "height": 844}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = None
    if not os.access(CHROMIUM, os.X_OK):
        reason = f"{CHROMIUM} is not installed (apt-get install chromium); the dashboard browser tests need it"
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            reason = "the playwright package is not installed (pip install -e '.[browser]')"
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        instance = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            yield instance
        finally:
            await instance.close()


@pytest.fixture
async def new_page(browser: Any) -> AsyncIterator[Any]:
    """A factory of pages, each in a fresh context (own session storage) that records console errors.

    Each context is signed in to the dashboard with the viewer token (the cookie /sign-in would set) unless
    ``token`` says otherwise (None: not signed in).
    """
    contexts: list[Any] = []
    errors: list[str] = []

    async def make(viewport: dict[str, int] = WIDE, token: str | None = VIEWER_TOKEN) -> Any:
        context = await browser.new_context(viewport=viewport, device_scale_factor=1)
        contexts.append(context)
        if token is not None:  # cookies are per host, not per port: good for every test server
            await context.add_cookies(
                [
                    {
                        "name": SESSION_COOKIE,
                        "value": token,
                        "url": "http://127.0.0.1",
                        "httpOnly": True,
                        "sameSite": "Strict",
                    }
                ]
            )
        page = await context.new_page()
        page.set_default_timeout(15_000)
        page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
        page.on(
            "console",
            lambda msg: (
                errors.append(f"console {msg.type}: {msg.text} at {msg.location.get('url')}")
                if msg.type == "error"
                else None
            ),
        )

        async def on_dialog(dialog: Any) -> None:  # alert() would mean injected script ran
            errors.append(f"unexpected JS dialog: {dialog.message}")
            await dialog.dismiss()

        page.on("dialog", on_dialog)
        return page

    make.errors = errors  # type: ignore[attr-defined]
    try:
        yield make
    finally:
        for context in contexts:
            await context.close()


def screenshot_path(name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / f"{name}.png"
