"""The outreach world: a provincial hospital whose cardiologist leads a studio hosted by the county hospital
(agreement for this year and next), a township centre 30-odd km away with a clinician, the county's planner
(医务科, org admin), a county doctor who goes down weekly, a resident with a patient account, and a second
resident registered at the township."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.core.db import LOCAL_TZ, local_today
from healthrelay.directory.models import (
    Organisation,
    OrgKind,
    OrgLevel,
    Post,
    Practitioner,
    Specialty,
    Team,
    TeamKind,
    TeamMember,
    TitleGrade,
)
from healthrelay.outreach import service
from healthrelay.outreach.models import OutreachSession, StudioAgreement
from healthrelay.patients.models import Patient, Sex
from tests import factories as f


@dataclass
class World:
    province: Organisation  # provincial hospital, the studio's home
    county: Organisation  # county people's hospital, the studio's host
    town: Organisation  # township centre
    other_town: Organisation
    cardiology: Specialty
    studio: Team
    agreement: StudioAgreement
    expert: User  # provincial cardiologist, studio leader
    county_doctor: User  # county cardiologist who goes down to the township
    planner: User  # county hospital's org admin (医务科)
    town_doctor: User  # clinician at the township
    outsider: User  # clinician at another township
    resident: Patient  # has a patient account
    resident_user: User
    neighbour: Patient  # registered at the township, no account


def _post(db: Session, user: User, org: Organisation, primary: bool = True) -> None:
    assert user.practitioner_id is not None
    db.add(Post(practitioner_id=user.practitioner_id, organisation_id=org.id, is_primary=primary))
    db.flush()


@pytest.fixture
def world(db: Session) -> World:
    province = f.organisation(db, name="省人民医院", level=OrgLevel.PROVINCIAL, kind=OrgKind.GENERAL_HOSPITAL)
    province.latitude, province.longitude = 30.60, 114.30
    county = f.organisation(db, name="青溪县人民医院", level=OrgLevel.TERTIARY, kind=OrgKind.GENERAL_HOSPITAL)
    county.latitude, county.longitude = 30.00, 111.00
    town = f.organisation(db, name="石门镇卫生院")
    town.latitude, town.longitude = 30.20, 111.25
    other_town = f.organisation(db, name="河口乡卫生院")
    cardiology = Specialty(code="cardiology", name="心血管内科", name_en="Cardiology")
    db.add(cardiology)
    db.flush()
    expert = f.user(db, organisation=county, username="expert_card")
    _post(db, expert, province)
    _post(db, expert, county, primary=False)
    db.get(Practitioner, expert.practitioner_id).title_grade = TitleGrade.CHIEF  # type: ignore[union-attr]
    county_doctor = f.user(db, organisation=county, username="county_card")
    _post(db, county_doctor, county)
    planner = f.user(db, role=Role.ORG_ADMIN, organisation=county, username="planner")
    town_doctor = f.user(db, organisation=town, username="town_doc")
    _post(db, town_doctor, town)
    outsider = f.user(db, organisation=other_town, username="other_doc")
    studio = Team(code="STUDIO-1", name="张教授心血管专家工作室", kind=TeamKind.EXPERT_STUDIO,
                  organisation_id=county.id, home_organisation_id=province.id, specialty_id=cardiology.id)
    db.add(studio)
    db.flush()
    db.add(TeamMember(team_id=studio.id, practitioner_id=expert.practitioner_id, role="leader"))
    this_year = local_today().year
    agreement = StudioAgreement(team_id=studio.id, starts_on=date(this_year - 1, 1, 1),
                                ends_on=date(this_year + 1, 12, 31), sessions_per_month=4)
    db.add(agreement)
    resident = f.patient(db, name="刘桂兰", registered_at=town, phone="13800001111")
    resident_user = f.user(db, role=Role.PATIENT, username="liu_guilan", patient=resident)
    neighbour = f.patient(db, name="赵德明", sex=Sex.MALE, birth_date=date(1950, 2, 3), registered_at=town)
    db.commit()
    return World(province=province, county=county, town=town, other_town=other_town, cardiology=cardiology,
                 studio=studio, agreement=agreement, expert=expert, county_doctor=county_doctor, planner=planner,
                 town_doctor=town_doctor, outsider=outsider, resident=resident, resident_user=resident_user,
                 neighbour=neighbour)


def next_weekday(weekday: int, *, weeks_ahead: int = 1) -> date:
    """A date on `weekday` at least `weeks_ahead` weeks from today (local)."""
    today = local_today()
    return today + timedelta(days=(weekday - today.weekday()) % 7 + 7 * weeks_ahead)


def at(day: date, hhmm: str = "09:00") -> datetime:
    return service.local_dt(day, hhmm).astimezone(LOCAL_TZ)


def clinic(db: Session, w: World, *, day: date | None = None, capacity: int = 20, waitlist: int = 10,
           person: User | None = None, host: Organisation | None = None, studio: bool = False,
           kind: str = "clinic", hhmm: str = "09:00", allow_past: bool = False) -> OutreachSession:
    """A published session planned by the county planner (a studio session when `studio`)."""
    person = person or (w.expert if studio else w.county_doctor)
    assert person.practitioner_id is not None
    plan = service.SessionPlan(kind=kind, title="心血管专家门诊" if kind == "clinic" else "教学查房",
                               practitioner_id=person.practitioner_id, host_organisation_id=(host or w.town).id,
                               starts_at=at(day or next_weekday(1), hhmm), minutes=180, capacity=capacity,
                               waitlist_limit=waitlist, specialty_id=w.cardiology.id,
                               studio_team_id=w.studio.id if studio else None)
    row = service.create_session(db, by=w.planner, plan=plan, allow_past=allow_past)
    db.commit()
    return row


def move_to_past(db: Session, session: OutreachSession, *, days: int = 1, hhmm: str = "08:00") -> OutreachSession:
    """A session planned (and booked) ahead, moved to a day that has passed: what happened can be recorded."""
    day = local_today() - timedelta(days=days)
    session.starts_at = service.local_dt(day, hhmm)
    session.ends_at = session.starts_at + timedelta(minutes=180)
    db.commit()
    return session


CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def login(client, username: str) -> str:  # noqa: ANN001
    """Sign in through the login form; returns a CSRF token for page forms."""
    client.cookies.clear()
    token = CSRF_RE.search(client.get("/login").text).group(1)
    response = client.post("/login", data={"username": username, "password": f.PASSWORD, "csrf_token": token,
                                           "next": "/"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return CSRF_RE.search(client.get("/").text).group(1)
