"""Mutual recognition in a real browser: a county doctor orders a head CT for a patient the township scanned
five days ago. The form shows the township's result with its recognition mark (the township passed its CT
quality assessment this year); the doctor orders again with a reason from the national list, and the
alliance's repeats page, open on the county medical-affairs screen, counts the repeat.

Two people at two screens; the data is built with factories, nothing from the demo county.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role
from healthrelay.core.db import utcnow
from healthrelay.directory.models import (
    Alliance,
    AllianceKind,
    AllianceMembership,
    MembershipRole,
    OrgKind,
    OrgLevel,
)
from healthrelay.patients.models import PatientRegistration
from healthrelay.recognition.models import ClinicalOrder, RecognitionDecision
from tests import factories as f
from tests.browser import SCREENSHOTS, screens_for, sign_in

pytestmark = pytest.mark.e2e


@pytest.fixture
def screens(browser: Browser, live_server: str) -> Iterator[dict[str, Page]]:
    with screens_for(browser, live_server, ("doctor", "ywk")) as pages:
        yield pages


def _world(db: Session) -> dict[str, int]:
    county = f.organisation(db, name="青溪县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL)
    township = f.organisation(db, name="石门镇中心卫生院")
    alliance = Alliance(code="QX-YGT", name="青溪县医共体", kind=AllianceKind.COUNTY_COMMUNITY)
    db.add(alliance)
    db.flush()
    db.add_all([AllianceMembership(alliance_id=alliance.id, organisation_id=county.id, role=MembershipRole.LEAD),
                AllianceMembership(alliance_id=alliance.id, organisation_id=township.id, role=MembershipRole.MEMBER)])
    f.user(db, organisation=county, username="county_neuro")
    f.user(db, role=Role.ORG_ADMIN, organisation=county, username="county_ywk")
    patient = f.patient(db, name="赵春兰", registered_at=township)
    db.add(PatientRegistration(patient_id=patient.id, organisation_id=county.id))
    f.eqa_record(db, organisation=township, scope="alliance", modality="CT")
    ct = f.exam_result(db, patient=patient, organisation=township, code="CT_HEAD",
                       reported_at=utcnow() - timedelta(days=5), impression="头颅CT平扫未见明显异常")
    assert ct.recognition_scope == "alliance"
    db.commit()
    return {"patient": patient.id, "ct": ct.id, "county": county.id}


def test_county_doctor_sees_the_township_ct_and_reorders_with_a_reason(db: Session,
                                                                        screens: dict[str, Page]) -> None:
    ids = _world(db)
    doctor, ywk = screens["doctor"], screens["ywk"]

    # The county's medical-affairs office has the repeats page open: nothing this month yet.
    sign_in(ywk, "county_ywk")
    ywk.get_by_role("navigation", name="主菜单").get_by_role("link", name="检查检验互认").click()
    expect(ywk.locator('[data-kpi="repeated"]')).to_have_text("0")

    # The doctor opens the order form for the patient and finds the head CT with the keyboard.
    sign_in(doctor, "county_neuro")
    doctor.goto(f"/orders/new?patient_id={ids['patient']}")
    search = doctor.locator("#code-q")
    expect(search).to_be_focused()
    search.press_sequentially("CT_HEAD", delay=20)
    expect(doctor.locator("#code option")).to_have_count(1)
    doctor.keyboard.press("Tab")
    expect(doctor.locator("#code")).to_be_focused()
    doctor.keyboard.press("ArrowDown")

    # The township's result appears with its recognition mark, unasked.
    prior = doctor.locator(f'#prior-list li[data-prior="exam:{ids["ct"]}"]')
    expect(prior).to_contain_text("石门镇中心卫生院")
    expect(prior).to_contain_text("头颅CT平扫未见明显异常")
    expect(prior.locator(".hr-mark")).to_have_text("医共体HR")
    expect(prior.locator("a.prior-link")).to_have_attribute("href", f"/results/exam/{ids['ct']}")
    doctor.screenshot(path=str(SCREENSHOTS / "recognition-priors.png"), full_page=True)

    # Ordering again without a reason is refused, next to the field; nothing is written.
    doctor.locator("#decision-reorder").check()
    doctor.locator("#place-order").click()
    expect(doctor.locator("#reason_code-error")).to_be_visible()
    assert db.execute(select(ClinicalOrder.id)).first() is None

    # With a reason (and the note this reason needs) the order goes through as a recorded repeat.
    doctor.locator("#decision-reorder").check()
    doctor.locator("#reason_code").select_option("condition_changed")
    doctor.locator("#reason_note").fill("头痛加重伴呕吐，需复查 / worse headache with vomiting")
    doctor.locator("#place-order").click()
    expect(doctor).to_have_url(re.compile(r"/orders/\d+\?done=created"))
    expect(doctor.locator("#decision-outcome")).to_have_text("重复检查（有理由）")
    expect(doctor.locator("#decision-reason")).to_contain_text("病情变化")
    doctor.screenshot(path=str(SCREENSHOTS / "recognition-order.png"), full_page=True)
    db.rollback()
    decision = db.execute(select(RecognitionDecision)).scalar_one()
    assert decision.outcome == "repeated" and decision.prior_exam_result_id == ids["ct"]
    assert decision.organisation_id == ids["county"]

    # The repeats page, never reloaded, counts it as the live event arrives; no patient data on it.
    expect(ywk.locator('[data-kpi="repeated"]')).to_have_text("1")
    row = ywk.locator("#repeats-table tbody tr").first
    expect(row).to_contain_text("青溪县人民医院")
    expect(row.locator('[data-reason="condition_changed"]')).to_contain_text("病情变化")
    expect(ywk.locator("body")).not_to_contain_text("赵春兰")
    ywk.screenshot(path=str(SCREENSHOTS / "recognition-repeats.png"), full_page=True)
