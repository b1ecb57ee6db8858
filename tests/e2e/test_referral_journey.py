"""A green-channel referral from a village clinic to the county and back down, in a real browser.

Three people at three screens: the village doctor who sends, the county cardiologist watching the
department board, and the county hospital's medical-affairs office (医务科) watching its inbox.
Nobody reloads the county pages; deadlines pass because the test moves time, not by sleeping.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date, timedelta

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role
from healthrelay.core import timers
from healthrelay.core.db import get_sessionmaker
from healthrelay.directory.models import (
    Alliance,
    AllianceKind,
    AllianceMembership,
    Department,
    MembershipRole,
    OrgKind,
    OrgLevel,
    Post,
    Specialty,
)
from healthrelay.referrals.models import Referral, State
from tests import factories as f
from tests.browser import SCREENSHOTS, screens_for, sign_in
from tests.referrals.conftest import move_due_into_past

pytestmark = pytest.mark.e2e


@pytest.fixture
def screens(browser: Browser, live_server: str) -> Iterator[dict[str, Page]]:
    """One browser context (its own cookies) per person."""
    with screens_for(browser, live_server, ("village", "county", "ywk")) as pages:
        yield pages


def _county_world(db: Session) -> dict[str, object]:
    county = f.organisation(db, name="青溪县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL)
    township = f.organisation(db, name="石门镇中心卫生院")
    village = f.organisation(db, name="石门村卫生室", level=OrgLevel.VILLAGE, kind=OrgKind.VILLAGE_CLINIC)
    alliance = Alliance(code="QX-YGT", name="青溪县医共体", kind=AllianceKind.COUNTY_COMMUNITY)
    db.add(alliance)
    db.flush()
    for org, role in ((county, MembershipRole.LEAD), (township, MembershipRole.MEMBER),
                      (village, MembershipRole.MEMBER)):
        db.add(AllianceMembership(alliance_id=alliance.id, organisation_id=org.id, role=role))
    cardio = Specialty(code="cardiology", name="心血管内科")
    db.add(cardio)
    db.flush()
    head = f.user(db, organisation=county, username="head.cardio")
    dept = Department(organisation_id=county.id, code="CARD", name="心血管内科", specialty_id=cardio.id,
                      head_practitioner_id=head.practitioner_id)
    db.add(dept)
    db.flush()
    cardiologist = f.user(db, organisation=county, username="doc.cardio")
    post = Post(practitioner_id=cardiologist.practitioner_id, organisation_id=county.id, department_id=dept.id)
    db.add(post)
    db.flush()
    cardiologist.post_id = post.id
    f.user(db, organisation=county, role=Role.ORG_ADMIN, username="admin.county")
    village_doctor = f.user(db, organisation=village, username="vdoc.shimen")
    f.user(db, organisation=township, username="doc.shimen")
    patient = f.patient(db, name="张德福", registered_at=village)
    db.commit()
    return {"county": county, "township": township, "village_doctor": village_doctor, "patient": patient,
            "dept": dept}


def _run_timers_after(db: Session, referral_id: int) -> None:
    """What the worker does once the deadline has passed (time moved by the test)."""
    move_due_into_past(db, db.get(Referral, referral_id))
    timers.run_due(get_sessionmaker(), runner="e2e")


def test_green_channel_up_escalation_accept_arrive_and_down_with_follow_ups(screens: dict[str, Page],
                                                                            db: Session) -> None:
    world = _county_world(db)
    village, county, ywk = screens["village"], screens["county"], screens["ywk"]
    patient = world["patient"]

    # The county cardiologist has the department board open; the 医务科 has its inbox open.
    sign_in(county, "doc.cardio")
    county.goto("/referrals")
    expect(county.locator("#incoming")).to_be_visible()
    county.evaluate("window.__notReloaded = true")
    sign_in(ywk, "admin.county")
    ywk.goto("/inbox")
    ywk.evaluate("window.__notReloaded = true")

    # The village doctor fills the referral form from the keyboard-friendly page and sends it.
    sign_in(village, "vdoc.shimen")
    village.goto(f"/referrals/new?patient_id={patient.id}")
    expect(village.locator("#referral-patient")).to_contain_text("张德福")
    village.check("#urgency-green_channel")
    with village.expect_response(re.compile(r"/referrals/_targets")):  # the target list is redrawn: wait for it
        village.select_option("#wanted_specialty_id", label="心血管内科")
    target = village.locator(f"#target-{world['county'].id}-{world['dept'].id}")
    expect(target).to_be_visible()
    target.check()
    village.fill("#reason", "胸痛 1 小时，心电图 II、III、aVF 导联 ST 段抬高")
    village.fill("#diagnosis_code", "I21.1")
    village.fill("#bp_sys", "92")
    village.fill("#bp_dia", "60")
    village.fill("#hr", "48")
    village.fill("#medicines", "阿司匹林 300 mg 嚼服（已给）")
    village.check("#consent-written")
    village.click("#send-submit")
    expect(village).to_have_url(re.compile(r"/referrals/\d+(\?.*)?$"))
    expect(village.locator("#referral-state")).to_have_attribute("data-state", "sent")
    referral_id = int(re.search(r"/referrals/(\d+)", village.url)[1])

    # It appears on the county board without a reload, marked green channel.
    row = county.locator(f"#incoming tr[data-referral-id='{referral_id}']")
    expect(row).to_be_visible(timeout=10_000)
    expect(row).to_contain_text("绿色通道")
    expect(county.locator("#incoming-count")).to_have_text("1")
    assert county.evaluate("window.__notReloaded") is True
    county.screenshot(path=str(SCREENSHOTS / "referral-board-live.png"), full_page=True)

    # Nobody answers. The deadline passes twice: the department head, then the 医务科 is told.
    _run_timers_after(db, referral_id)
    _run_timers_after(db, referral_id)
    expect(ywk.locator("#inbox-count")).to_have_text(re.compile(r"[1-9]"), timeout=10_000)
    expect(ywk.get_by_role("alert").filter(has_text="医务科")).to_be_visible()
    assert ywk.evaluate("window.__notReloaded") is True
    expect(row).to_contain_text("超时")

    # The cardiologist accepts with a time, the patient arrives.
    county.goto(f"/referrals/{referral_id}")
    expect(county.locator("#escalations")).to_contain_text("医务科")
    county.fill("#appointment_at", f"{date.today() + timedelta(days=1)}T09:30")
    county.click("#accept-submit")
    expect(county.locator("#referral-state")).to_have_attribute("data-state", "accepted")
    county.click("#arrive-submit")
    expect(county.locator("#referral-state")).to_have_attribute("data-state", "arrived")

    # Treated; the county sends the patient down to the township with a plan.
    county.select_option("#down-target", value=f"{world['township'].id}:")
    county.fill("#fu-date-0", str(date.today() + timedelta(days=7)))
    county.fill("#fu-kind-0", "电话随访")
    county.fill("#down-warning-signs", "胸痛再发超过 15 分钟\n心率 < 50 次/分")
    county.check("#down-consent-verbal")
    county.click("#send-down-submit")
    expect(county).to_have_url(re.compile(r"/referrals/\d+(\?.*)?$"))
    db.expire_all()
    down = db.execute(select(Referral).where(Referral.parent_referral_id == referral_id)).scalar_one()
    assert down.to_organisation_id == world["township"].id and down.state == State.SENT

    # The township doctor accepts the down referral and sees the follow-up task on the worklist.
    township = village.context.browser.new_context(base_url=village.url.split("/referrals")[0],
                                                   viewport={"width": 1366, "height": 768}, locale="zh-CN")
    try:
        page = township.new_page()
        sign_in(page, "doc.shimen")
        page.goto(f"/referrals/{down.id}")
        page.click("#accept-submit")
        expect(page.locator("#referral-state")).to_have_attribute("data-state", "accepted")
        page.goto("/referrals/follow-ups")
        expect(page.locator("#follow-ups")).to_contain_text("电话随访")
        expect(page.locator("#follow-ups")).to_contain_text(down.number)
        page.screenshot(path=str(SCREENSHOTS / "follow-up-tasks.png"), full_page=True)
    finally:
        township.close()
