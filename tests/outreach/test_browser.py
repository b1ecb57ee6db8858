"""The outreach journey in a real browser, three people at three screens:

the county's 医务科 publishes a weekly extension clinic of the provincial cardiologist's studio at 石门镇;
a resident opens the township's public list without signing in, follows the booking link, signs in and books;
after the clinic the expert records it — the booked resident and a walk-in neighbour seen, a guided operation
with the township doctor — and the studio's impact report counts the session, both patients and the operation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.outreach.models import OutreachBooking, OutreachSchedule, OutreachSession
from tests import factories as f
from tests.browser import SCREENSHOTS, screens_for, sign_in
from tests.outreach.conftest import World, move_to_past, next_weekday

pytestmark = pytest.mark.e2e


@pytest.fixture
def screens(browser: Browser, live_server: str) -> Iterator[dict[str, Page]]:
    with screens_for(browser, live_server, ("planner", "resident", "expert"), width=1280, height=860) as pages:
        yield pages


def test_planner_publishes_resident_books_expert_records_and_the_studio_report_counts_it(
        screens: dict[str, Page], db: Session, world: World) -> None:
    planner, resident, expert = screens["planner"], screens["resident"], screens["expert"]
    day = next_weekday(1)

    # 1. The planner publishes a weekly studio clinic at the township, from the keyboard-friendly form.
    sign_in(planner, "planner")
    planner.goto(f"/outreach/plan?studio={world.studio.id}")
    planner.select_option("#kind", "clinic")
    planner.fill("#title", "心血管专家延伸门诊")
    planner.select_option("#practitioner_id", str(world.expert.practitioner_id))
    planner.select_option("#host_organisation_id", str(world.town.id))
    planner.fill("#day", day.isoformat())
    planner.fill("#start_time", "09:00")
    planner.fill("#capacity", "10")
    planner.check("#repeat")
    planner.fill("#until", (day + timedelta(weeks=3)).isoformat())
    planner.click("#plan-submit")
    expect(planner.locator("#done")).to_contain_text("已发布")
    expect(planner.locator("#schedule-sessions tbody tr")).to_have_count(4)
    planner.screenshot(path=str(SCREENSHOTS / "outreach-1-schedule.png"), full_page=True)
    schedule = db.scalars(select(OutreachSchedule)).one()
    first = db.scalars(select(OutreachSession).where(OutreachSession.schedule_id == schedule.id)
                       .order_by(OutreachSession.starts_at)).first()
    assert first is not None and first.studio_team_id == world.studio.id

    # 2. The resident finds it on the township's public page (no login), follows the link, signs in, books.
    resident.goto(f"/outreach/public/{world.town.code}")
    card = resident.locator(f"#public-session-{first.id}")
    expect(card).to_contain_text("心血管专家延伸门诊")
    expect(card).to_contain_text("10")
    resident.screenshot(path=str(SCREENSHOTS / "outreach-2-public.png"), full_page=True)
    card.locator(".book-link").click()
    expect(resident).to_have_url(re.compile(r"/login"))
    resident.fill("#username", "liu_guilan")
    resident.fill("#password", f.PASSWORD)
    resident.press("#password", "Enter")
    expect(resident).to_have_url(re.compile(rf"/outreach/sessions/{first.id}/book"))
    expect(resident.locator("#phone")).to_have_value("13800001111")
    resident.click("#book-submit")
    expect(resident.locator("#done")).to_contain_text("预约成功")
    expect(resident.locator(".booking").first).to_contain_text(world.town.name)
    resident.screenshot(path=str(SCREENSHOTS / "outreach-3-booked.png"), full_page=True)
    db.expire_all()
    booked = db.scalars(select(OutreachBooking).where(OutreachBooking.session_id == first.id)).one()
    assert booked.patient_id == world.resident.id and booked.status == "booked"

    # 3. The clinic day has come and gone; the expert records it.
    move_to_past(db, db.get(OutreachSession, first.id))  # type: ignore[arg-type]
    sign_in(expert, "expert_card")
    expert.goto(f"/outreach/sessions/{first.id}")
    expect(expert.locator("#bookings")).to_contain_text(world.resident.name)
    expert.click("#record-link")
    expert.check("#b0_seen")
    expert.fill("#b0_diagnosis", "高血压 2 级")
    expert.fill("#w0_patient", str(world.neighbour.id))
    expert.fill("#w0_diagnosis", "冠心病，稳定型心绞痛")
    expert.fill("#r0_name", "冠状动脉造影（带教）")
    expert.select_option("#r0_role", "guided")
    expert.select_option("#r0_local", str(world.town_doctor.practitioner_id))
    expert.screenshot(path=str(SCREENSHOTS / "outreach-4-record.png"), full_page=True)
    expert.click("#activity-submit")
    expect(expert).to_have_url(re.compile(rf"/outreach/sessions/{first.id}\?done=recorded"))
    expect(expert.locator("#session-status")).to_contain_text("已开展")
    db.expire_all()
    assert db.get(OutreachBooking, booked.id).status == "attended"  # type: ignore[union-attr]

    # 4. The studio's impact report counts it.
    planner.goto(f"/outreach/studios/{world.studio.id}/impact")
    row = planner.locator(f'#impact-table tr[data-key="{world.town.id}"]')  # the studio's figures by host
    expect(row.locator('[data-figure="sessions"]')).to_have_text("1")
    expect(row.locator('[data-figure="patients_seen"]')).to_have_text("2")
    expect(row.locator('[data-figure="guided"]')).to_have_text("1")
    expect(row.locator('[data-figure="kept_local"]')).to_have_text("2")
    expect(planner.locator('#impact-table tr.total [data-figure="patients_seen"]')).to_have_text("2")
    planner.screenshot(path=str(SCREENSHOTS / "outreach-5-impact.png"), full_page=True)
