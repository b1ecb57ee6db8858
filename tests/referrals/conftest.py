"""A small alliance for referral tests: a county hospital (lead) with a cardiology department, two
township centres in its 医共体, and a hospital outside it; users at each and a patient at township A."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.core.db import utcnow
from healthrelay.directory.models import (
    Alliance,
    AllianceKind,
    AllianceMembership,
    Department,
    MembershipRole,
    Organisation,
    OrgKind,
    OrgLevel,
    Team,
)
from healthrelay.patients.models import Patient
from healthrelay.referrals import service
from healthrelay.referrals.models import Referral, Urgency
from tests import factories as f


@dataclass
class World:
    county: Organisation
    cardiology: Department
    town_a: Organisation
    town_b: Organisation
    outsider: Organisation
    team_a: Team
    village_doctor: User  # clinician at township A
    county_doctor: User  # clinician at the county hospital
    county_doctor2: User
    dept_head: User  # head of cardiology
    county_admin: User  # medical-affairs office (医务科)
    town_b_doctor: User
    outsider_doctor: User
    patient: Patient


@pytest.fixture
def world(db: Session) -> World:
    county = f.organisation(db, name="测试县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL)
    town_a = f.organisation(db, name="东山镇卫生院")
    town_b = f.organisation(db, name="西河镇卫生院")
    outsider = f.organisation(db, name="邻县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL)
    alliance = Alliance(code="YGT1", name="测试县医共体", kind=AllianceKind.COUNTY_COMMUNITY)
    db.add(alliance)
    db.flush()
    for org, role in ((county, MembershipRole.LEAD), (town_a, MembershipRole.MEMBER), (town_b, MembershipRole.MEMBER)):
        db.add(AllianceMembership(alliance_id=alliance.id, organisation_id=org.id, role=role))
    dept_head = f.user(db, organisation=county, username="xnk_head")
    cardiology = Department(organisation_id=county.id, code="XNK", name="心内科",
                            head_practitioner_id=dept_head.practitioner_id)
    db.add(cardiology)
    db.flush()
    village_doctor = f.user(db, organisation=town_a, username="village_doc")
    team_a = f.family_team(db, organisation=town_a, members=[village_doctor])
    world = World(
        county=county, cardiology=cardiology, town_a=town_a, town_b=town_b, outsider=outsider, team_a=team_a,
        village_doctor=village_doctor,
        county_doctor=f.user(db, organisation=county, username="county_doc"),
        county_doctor2=f.user(db, organisation=county, username="county_doc2"),
        dept_head=dept_head,
        county_admin=f.user(db, organisation=county, role=Role.ORG_ADMIN, username="ywk_admin"),
        town_b_doctor=f.user(db, organisation=town_b, username="town_b_doc"),
        outsider_doctor=f.user(db, organisation=outsider, username="outsider_doc"),
        patient=f.patient(db, registered_at=town_a),
    )
    db.commit()
    return world


def up_input(w: World, **changes: object) -> service.ReferralInput:
    values: dict[str, object] = dict(
        patient_id=w.patient.id, to_organisation_id=w.county.id, to_department_id=w.cardiology.id,
        urgency=Urgency.URGENT, reason="胸痛 2 小时，疑急性冠脉综合征", diagnosis_code="I20.0",
        diagnosis_text="不稳定型心绞痛", case_summary="既往高血压十年", vital_signs={"bp": "160/95", "hr": 102},
        medicines=[{"name": "阿司匹林", "dose": "100 mg qd"}], consent_kind="written")
    values.update(changes)
    return service.ReferralInput(**values)  # type: ignore[arg-type]


def sent_referral(db: Session, w: World, **changes: object) -> Referral:
    draft = service.create_draft(db, by=w.village_doctor, data=up_input(w, **changes))
    return service.send(db, by=w.village_doctor, referral_id=draft.id)


def move_due_into_past(db: Session, referral: Referral, minutes: int = 1) -> None:
    """Time travel for deadlines: the referral and its pending escalation timers (not its expiry) fall due now."""
    from sqlalchemy import update

    from healthrelay.core.timers import Timer

    past = utcnow() - timedelta(minutes=minutes)
    referral.response_due_at = past
    db.execute(update(Timer).where(Timer.dedupe_key.like(f"referral:{referral.id}:escalate:%"),
                                   Timer.fired_at.is_(None)).values(due_at=past))
    db.commit()
