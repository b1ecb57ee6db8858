"""Helpers shared by the browser tests (the Chromium fixtures themselves are in tests/conftest.py)."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect

from tests import factories as f

SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-results"
SCREENSHOTS.mkdir(exist_ok=True)


def sign_in(page: Page, username: str) -> None:
    page.goto("/login")
    page.fill("#username", username)
    page.fill("#password", f.PASSWORD)
    page.press("#password", "Enter")
    expect(page).not_to_have_url(re.compile(r"/login"))
