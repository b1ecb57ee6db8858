"""A small county for the patient-index tests: two townships, villages, and users of each role."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

import pytest
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.directory.models import Area, AreaLevel, Organisation
from healthrelay.patients.identity import make_resident_id
from healthrelay.patients.schemas import PatientCreate
from tests import factories as f

REGION = "421122"


@dataclass
class County:
    town_a: Organisation
    town_b: Organisation
    village_a1: Area
    village_a2: Area
    village_b1: Area
    doctor_a: User  # clinician (village/township doctor) at township A
    doctor_b: User  # clinician at township B
    admin_a: User  # organisation admin at township A
    alliance_admin: User
    bureau: User


@pytest.fixture
def county(db: Session) -> County:
    county_area = Area(code="421122000", name="测试县", level=AreaLevel.COUNTY)
    db.add(county_area)
    db.flush()
    township_a = Area(code="421122100", name="东山镇", level=AreaLevel.TOWNSHIP, parent_id=county_area.id)
    township_b = Area(code="421122200", name="西河乡", level=AreaLevel.TOWNSHIP, parent_id=county_area.id)
    db.add_all([township_a, township_b])
    db.flush()
    village_a1 = Area(code="421122101", name="桃园村", level=AreaLevel.VILLAGE, parent_id=township_a.id)
    village_a2 = Area(code="421122102", name="李家湾村", level=AreaLevel.VILLAGE, parent_id=township_a.id)
    village_b1 = Area(code="421122201", name="河口村", level=AreaLevel.VILLAGE, parent_id=township_b.id)
    db.add_all([village_a1, village_a2, village_b1])
    db.flush()
    town_a = f.organisation(db, name="东山镇卫生院", area_id=township_a.id)
    town_b = f.organisation(db, name="西河乡卫生院", area_id=township_b.id)
    c = County(
        town_a=town_a, town_b=town_b, village_a1=village_a1, village_a2=village_a2, village_b1=village_b1,
        doctor_a=f.user(db, role=Role.CLINICIAN, organisation=town_a, username="doctor_a"),
        doctor_b=f.user(db, role=Role.CLINICIAN, organisation=town_b, username="doctor_b"),
        admin_a=f.user(db, role=Role.ORG_ADMIN, organisation=town_a, username="admin_a"),
        alliance_admin=f.user(db, role=Role.ALLIANCE_ADMIN, username="alliance_admin"),
        bureau=f.user(db, role=Role.HEALTH_BUREAU, username="bureau", with_practitioner=False),
    )
    db.commit()
    return c


def rid(born: date, sex: str, seq: int = 12) -> str:
    return make_resident_id(REGION, born, seq, sex)


def new_patient(**overrides: object) -> PatientCreate:
    """王秀英, born 1956-03-08, in 桃园村 unless told otherwise."""
    fields: dict[str, object] = {"name": "王秀英", "sex": "F", "birth_date": date(1956, 3, 8),
                                 "phone": "13912345678"}
    fields.update(overrides)
    return PatientCreate.model_validate(fields)


CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_from(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "page has no CSRF token"
    return match.group(1)


def login(client, username: str) -> str:  # noqa: ANN001
    """Sign in through the login form; returns a CSRF token for later forms."""
    token = csrf_from(client.get("/login").text)
    response = client.post("/login", data={"username": username, "password": f.PASSWORD, "csrf_token": token,
                                           "next": "/"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return csrf_from(client.get("/patients").text)
