"""A small tele-imaging alliance: the county hospital's imaging centre (影像诊断中心) with a department head,
a senior (主治) and a trainee (住院) reader, a township centre whose doctor asks for reads, a hospital outside
the alliance, and requests in every useful state. H4's and H5's tests share these fixtures."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.accounts.service import create_user
from healthrelay.core.db import utcnow
from healthrelay.core.timers import Timer
from healthrelay.directory.models import (
    Alliance,
    AllianceKind,
    AllianceMembership,
    Department,
    MembershipRole,
    Organisation,
    OrgKind,
    OrgLevel,
    Post,
    TitleGrade,
)
from healthrelay.patients.models import Patient
from healthrelay.teleconsult import service
from healthrelay.teleconsult.models import ConsultKind, ConsultRequest, Priority, ReadingCentre
from tests import factories as f


@dataclass
class TeleWorld:
    county: Organisation  # 县人民医院, lead of the alliance, runs the imaging centre
    imaging_dept: Department  # 影像科, the centre's department
    centre: ReadingCentre
    ecg_centre: ReadingCentre  # a second centre of the county (ECG), no department
    town: Organisation  # 东山镇卫生院, the inviting side
    town_b: Organisation  # another member township
    outsider: Organisation  # a hospital outside the alliance
    head: User  # 影像科主任 (chief), reader and department head
    senior: User  # 主治医师 reader
    trainee: User  # 住院医师 reader
    county_doctor: User  # county clinician outside the imaging department (not a reader)
    county_admin: User  # the county hospital's 医务科 (org admin)
    requester: User  # the township doctor who asks
    town_colleague: User  # another clinician at the township
    town_b_doctor: User
    outsider_doctor: User
    patient: Patient  # registered at the township


def staff(db: Session, *, organisation: Organisation, username: str, display_name: str,
          grade: TitleGrade = TitleGrade.ATTENDING, department: Department | None = None,
          role: Role = Role.REMOTE_READER) -> User:
    """A staff account acting through a post (in `department` when given) with a practitioner of `grade`."""
    prac = f.practitioner(db, name=display_name, grade=grade)
    post = Post(practitioner_id=prac.id, organisation_id=organisation.id,
                department_id=department.id if department else None, position=display_name)
    db.add(post)
    db.flush()
    return create_user(db, username=username, password=f.PASSWORD, display_name=display_name, role=role,
                       organisation_id=organisation.id, practitioner_id=prac.id, post_id=post.id)


def build_world(db: Session) -> TeleWorld:
    county = f.organisation(db, name="测试县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL)
    town = f.organisation(db, name="东山镇卫生院")
    town_b = f.organisation(db, name="西河镇卫生院")
    outsider = f.organisation(db, name="邻县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL)
    alliance = Alliance(code="YGT-TC", name="测试县医共体", kind=AllianceKind.COUNTY_COMMUNITY)
    db.add(alliance)
    db.flush()
    for org, role in ((county, MembershipRole.LEAD), (town, MembershipRole.MEMBER), (town_b, MembershipRole.MEMBER)):
        db.add(AllianceMembership(alliance_id=alliance.id, organisation_id=org.id, role=role))
    dept = Department(organisation_id=county.id, code="YXK", name="影像科")
    db.add(dept)
    db.flush()
    head = staff(db, organisation=county, username="yx_head", display_name="赵主任", grade=TitleGrade.CHIEF,
                 department=dept)
    dept.head_practitioner_id = head.practitioner_id
    centre = ReadingCentre(code="YX-CENTRE", name="县域影像诊断中心", kind=ConsultKind.IMAGING,
                           organisation_id=county.id, department_id=dept.id)
    ecg_centre = ReadingCentre(code="XD-CENTRE", name="县域心电诊断中心", kind=ConsultKind.ECG,
                               organisation_id=county.id)
    db.add_all([centre, ecg_centre])
    db.flush()
    world = TeleWorld(
        county=county, imaging_dept=dept, centre=centre, ecg_centre=ecg_centre, town=town, town_b=town_b,
        outsider=outsider, head=head,
        senior=staff(db, organisation=county, username="yx_senior", display_name="钱医师", department=dept),
        trainee=staff(db, organisation=county, username="yx_trainee", display_name="孙医师",
                      grade=TitleGrade.RESIDENT, department=dept),
        county_doctor=staff(db, organisation=county, username="county_doc", display_name="周医师",
                            role=Role.CLINICIAN),
        county_admin=staff(db, organisation=county, username="ywk_admin", display_name="医务科吴", role=Role.ORG_ADMIN,
                           grade=TitleGrade.STAFF),
        requester=staff(db, organisation=town, username="town_doc", display_name="郑医生", role=Role.CLINICIAN,
                        grade=TitleGrade.RESIDENT),
        town_colleague=staff(db, organisation=town, username="town_doc2", display_name="王医生", role=Role.CLINICIAN),
        town_b_doctor=staff(db, organisation=town_b, username="town_b_doc", display_name="冯医生",
                            role=Role.CLINICIAN),
        outsider_doctor=staff(db, organisation=outsider, username="outsider_doc", display_name="陈医生",
                              role=Role.CLINICIAN),
        patient=f.patient(db, name="王秀英", registered_at=town),
    )
    db.commit()
    return world


@pytest.fixture
def tele(db: Session) -> TeleWorld:
    return build_world(db)


def request_input(w: TeleWorld, **changes: object) -> service.RequestInput:
    values: dict[str, object] = dict(
        patient_id=w.patient.id, centre_id=w.centre.id, kind=ConsultKind.IMAGING, priority=Priority.URGENT,
        clinical_question="胸部 CT：右上肺结节性质？", case_summary="咳嗽两周，吸烟 30 年", consent_kind="written")
    values.update(changes)
    return service.RequestInput(**values)  # type: ignore[arg-type]


def make_request(db: Session, w: TeleWorld, *, by: User | None = None, **changes: object) -> ConsultRequest:
    """A request from the township doctor to the imaging centre (urgent unless told otherwise), committed."""
    request = service.create_request(db, by=by or w.requester, data=request_input(w, **changes))
    db.commit()
    return request


@dataclass
class Requests:
    requested: ConsultRequest  # waiting for the centre
    accepted: ConsultRequest  # accepted, nobody holds it
    claimed_senior: ConsultRequest  # on the senior's claim
    claimed_trainee: ConsultRequest  # on the trainee's claim
    emergency: ConsultRequest  # an emergency, still requested
    declined: ConsultRequest
    cancelled: ConsultRequest


@pytest.fixture
def requests(db: Session, tele: TeleWorld) -> Requests:
    w = tele
    requested = make_request(db, w, priority=Priority.ROUTINE)
    accepted = make_request(db, w)
    service.accept(db, by=w.head, request_id=accepted.id)
    claimed_senior = make_request(db, w)
    service.claim(db, by=w.senior, request_id=claimed_senior.id)
    claimed_trainee = make_request(db, w, priority=Priority.ROUTINE)
    service.claim(db, by=w.trainee, request_id=claimed_trainee.id)
    emergency = make_request(db, w, priority=Priority.EMERGENCY)
    declined = make_request(db, w)
    service.decline(db, by=w.senior, request_id=declined.id, reason="图像不全，请补传 / images incomplete")
    cancelled = make_request(db, w)
    service.cancel(db, by=w.requester, request_id=cancelled.id, reason="患者已转上级医院 / patient transferred")
    db.commit()
    return Requests(requested=requested, accepted=accepted, claimed_senior=claimed_senior,
                    claimed_trainee=claimed_trainee, emergency=emergency, declined=declined, cancelled=cancelled)


def move_due_into_past(db: Session, request: ConsultRequest, minutes: int = 1) -> None:
    """Time travel for deadlines: the request was made as long ago as its deadline allows (plus `minutes`), so
    its report deadline and its pending escalation timers fall due now."""
    db.refresh(request)
    past = utcnow() - timedelta(minutes=minutes)
    allowed = request.report_due_at - request.created_at
    db.execute(update(ConsultRequest).where(ConsultRequest.id == request.id)
               .values(report_due_at=past, created_at=past - allowed))
    db.execute(update(Timer).where(Timer.dedupe_key.like(f"consult:{request.id}:escalate:%"),
                                   Timer.fired_at.is_(None)).values(due_at=past))
    db.commit()
    db.refresh(request)
