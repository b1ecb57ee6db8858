"""The screening world: a township centre whose family-doctor team serves one village, its doctor, a doctor of
another township, a health-bureau reader, a resident on file with a resident ID, and a known hypertensive."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.chronic.models import ChronicEnrolment
from healthrelay.core.db import utcnow
from healthrelay.directory.models import Area, AreaLevel, Organisation, Team
from healthrelay.patients.identity import make_resident_id
from healthrelay.patients.models import IdentifierType, Patient, PatientIdentifier, Sex
from healthrelay.screening import service
from healthrelay.screening.models import ScreeningEvent
from tests import factories as f

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class World:
    town: Organisation
    other_town: Organisation
    village: Area
    team: Team
    doctor: User  # clinician of the township, member of the family-doctor team
    outsider: User  # clinician of another township
    bureau: User
    resident: Patient  # on file with a resident ID, lives in the village
    resident_id: str
    hypertensive: Patient
    enrolment: ChronicEnrolment


def _area(db: Session, code: str, name: str, level: AreaLevel, parent: Area | None = None) -> Area:
    area = Area(code=code, name=name, level=level, parent_id=parent.id if parent else None)
    db.add(area)
    db.flush()
    return area


@pytest.fixture
def world(db: Session) -> World:
    county = _area(db, "421023", "测试县", AreaLevel.COUNTY)
    township = _area(db, "421023101", "青石镇", AreaLevel.TOWNSHIP, county)
    village = _area(db, "421023101201", "青石村", AreaLevel.VILLAGE, township)
    town = f.organisation(db, name="青石镇卫生院")
    other = f.organisation(db, name="河口乡卫生院")
    doctor = f.user(db, organisation=town, username="town_doc")
    outsider = f.user(db, organisation=other, username="other_doc")
    bureau = f.user(db, role=Role.HEALTH_BUREAU, username="bureau", with_practitioner=False)
    team = f.family_team(db, organisation=town, members=[doctor])
    team.area_ids = [village.id]
    born = date(1961, 4, 12)
    rid = make_resident_id("421023", born, 11, "F")
    resident = f.patient(db, name="刘桂兰", birth_date=born, sex=Sex.FEMALE)
    resident.area_id = village.id
    db.add(PatientIdentifier(patient_id=resident.id, type=IdentifierType.RESIDENT_ID, value=rid))
    hypertensive = f.patient(db, name="赵德明", sex=Sex.MALE, birth_date=date(1955, 8, 2), registered_at=town)
    hypertensive.area_id = village.id
    db.flush()
    f.on_panel(db, team=team, patient=hypertensive)
    enrolment = ChronicEnrolment(patient_id=hypertensive.id, condition_code="htn", organisation_id=town.id,
                                 team_id=team.id, village_area_id=village.id, diagnosed_on=date(2020, 1, 1),
                                 enrolled_at=utcnow() - timedelta(days=400), last_sbp=135, last_dbp=85,
                                 last_bp_at=utcnow() - timedelta(days=30), risk_level=1)
    db.add(enrolment)
    db.commit()
    return World(town=town, other_town=other, village=village, team=team, doctor=doctor, outsider=outsider,
                 bureau=bureau, resident=resident, resident_id=rid, hypertensive=hypertensive, enrolment=enrolment)


def plan(db: Session, w: World, *, kind: str = "free_clinic", services: list[str] | None = None,
         open_it: bool = True, starts: datetime | None = None) -> ScreeningEvent:
    starts = starts or utcnow().replace(microsecond=0)
    event = service.plan_event(db, by=w.doctor, plan=service.EventPlan(
        kind=kind, title="青石村义诊" if kind != "school_checkup" else "青石镇小学体检", host_organisation_id=w.town.id,
        team_id=w.team.id, place="青石村委会", area_id=w.village.id, starts_at=starts,
        ends_at=starts + timedelta(hours=6), departments=["心内科", "中医科"],
        services=services or ["bp", "glucose", "tcm_pulse", "height_weight", "vision", "dental"]))
    if open_it:
        service.set_status(db, by=w.doctor, event_id=event.id, status="open")
    db.commit()
    return event


def login(client, username: str) -> str:  # noqa: ANN001
    """Sign in through the login form; returns a CSRF token for page forms."""
    client.cookies.clear()
    token = CSRF_RE.search(client.get("/login").text).group(1)
    response = client.post("/login", data={"username": username, "password": f.PASSWORD, "csrf_token": token,
                                           "next": "/"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return CSRF_RE.search(client.get("/screening").text).group(1)
