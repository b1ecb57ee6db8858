"""On a tablet, from the keyboard: register a resident by ID with Enter, record a high blood pressure, see the
finding and the event's counts."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect
from sqlalchemy.orm import Session

from tests.browser import SCREENSHOTS, sign_in
from tests.screening.conftest import World, plan


def test_quick_registration_and_a_result_on_a_tablet(page: Page, db: Session, world: World) -> None:
    event = plan(db, world)
    page.set_viewport_size({"width": 800, "height": 1280})  # a tablet held upright
    sign_in(page, "town_doc")
    page.goto(f"/screening/events/{event.id}/register")
    expect(page.locator("#resident_id")).to_be_focused()
    page.keyboard.type(world.resident_id)
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(rf"/screening/events/{event.id}/attendances/\d+"))
    expect(page.locator("h1")).to_contain_text(world.resident.name)
    expect(page.locator("#bp-sbp")).to_be_focused()  # the first service without a result
    page.keyboard.type("168")
    page.keyboard.press("Tab")
    page.keyboard.type("102")
    page.keyboard.press("Enter")
    expect(page.locator("#finding-bp")).to_contain_text("168/102")
    page.screenshot(path=str(SCREENSHOTS / "screening-attendance-tablet.png"), full_page=True)
    page.goto(f"/screening/events/{event.id}")
    expect(page.locator("#count-served")).to_have_text("1")
    expect(page.locator("#count-tasks")).to_have_text("1")
    expect(page.locator("#people")).to_contain_text(world.resident.name)
