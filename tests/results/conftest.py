"""The results world: the teleconsult test alliance (county hospital with its imaging centre, two townships and
a hospital outside the alliance), a lab clinician at each member, and helpers to build result inputs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.core.db import utcnow
from healthrelay.patients.models import PatientRegistration
from healthrelay.results.models import ExamResult, LabResult
from healthrelay.results.schemas import ExamResultIn, LabResultIn
from tests import factories as f
from tests.teleconsult.conftest import TeleWorld, build_world, staff
from tests.teleconsult.conftest import requests as requests  # noqa: F401 - fixture
from tests.teleconsult.conftest import tele as tele  # noqa: F401 - fixture

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class ResultsWorld:
    tele: TeleWorld
    town_lab: User  # 检验科 clinician at the township where the patient is registered
    county_lab: User  # 检验科 clinician at the county hospital (the patient is registered there too)


@pytest.fixture
def world(db: Session) -> ResultsWorld:
    tele = build_world(db)
    town_lab = staff(db, organisation=tele.town, username="town_lab", display_name="检验科刘", role=Role.CLINICIAN)
    county_lab = staff(db, organisation=tele.county, username="county_lab", display_name="检验科陈",
                       role=Role.CLINICIAN)
    db.add(PatientRegistration(patient_id=tele.patient.id, organisation_id=tele.county.id))
    db.commit()
    return ResultsWorld(tele=tele, town_lab=town_lab, county_lab=county_lab)


def lab_in(w: ResultsWorld, **changes: Any) -> LabResultIn:
    values: dict[str, Any] = dict(patient_id=w.tele.patient.id, organisation_id=w.tele.town.id, test_code="GLU",
                                  value="5.2", reported_at=utcnow() - timedelta(hours=1))
    values.update(changes)
    return LabResultIn(**values)


def exam_in(w: ResultsWorld, **changes: Any) -> ExamResultIn:
    values: dict[str, Any] = dict(patient_id=w.tele.patient.id, organisation_id=w.tele.town.id, exam_code="DR_CHEST",
                                  performed_at=utcnow() - timedelta(days=2), reported_at=utcnow() - timedelta(days=1),
                                  findings="双肺纹理清晰", impression="心肺未见异常")
    values.update(changes)
    return ExamResultIn(**values)


def count_labs(db: Session) -> int:
    db.expire_all()
    return db.execute(select(func.count()).select_from(LabResult)).scalar_one()


def count_exams(db: Session) -> int:
    db.expire_all()
    return db.execute(select(func.count()).select_from(ExamResult)).scalar_one()


def login(client, username: str) -> str:  # noqa: ANN001
    """Sign in through the login form; returns a CSRF token for page forms."""
    client.cookies.clear()
    token = CSRF_RE.search(client.get("/login").text).group(1)
    response = client.post("/login", data={"username": username, "password": f.PASSWORD, "csrf_token": token,
                                           "next": "/"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return CSRF_RE.search(client.get("/teleconsult").text).group(1)
