"""A small county for the registry tests (H1): two townships, their family-doctor teams, a village clinic with a
blood-pressure point, and a resident in each township. Built per test with `build(db)`."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import date

from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.chronic.models import MonitoringPoint
from healthrelay.directory.models import Area, AreaLevel, Organisation, OrgKind, OrgLevel, Team
from healthrelay.patients.models import IdentifierType, Patient, PatientIdentifier
from tests import factories as f

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
_seq = itertools.count(1)


@dataclass
class RegistryWorld:
    village_a: Area
    village_c: Area
    town1: Organisation
    clinic: Organisation
    town2: Organisation
    doc1: User  # township doctor, team1
    vdoc: User  # village doctor of the clinic, team1
    doc2: User  # the other township's doctor, team2
    team1: Team
    team2: Team
    point: MonitoringPoint
    p1: Patient  # lives in village A, registered at town1
    p2: Patient  # lives in village C, registered at town2
    p1_id_number: str


def _area(db: Session, name: str, level: AreaLevel, parent: Area | None = None) -> Area:
    area = Area(code=f"RA{next(_seq):05d}", name=name, level=level, parent_id=parent.id if parent else None)
    db.add(area)
    db.flush()
    return area


def build(db: Session) -> RegistryWorld:
    county = _area(db, "测试县", AreaLevel.COUNTY)
    township1 = _area(db, "东山镇", AreaLevel.TOWNSHIP, county)
    township2 = _area(db, "西河镇", AreaLevel.TOWNSHIP, county)
    village_a = _area(db, "桃园村", AreaLevel.VILLAGE, township1)
    village_c = _area(db, "柳溪村", AreaLevel.VILLAGE, township2)
    town1 = f.organisation(db, name="东山镇卫生院", area_id=township1.id)
    clinic = f.organisation(db, name="桃园村卫生室", level=OrgLevel.VILLAGE, kind=OrgKind.VILLAGE_CLINIC,
                            area_id=village_a.id, parent_id=town1.id)
    town2 = f.organisation(db, name="西河镇卫生院", area_id=township2.id)
    doc1 = f.user(db, organisation=town1, username=f"reg_doc1_{next(_seq)}")
    vdoc = f.user(db, organisation=clinic, username=f"reg_vdoc_{next(_seq)}")
    doc2 = f.user(db, organisation=town2, username=f"reg_doc2_{next(_seq)}")
    team1 = f.family_team(db, organisation=town1, members=[doc1, vdoc])
    team1.name, team1.area_ids = "东山镇家庭医生一队", [village_a.id]
    team2 = f.family_team(db, organisation=town2, members=[doc2])
    team2.name, team2.area_ids = "西河镇家庭医生队", [village_c.id]
    point = MonitoringPoint(code=f"BP{next(_seq):05d}", name="桃园村血压监测点", organisation_id=clinic.id,
                            area_id=village_a.id, device_serials=["BPM-001"])
    db.add(point)
    p1 = f.patient(db, name="王秀英", birth_date=date(1956, 3, 8), registered_at=town1, phone="13800001111")
    p1.area_id = village_a.id
    p2 = f.patient(db, name="李建国", birth_date=date(1960, 7, 1), registered_at=town2, phone="13900002222")
    p2.area_id = village_c.id
    number = f"4201231956030800{next(_seq) % 100:02d}"
    db.add(PatientIdentifier(patient_id=p1.id, type=IdentifierType.RESIDENT_ID, value=number))
    db.flush()
    return RegistryWorld(village_a=village_a, village_c=village_c, town1=town1, clinic=clinic, town2=town2,
                         doc1=doc1, vdoc=vdoc, doc2=doc2, team1=team1, team2=team2, point=point, p1=p1, p2=p2,
                         p1_id_number=number)


def other_user(db: Session, *, role: Role, organisation: Organisation | None) -> User:
    return f.user(db, role=role, organisation=organisation, username=f"reg_{role}_{next(_seq)}")


def login(client, username: str, page: str = "/chronic") -> str:  # noqa: ANN001
    """Log in through the form; the CSRF token of `page` for the next POST."""
    client.cookies.clear()
    token = CSRF_RE.search(client.get("/login").text).group(1)
    response = client.post("/login", data={"username": username, "password": f.PASSWORD, "csrf_token": token,
                                           "next": "/"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return CSRF_RE.search(client.get(page).text).group(1)
