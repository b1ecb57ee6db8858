"""Small builders for test data; every test makes exactly what it needs."""

from __future__ import annotations

import itertools
from datetime import date

from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.accounts.service import create_user
from healthrelay.directory.models import (
    Organisation,
    OrgKind,
    OrgLevel,
    Practitioner,
    Team,
    TeamKind,
    TeamMember,
    TitleGrade,
)
from healthrelay.patients.models import Patient, PatientRegistration, Sex, TeamPanelEntry

PASSWORD = "correct-horse-42"
_seq = itertools.count(1)


def organisation(db: Session, *, name: str | None = None, level: OrgLevel = OrgLevel.TOWNSHIP,
                 kind: OrgKind = OrgKind.TOWNSHIP_CENTRE, **extra: object) -> Organisation:
    n = next(_seq)
    org = Organisation(code=f"ORG{n:04d}", name=name or f"测试乡镇卫生院{n}", level=level, kind=kind,
                       latitude=30.0 + n / 100, longitude=110.0 + n / 100, **extra)
    db.add(org)
    db.flush()
    return org


def practitioner(db: Session, *, name: str = "李医生", grade: TitleGrade = TitleGrade.ATTENDING) -> Practitioner:
    p = Practitioner(code=f"P{next(_seq):05d}", name=name, title_grade=grade, years_independent_practice=5)
    db.add(p)
    db.flush()
    return p


def user(db: Session, *, role: Role = Role.CLINICIAN, organisation: Organisation | None = None,
         username: str | None = None, with_practitioner: bool = True, patient: Patient | None = None) -> User:
    prac = practitioner(db) if with_practitioner and role != Role.PATIENT else None
    return create_user(db, username=username or f"user{next(_seq)}", password=PASSWORD,
                       display_name=username or "测试用户", role=role,
                       organisation_id=organisation.id if organisation else None,
                       practitioner_id=prac.id if prac else None,
                       patient_id=patient.id if patient else None)


def patient(db: Session, *, name: str = "王秀英", sex: Sex = Sex.FEMALE, birth_date: date = date(1956, 3, 8),
            registered_at: Organisation | None = None, phone: str = "") -> Patient:
    from pypinyin import Style, lazy_pinyin

    p = Patient(name=name, pinyin=" ".join(lazy_pinyin(name)),
                pinyin_initials="".join(lazy_pinyin(name, style=Style.FIRST_LETTER)),
                sex=sex, birth_date=birth_date, phone=phone)
    db.add(p)
    db.flush()
    if registered_at is not None:
        db.add(PatientRegistration(patient_id=p.id, organisation_id=registered_at.id))
        db.flush()
    return p


def family_team(db: Session, *, organisation: Organisation, members: list[User]) -> Team:
    team = Team(code=f"T{next(_seq):05d}", name="家庭医生团队", kind=TeamKind.FAMILY_DOCTOR,
                organisation_id=organisation.id)
    db.add(team)
    db.flush()
    for u in members:
        db.add(TeamMember(team_id=team.id, practitioner_id=u.practitioner_id))
    db.flush()
    return team


def on_panel(db: Session, *, team: Team, patient: Patient) -> None:
    db.add(TeamPanelEntry(team_id=team.id, patient_id=patient.id))
    db.flush()


def bearer(client, username: str, password: str = PASSWORD) -> dict[str, str]:  # noqa: ANN001
    response = client.post("/api/v1/auth/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}
