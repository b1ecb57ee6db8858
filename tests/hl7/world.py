"""A small alliance for the HL7 transport tests: a county hospital, a township whose HIS/LIS is a registered
sender, a second member with its own sender, and their admins. Shared by tests/hl7 and tests/interop."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import date

from sqlalchemy import func, select
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
from healthrelay.hl7.models import Hl7DeadLetter, Hl7Message, Hl7Sender
from healthrelay.patients.identity import make_resident_id
from tests import factories as f
from tests.hl7 import messages as m

FACILITY = m.DEFAULT_FACILITY
OTHER_FACILITY = "QX_XIHE_WSY"
_people = itertools.count(1)


@dataclass
class Hl7World:
    county: Organisation
    town: Organisation
    other: Organisation
    sender: Hl7Sender  # the township's HIS/LIS (MSH-4 = FACILITY)
    other_sender: Hl7Sender
    interface_user: User  # whom the audit names for what the township's system writes
    alliance_admin: User
    town_admin: User
    other_admin: User


def build_world(db: Session) -> Hl7World:
    county = f.organisation(db, name="测试县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL)
    town = f.organisation(db, name="石门镇卫生院")
    other = f.organisation(db, name="西河镇卫生院")
    alliance = Alliance(code="YGT-HL7", name="测试县医共体", kind=AllianceKind.COUNTY_COMMUNITY)
    db.add(alliance)
    db.flush()
    for org, role in ((county, MembershipRole.LEAD), (town, MembershipRole.MEMBER), (other, MembershipRole.MEMBER)):
        db.add(AllianceMembership(alliance_id=alliance.id, organisation_id=org.id, role=role))
    interface_user = f.user(db, role=Role.CLINICIAN, organisation=town, username="shimen_his",
                            with_practitioner=False)
    sender = Hl7Sender(facility=FACILITY, organisation_id=town.id, interface_user_id=interface_user.id,
                       note="石门镇卫生院 HIS/LIS")
    other_interface = f.user(db, role=Role.CLINICIAN, organisation=other, username="xihe_lis", with_practitioner=False)
    other_sender = Hl7Sender(facility=OTHER_FACILITY, application="LIS", organisation_id=other.id,
                             interface_user_id=other_interface.id)
    db.add_all([sender, other_sender])
    db.flush()
    world = Hl7World(
        county=county, town=town, other=other, sender=sender, other_sender=other_sender,
        interface_user=interface_user,
        alliance_admin=f.user(db, role=Role.ALLIANCE_ADMIN, organisation=county, username="ygt_admin"),
        town_admin=f.user(db, role=Role.ORG_ADMIN, organisation=town, username="shimen_admin"),
        other_admin=f.user(db, role=Role.ORG_ADMIN, organisation=other, username="xihe_admin"),
    )
    db.commit()
    return world


def person(name: str = "王秀英", *, sex: str = "F", birth: date = date(1956, 3, 8)) -> m.Person:
    """A resident with a valid ID of their own (each call a new one) and the sender's record number."""
    n = next(_people)
    return m.Person(name=name, sex=sex, birth_date=birth,
                    resident_id=make_resident_id("422822", birth, n % 100, sex), record_number=f"MZ{n:05d}")


def count(db: Session, model: type, **where: object) -> int:
    query = select(func.count()).select_from(model)
    for key, value in where.items():
        query = query.where(getattr(model, key) == value)
    return int(db.scalar(query) or 0)


def messages_with(db: Session, control_id: str) -> int:
    return count(db, Hl7Message, control_id=control_id)


def dead_letters_with(db: Session, control_id: str) -> int:
    return count(db, Hl7DeadLetter, control_id=control_id)
