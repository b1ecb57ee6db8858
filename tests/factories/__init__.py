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


# --- results and mutual recognition (helper Q) -----------------------------------------------------

def eqa_record(db: Session, *, organisation: Organisation, scope: str = "alliance", year: int | None = None,
               passed: bool = True, code: str = "", category: str = "", modality: str = ""):  # noqa: ANN201
    """A 室间质评 result of `organisation` (this year, Shanghai, unless told)."""
    from zoneinfo import ZoneInfo

    from healthrelay.core.db import utcnow
    from healthrelay.recognition.models import EqaRecord

    row = EqaRecord(organisation_id=organisation.id, scope=scope, passed=passed, code=code, category=category,
                    modality=modality, program="测试质评 / test programme",
                    year=year or utcnow().astimezone(ZoneInfo("Asia/Shanghai")).year)
    db.add(row)
    db.flush()
    return row


def lab_result(db: Session, *, patient: Patient, organisation: Organisation, code: str, value: str,
               reported_at, scope: str | None = None, status: str = "final"):  # noqa: ANN001, ANN201
    """A lab result row as the results domain stores it; the HR mark from recognition.mark_for unless given."""
    from healthrelay.recognition.service import mark_for
    from healthrelay.results.models import LabResult, ResultCode

    info = db.get(ResultCode, code)
    row = LabResult(patient_id=patient.id, organisation_id=organisation.id, test_code=code,
                    test_name=info.name_zh if info else code, value_text=value, unit=info.unit if info else "",
                    reported_at=reported_at, collected_at=reported_at, status=status, source="entered",
                    recognition_scope=mark_for(db, organisation_id=organisation.id, code=code, at=reported_at)
                    if scope is None else scope)
    row.value_numeric = float(value) if value.replace(".", "", 1).isdigit() else None
    db.add(row)
    db.flush()
    return row


def exam_result(db: Session, *, patient: Patient, organisation: Organisation, code: str, reported_at,  # noqa: ANN001
                impression: str = "未见明显异常", scope: str | None = None, study_instance_uid: str = ""):  # noqa: ANN201
    """An examination report row (CT, US ...); the HR mark from recognition.mark_for unless given."""
    from healthrelay.recognition.service import mark_for
    from healthrelay.results.models import ExamResult, ResultCode

    info = db.get(ResultCode, code)
    row = ExamResult(patient_id=patient.id, organisation_id=organisation.id, exam_code=code,
                     exam_name=info.name_zh if info else code, category=info.category if info else "imaging",
                     modality=info.modality if info else "", body_part=info.body_part if info else "",
                     performed_at=reported_at, reported_at=reported_at, findings="", impression=impression,
                     study_instance_uid=study_instance_uid, source="entered",
                     recognition_scope=mark_for(db, organisation_id=organisation.id, code=code, at=reported_at)
                     if scope is None else scope)
    db.add(row)
    db.flush()
    return row
