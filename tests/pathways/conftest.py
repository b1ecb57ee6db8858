"""A small emergency alliance for the pathway tests: the county hospital (PCI, stroke centre) receiving
patients, a township clinic that records the first ECG, the 120 centre's dispatcher, a hospital outside the
alliance, and a resident of the township."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.core.db import utcnow
from healthrelay.directory.models import Organisation, OrgKind, OrgLevel
from healthrelay.patients.models import Patient
from tests import factories as f


@dataclass
class PathwayWorld:
    county: Organisation
    town: Organisation
    dispatch: Organisation  # the 120 emergency centre
    outsider: Organisation
    cardiologist: User  # county hospital, records the cath-lab nodes
    county_admin: User
    town_doctor: User
    dispatcher: User
    outsider_doctor: User
    bureau: User
    patient: Patient


@pytest.fixture
def world(db: Session) -> PathwayWorld:
    county = f.organisation(db, name="测试县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL)
    town = f.organisation(db, name="东山镇卫生院")
    dispatch = f.organisation(db, name="县急救指挥中心")
    outsider = f.organisation(db, name="邻县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL)
    w = PathwayWorld(
        county=county, town=town, dispatch=dispatch, outsider=outsider,
        cardiologist=f.user(db, organisation=county, username="cardio"),
        county_admin=f.user(db, role=Role.ORG_ADMIN, organisation=county, username="county_admin"),
        town_doctor=f.user(db, organisation=town, username="town_doc"),
        dispatcher=f.user(db, role=Role.DISPATCHER, organisation=dispatch, username="dispatcher"),
        outsider_doctor=f.user(db, organisation=outsider, username="outsider"),
        bureau=f.user(db, role=Role.HEALTH_BUREAU, username="bureau", with_practitioner=False),
        patient=f.patient(db, name="王秀英", registered_at=town),
    )
    db.commit()
    return w


def minutes_ago(minutes: float, now: datetime | None = None) -> datetime:
    return (now or utcnow()) - timedelta(minutes=minutes)
