"""Helpers shared by the browser tests (the Chromium fixtures themselves are in tests/conftest.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Page, expect

from tests import factories as f

SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-results"
SCREENSHOTS.mkdir(exist_ok=True)


def sign_in(page: Page, username: str) -> None:
    page.goto("/login")
    page.fill("#username", username)
    page.fill("#password", f.PASSWORD)
    page.press("#password", "Enter")
    expect(page).not_to_have_url(re.compile(r"/login"))


@contextmanager
def screens_for(browser: Browser, base_url: str, people: tuple[str, ...], *, width: int = 1366, height: int = 768,
                timeout_ms: int = 15_000) -> Iterator[dict[str, Page]]:
    """One browser context (its own cookies) per person of a journey, closed afterwards."""
    contexts = []
    pages: dict[str, Page] = {}
    try:
        for who in people:
            context = browser.new_context(base_url=base_url, viewport={"width": width, "height": height},
                                          locale="zh-CN")
            context.set_default_timeout(timeout_ms)
            contexts.append(context)
            pages[who] = context.new_page()
        yield pages
    finally:
        for context in contexts:
            context.close()
