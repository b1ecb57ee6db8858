"""A small alliance for mutual recognition: the county hospital (lead), a township with a passed CT and chemistry
quality assessment, a second township without one, a hospital outside the alliance; their doctors and admins,
the alliance admin and the health bureau; one patient registered at the county and the township."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.directory.models import (
    Alliance,
    AllianceKind,
    AllianceMembership,
    MembershipRole,
    Organisation,
    OrgKind,
    OrgLevel,
)
from healthrelay.patients.models import Patient, PatientRegistration
from tests import factories as f


@dataclass
class RecWorld:
    county: Organisation
    town: Organisation
    town_b: Organisation
    outsider: Organisation
    county_doctor: User
    county_admin: User
    town_doctor: User
    town_admin: User
    outsider_doctor: User
    alliance_admin: User
    bureau: User
    patient: Patient  # registered at the county and the township
    other_patient: Patient  # registered at the county only


def build_world(db: Session) -> RecWorld:
    county = f.organisation(db, name="测试县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL)
    town = f.organisation(db, name="东山镇卫生院")
    town_b = f.organisation(db, name="西河镇卫生院")
    outsider = f.organisation(db, name="邻县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL)
    alliance = Alliance(code="YGT-HR", name="测试县医共体", kind=AllianceKind.COUNTY_COMMUNITY)
    db.add(alliance)
    db.flush()
    for org, role in ((county, MembershipRole.LEAD), (town, MembershipRole.MEMBER), (town_b, MembershipRole.MEMBER)):
        db.add(AllianceMembership(alliance_id=alliance.id, organisation_id=org.id, role=role))
    patient = f.patient(db, name="王秀英", registered_at=town)
    db.add(PatientRegistration(patient_id=patient.id, organisation_id=county.id))
    world = RecWorld(
        county=county, town=town, town_b=town_b, outsider=outsider,
        county_doctor=f.user(db, organisation=county, username="county_doc"),
        county_admin=f.user(db, role=Role.ORG_ADMIN, organisation=county, username="county_admin"),
        town_doctor=f.user(db, organisation=town, username="town_doc"),
        town_admin=f.user(db, role=Role.ORG_ADMIN, organisation=town, username="town_admin"),
        outsider_doctor=f.user(db, organisation=outsider, username="outsider_doc"),
        alliance_admin=f.user(db, role=Role.ALLIANCE_ADMIN, username="alliance_admin", with_practitioner=False),
        bureau=f.user(db, role=Role.HEALTH_BUREAU, username="bureau", with_practitioner=False),
        patient=patient, other_patient=f.patient(db, name="李建国", registered_at=county),
    )
    f.eqa_record(db, organisation=town, scope="alliance", modality="CT")
    f.eqa_record(db, organisation=town, scope="province", category="chemistry")
    f.eqa_record(db, organisation=town, scope="province", category="electrolyte")
    f.eqa_record(db, organisation=town, scope="province", category="hba1c")
    db.commit()
    return world


@pytest.fixture
def rec(db: Session) -> RecWorld:
    return build_world(db)
