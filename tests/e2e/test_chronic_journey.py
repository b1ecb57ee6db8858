"""Hypertension follow-up in a real browser: a village doctor records two uncontrolled visits for a patient of
her family-doctor team. After the first, the 2-week review is due (and soon overdue) and the patient tops the
team's overdue list; the second proposes an upward referral to the county hospital and a check on it in two
weeks. The health bureau, with the township's indicators open on another screen, sees the control rate fall.

Two people at two screens; the data is built with factories and the chronic models, nothing from the demo.
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
from healthrelay.chronic import rules
from healthrelay.chronic.models import ChronicEnrolment, ChronicReading, ChronicTask
from healthrelay.core.db import local_today, utcnow
from healthrelay.directory.models import (
    Alliance,
    AllianceKind,
    AllianceMembership,
    Area,
    AreaLevel,
    MembershipRole,
    OrgKind,
    OrgLevel,
)
from healthrelay.referrals.models import Direction, Referral, State
from tests import factories as f
from tests.browser import SCREENSHOTS, screens_for, sign_in

pytestmark = pytest.mark.e2e


@pytest.fixture
def screens(browser: Browser, live_server: str) -> Iterator[dict[str, Page]]:
    with screens_for(browser, live_server, ("village", "bureau"), width=1280, height=800) as pages:
        yield pages


def _enrol_controlled(db: Session, *, patient_id: int, team_id: int, township_org: int, village: int) -> int:
    """A hypertensive enrolled 200 days ago whose last reading (45 days ago, 132/82) was at target."""
    read_at = utcnow() - timedelta(days=45)
    enrolment = ChronicEnrolment(
        patient_id=patient_id, condition_code="htn", organisation_id=township_org, team_id=team_id,
        village_area_id=village, diagnosed_on=local_today() - timedelta(days=800), source="clinic",
        enrolled_at=utcnow() - timedelta(days=200), next_visit_due=local_today() + timedelta(days=46),
        next_visit_kind="routine", last_visit_on=local_today() - timedelta(days=45), last_classification="controlled")
    rules.apply_bp(enrolment, sbp=132, dbp=82, at=read_at)
    db.add(enrolment)
    db.flush()
    db.add(ChronicReading(patient_id=patient_id, organisation_id=township_org, kind="bp", measured_at=read_at,
                          sbp=132, dbp=82, source="manual"))
    return enrolment.id


def _world(db: Session) -> dict[str, int]:
    county_area = Area(code="QX", name="青溪县", level=AreaLevel.COUNTY)
    db.add(county_area)
    db.flush()
    township_area = Area(code="QX-SM", name="石门镇", level=AreaLevel.TOWNSHIP, parent_id=county_area.id,
                         latitude=30.1, longitude=110.1)
    db.add(township_area)
    db.flush()
    village = Area(code="QX-SM-01", name="石门村", level=AreaLevel.VILLAGE, parent_id=township_area.id,
                   latitude=30.12, longitude=110.12)
    db.add(village)
    db.flush()
    county = f.organisation(db, name="青溪县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL)
    township = f.organisation(db, name="石门镇中心卫生院", area_id=township_area.id)
    clinic = f.organisation(db, name="石门村卫生室", level=OrgLevel.VILLAGE, kind=OrgKind.VILLAGE_CLINIC,
                            area_id=village.id, parent_id=township.id)
    alliance = Alliance(code="QX-YGT", name="青溪县医共体", kind=AllianceKind.COUNTY_COMMUNITY)
    db.add(alliance)
    db.flush()
    db.add_all([AllianceMembership(alliance_id=alliance.id, organisation_id=county.id, role=MembershipRole.LEAD),
                AllianceMembership(alliance_id=alliance.id, organisation_id=township.id, role=MembershipRole.MEMBER),
                AllianceMembership(alliance_id=alliance.id, organisation_id=clinic.id, role=MembershipRole.MEMBER)])
    village_doctor = f.user(db, organisation=clinic, username="village_doctor")
    f.user(db, role=Role.HEALTH_BUREAU, username="county_bureau", with_practitioner=False)
    team = f.family_team(db, organisation=township, members=[village_doctor])
    team.area_ids = [village.id]
    ids = {"team": team.id, "county": county.id, "township_area": township_area.id}
    for key, name, birth in (("patient", "张桂芳", date(1964, 5, 2)), ("neighbour", "李德明", date(1958, 9, 14))):
        person = f.patient(db, name=name, birth_date=birth, registered_at=clinic, phone="13800001111")
        person.area_id = village.id
        f.on_panel(db, team=team, patient=person)
        ids[key] = person.id
        ids[f"{key}_enrolment"] = _enrol_controlled(db, patient_id=person.id, team_id=team.id,
                                                    township_org=township.id, village=village.id)
    db.commit()
    return ids


def _record_visit(page: Page, *, visit_on: date, sbp: int, dbp: int) -> None:
    expect(page.locator("#followup-form")).to_be_visible()
    page.fill("#visit_on", visit_on.isoformat())
    page.fill("#sbp", str(sbp))
    page.fill("#dbp", str(dbp))
    page.fill("#weight_kg", "68")
    page.fill("#height_cm", "160")
    page.click("#followup-submit")
    expect(page.locator("#followup-saved")).to_be_visible()


def test_two_uncontrolled_visits_propose_a_referral_and_move_the_figures(db: Session,
                                                                        screens: dict[str, Page]) -> None:
    ids = _world(db)
    village_doctor, bureau = screens["village"], screens["bureau"]
    control_cell = bureau.locator(f'tr[data-key="{ids["township_area"]}"] [data-indicator="control_rate"]')

    # The bureau watches the county's townships: both of Shimen's hypertensives are at target.
    sign_in(bureau, "county_bureau")
    bureau.goto("/chronic/indicators?condition=htn&level=township")
    expect(control_cell).to_have_text("100.0%")

    # The village doctor's worklist: nobody overdue yet.
    sign_in(village_doctor, "village_doctor")
    village_doctor.goto("/chronic/worklist")
    expect(village_doctor.locator("#overdue-empty")).to_be_visible()

    # First visit, three weeks ago: 162/98 is above target → review in two weeks, no referral yet.
    village_doctor.goto(f"/chronic/patients/{ids['patient']}")
    village_doctor.locator(f'a[href="/chronic/follow-ups/new?enrolment={ids["patient_enrolment"]}"]').first.click()
    first_visit = local_today() - timedelta(days=21)
    _record_visit(village_doctor, visit_on=first_visit, sbp=162, dbp=98)
    expect(village_doctor.locator("#result-h")).to_have_attribute("data-classification", "uncontrolled")
    expect(village_doctor.locator("#followup-next")).to_contain_text((first_visit + timedelta(days=14)).isoformat())
    expect(village_doctor.locator("#followup-referral")).to_have_count(0)

    # The review was due a week ago: the patient is now on the team's overdue list, with her number to call.
    village_doctor.goto("/chronic/worklist")
    row = village_doctor.locator(f"#overdue-{ids['patient_enrolment']}")
    expect(row).to_contain_text("张桂芳")
    expect(village_doctor.locator(f"#overdue-{ids['neighbour_enrolment']}")).to_have_count(0)
    expect(village_doctor.locator('[data-count="overdue"]')).to_have_text("1")

    # Second visit, today, from the worklist: still 166/100 → uncontrolled twice → an upward referral draft.
    village_doctor.locator(f"#visit-{ids['patient_enrolment']}").click()
    _record_visit(village_doctor, visit_on=local_today(), sbp=166, dbp=100)
    expect(village_doctor.locator("#result-h")).to_have_attribute("data-classification", "uncontrolled")
    expect(village_doctor.locator("#followup-referral")).to_be_visible()
    check_due = local_today() + timedelta(days=14)
    expect(village_doctor.locator("#followup-task")).to_contain_text(check_due.isoformat())
    village_doctor.screenshot(path=str(SCREENSHOTS / "chronic-referral-proposed.png"), full_page=True)

    db.expire_all()
    draft = db.scalar(select(Referral).where(Referral.patient_id == ids["patient"]))
    assert draft is not None
    assert (draft.state, draft.direction, draft.to_organisation_id) == (State.DRAFT, Direction.UP, ids["county"])
    task = db.scalar(select(ChronicTask).where(ChronicTask.patient_id == ids["patient"]))
    assert task is not None and (task.kind, task.due_on, task.referral_id) == ("referral_check", check_due, draft.id)

    # The draft opens on the referral page, ready to check and send.
    village_doctor.locator("#referral-draft-link").first.click()
    expect(village_doctor).to_have_url(re.compile(rf"/referrals/{draft.id}$"))

    # Back on the worklist: seen today, so no longer overdue; the referral check waits in the tasks.
    village_doctor.goto("/chronic/worklist")
    expect(village_doctor.locator("#overdue-empty")).to_be_visible()
    expect(village_doctor.locator(f"#task-{task.id}")).to_contain_text("张桂芳")

    # The bureau's figure follows: one of the two is no longer at target.
    bureau.reload()
    expect(control_cell).to_have_text("50.0%")
