"""Remote consultation requests (远程会诊): the request, its state machine, routing and the reading worklist.

Every state change goes through `record_transition`, a conditional UPDATE on the state the caller saw, so
two readers claiming at once cannot both win. Reports and critical results (reports.py, critical.py) use the
same function and the reader helpers at the end of this module.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Select, case, exists, select, update
from sqlalchemy.orm import Session, aliased

from healthrelay.access import service as access
from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.core import timers
from healthrelay.core.db import utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NotFound, field_error
from healthrelay.directory.models import (
    AllianceMembership,
    Department,
    Organisation,
    Post,
    Practitioner,
    Specialty,
    TitleGrade,
)
from healthrelay.imaging.models import ImagingInstance, ImagingSeries, ImagingStudy
from healthrelay.teleconsult import announce
from healthrelay.teleconsult.models import (
    ConsultDeadline,
    ConsultEscalation,
    ConsultKind,
    ConsultRequest,
    ConsultState,
    ConsultTransition,
    Priority,
    ReadingCentre,
    RoutingRule,
)

_SHANGHAI = ZoneInfo("Asia/Shanghai")
DEFAULT_REPORT_MINUTES = {Priority.EMERGENCY: 30, Priority.URGENT: 120, Priority.ROUTINE: 1440}
# Written consent (or a guardian's) for every request made by a person; an emergency may go first and
# record why consent could not wait. "on_file" is only for studies routed in by the receiver.
CONSENT_KINDS = ("written", "guardian", "emergency_waiver")
ROUTED_CONSENT = "on_file"
CARE_RELATIONSHIP_DAYS_AFTER = 30
LINK_WINDOW = timedelta(days=3)
ESCALATE_KIND = "teleconsult.escalate"
MIN_SECOND_ESCALATION = timedelta(minutes=15)
WORKLIST_LIMIT = 200

OPEN_STATES = (ConsultState.REQUESTED, ConsultState.ACCEPTED, ConsultState.PRELIMINARY)
CLOSED_STATES = (ConsultState.REPORTED, ConsultState.DECLINED, ConsultState.CANCELLED)
SENIOR_GRADES = frozenset({TitleGrade.CHIEF, TitleGrade.ASSOCIATE_CHIEF, TitleGrade.ATTENDING})
TRAINEE_GRADES = frozenset({TitleGrade.RESIDENT, TitleGrade.ASSISTANT})
READER_ROLES = (Role.REMOTE_READER, Role.CLINICIAN)
PRIORITY_RANK = {Priority.EMERGENCY: 0, Priority.URGENT: 1, Priority.ROUTINE: 2}

# The whole state machine: (from, to) pairs that may happen. Reports (H5) move accepted → preliminary →
# reported; a senior may send a preliminary report back (preliminary → accepted).
TRANSITIONS: frozenset[tuple[ConsultState, ConsultState]] = frozenset({
    (ConsultState.REQUESTED, ConsultState.ACCEPTED),
    (ConsultState.REQUESTED, ConsultState.DECLINED),
    (ConsultState.REQUESTED, ConsultState.CANCELLED),
    (ConsultState.REQUESTED, ConsultState.PRELIMINARY),
    (ConsultState.REQUESTED, ConsultState.REPORTED),
    (ConsultState.ACCEPTED, ConsultState.DECLINED),
    (ConsultState.ACCEPTED, ConsultState.CANCELLED),
    (ConsultState.ACCEPTED, ConsultState.PRELIMINARY),
    (ConsultState.ACCEPTED, ConsultState.REPORTED),
    (ConsultState.PRELIMINARY, ConsultState.REPORTED),
    (ConsultState.PRELIMINARY, ConsultState.ACCEPTED),
})

STATE_ZH = {ConsultState.REQUESTED: "待接收", ConsultState.ACCEPTED: "已接收", ConsultState.DECLINED: "已拒绝",
            ConsultState.PRELIMINARY: "待审核", ConsultState.REPORTED: "已报告", ConsultState.CANCELLED: "已撤销"}


ACTION_ZH = {"accept": "接收", "decline": "拒绝", "cancel": "撤销", "claim": "认领", "release": "退回",
             "reassign": "改派", "link_study": "关联影像", "sign": "签发报告", "sign_preliminary": "签署初步报告",
             "cosign": "审核签发", "addendum": "补充报告"}


def _action_text(action: str) -> str:
    return ACTION_ZH.get(action, action)


def _state_text(state: ConsultState | str) -> str:
    return f"“{STATE_ZH.get(ConsultState(state), state)}”（{state}）"


def _actor(user: User | None, client_address: str = "") -> audit.Actor:
    return access.actor_of(user, client_address) if user is not None else audit.Actor(username="system")


# --- data the alliance tunes ---------------------------------------------------------------------

def report_minutes(db: Session, priority: Priority | str) -> int:
    row = db.get(ConsultDeadline, str(priority))
    return row.report_minutes if row is not None else DEFAULT_REPORT_MINUTES[Priority(priority)]


# --- reader helpers (also used by reports.py and critical.py) ------------------------------------

def _practitioner(db: Session, user: User) -> Practitioner | None:
    return db.get(Practitioner, user.practitioner_id) if user.practitioner_id is not None else None


def is_trainee(db: Session, *, user: User) -> bool:
    """Residents and assistant doctors read under supervision: their reports wait for a senior."""
    prac = _practitioner(db, user)
    return prac is not None and prac.title_grade in TRAINEE_GRADES


def is_senior(db: Session, *, user: User) -> bool:
    """Attending (主治) and above may sign alone and co-sign a trainee's report."""
    prac = _practitioner(db, user)
    return prac is not None and prac.title_grade in SENIOR_GRADES


def _centre_of(db: Session, request: ConsultRequest) -> ReadingCentre:
    centre = db.get(ReadingCentre, request.centre_id)
    assert centre is not None  # a foreign key
    return centre


def reads_for_centre(db: Session, *, user: User, centre: ReadingCentre) -> bool:
    """A reader works at the centre's organisation, with a post in the centre's department when it has one."""
    if not user.is_active or user.role not in READER_ROLES or user.organisation_id != centre.organisation_id:
        return False
    if user.practitioner_id is None:
        return False
    if centre.department_id is None:
        return True
    return bool(db.execute(select(exists().where(
        Post.practitioner_id == user.practitioner_id, Post.organisation_id == centre.organisation_id,
        Post.department_id == centre.department_id))).scalar())


def is_centre_reader(db: Session, *, user: User, request: ConsultRequest) -> bool:
    return reads_for_centre(db, user=user, centre=_centre_of(db, request))


def centre_head_user_ids(db: Session, centre: ReadingCentre) -> list[int]:
    """The accounts of the head of the centre's department (科主任)."""
    dept = db.get(Department, centre.department_id) if centre.department_id else None
    if dept is None or dept.head_practitioner_id is None:
        return []
    return sorted(db.execute(select(User.id).where(User.practitioner_id == dept.head_practitioner_id,
                                                   User.is_active.is_(True))).scalars())


def centre_admin_user_ids(db: Session, centre: ReadingCentre) -> list[int]:
    """The 医务科 of the centre's organisation: its organisation administrators."""
    return sorted(db.execute(select(User.id).where(User.organisation_id == centre.organisation_id,
                                                   User.role == Role.ORG_ADMIN, User.is_active.is_(True))).scalars())


def manages_centre(db: Session, *, user: User, centre: ReadingCentre) -> bool:
    """The department head and the centre organisation's admins assign work to readers."""
    if user.role == Role.ORG_ADMIN and user.organisation_id == centre.organisation_id:
        return True
    return user.organisation_id == centre.organisation_id and user.id in centre_head_user_ids(db, centre)


def holds_claim(request: ConsultRequest, user: User) -> bool:
    return request.claimed_by_user_id is not None and request.claimed_by_user_id == user.id


def require_claim_holder(db: Session, *, user: User, request: ConsultRequest) -> None:
    """Only the reader holding the claim writes the report: 403 naming who holds it otherwise."""
    if not is_centre_reader(db, user=user, request=request):
        raise AccessDenied("只有该诊断中心的阅片医师可以书写报告 / only the centre's readers write reports",
                           code="not_a_reader")
    if request.claimed_by_user_id is None:
        raise AccessDenied("请先认领该请求再书写报告 / claim the request before writing its report",
                           code="not_claimed")
    if request.claimed_by_user_id != user.id:
        holder = db.get(User, request.claimed_by_user_id)
        name = holder.display_name if holder else f"#{request.claimed_by_user_id}"
        raise AccessDenied(f"该请求已由 {name} 认领，只有认领人可以书写报告 / claimed by {name}: only the "
                           "reader holding the claim may report", code="claimed_by_other")


def centres_read_by(db: Session, user: User) -> list[ReadingCentre]:
    """The active centres the user reads for or manages (their worklists)."""
    if user.organisation_id is None:
        return []
    rows = db.execute(select(ReadingCentre).where(ReadingCentre.organisation_id == user.organisation_id,
                                                  ReadingCentre.is_active.is_(True))
                      .order_by(ReadingCentre.id)).scalars()
    return [c for c in rows if reads_for_centre(db, user=user, centre=c) or manages_centre(db, user=user, centre=c)]


def readers_of(db: Session, centre: ReadingCentre, *, limit: int = 200) -> list[User]:
    """Everyone who may claim the centre's work, for reassignment and notifications."""
    q = select(User).where(User.organisation_id == centre.organisation_id, User.is_active.is_(True),
                           User.role.in_(READER_ROLES), User.practitioner_id.is_not(None))
    if centre.department_id is not None:
        q = q.where(exists().where(Post.practitioner_id == User.practitioner_id,
                                   Post.organisation_id == centre.organisation_id,
                                   Post.department_id == centre.department_id))
    return list(db.execute(q.order_by(User.id).limit(limit)).scalars())


# --- the one way to change a request --------------------------------------------------------------

def record_transition(db: Session, request: ConsultRequest, *, action: str, to_state: ConsultState | None,
                      by: User | None, reason: str = "", detail: dict[str, Any] | None = None,
                      values: dict[str, Any] | None = None, where: Sequence[ColumnElement[bool]] = (),
                      client_address: str = "") -> ConsultTransition:
    """Move `request` (and/or set `values`) only if it is still in the state the caller saw; record the move.

    The change is one conditional UPDATE, so of two readers claiming at once exactly one matches the row
    (on PostgreSQL the second waits for the first, then finds the row changed) and the other gets 409.
    `where` adds conditions of the caller's own (e.g. "nobody holds the claim").
    """
    db.flush()
    current = ConsultState(request.state)
    target = current if to_state is None else ConsultState(to_state)
    if target != current and (current, target) not in TRANSITIONS:
        raise Conflict(f"请求处于{_state_text(current)}状态，不能{_action_text(action)} / the request is {current}; "
                       f"cannot {action} (to {target})", code="invalid_transition",
                       field_errors=[field_error("state", f"{current} -> {target}")])
    now = utcnow()
    changes: dict[str, Any] = {"updated_at": now, **(values or {})}
    if target != current:
        changes["state"] = target
        if target in CLOSED_STATES:
            changes.setdefault("closed_at", now)
        if target == ConsultState.REPORTED:
            changes.setdefault("reported_at", now)
    result = db.execute(update(ConsultRequest)
                        .where(ConsultRequest.id == request.id, ConsultRequest.state == current, *where)
                        .values(**changes).execution_options(synchronize_session=False))
    if result.rowcount != 1:
        db.refresh(request)
        holder = ""
        if request.claimed_by_user_id is not None:
            other = db.get(User, request.claimed_by_user_id)
            holder = f"，已由 {other.display_name if other else request.claimed_by_user_id} 认领"
        raise Conflict(f"请求已被他人处理（现为{_state_text(request.state)}{holder}），不能{_action_text(action)} / "
                       f"someone else moved it first (now {request.state}); cannot {action}", code="invalid_transition",
                       field_errors=[field_error("state", f"{request.state} -> {target}")])
    db.refresh(request)
    row = ConsultTransition(request_id=request.id, action=action, from_state=str(current), to_state=str(target),
                            by_user_id=by.id if by else None, at=now, reason=reason, detail=detail or {})
    db.add(row)
    if target in CLOSED_STATES and current not in CLOSED_STATES:
        _cancel_escalations(db, request)
    audit.record(db, actor=_actor(by, client_address), action=f"teleconsult.{action}", patient_id=request.patient_id,
                 resource=f"consult:{request.id}", detail={"from": str(current), "to": str(target), **(detail or {})})
    db.flush()
    db.expire(request, ["transitions"])
    announce.changed(db, request=request, action=action, from_state=current, by=by, reason=reason,
                     detail=detail)
    return row


def _load(db: Session, request_id: int) -> ConsultRequest:
    request = db.get(ConsultRequest, request_id)
    if request is None:
        raise NotFound(f"没有编号为 {request_id} 的会诊请求 / no consultation request {request_id}")
    return request


def _new_number(request: ConsultRequest) -> str:
    day = (request.created_at or utcnow()).astimezone(_SHANGHAI).strftime("%Y%m%d")
    return f"YC{day}-{request.id:04d}"


# --- escalation clocks ----------------------------------------------------------------------------

def escalation_key(request: ConsultRequest | int, level: int) -> str:
    rid = request if isinstance(request, int) else request.id
    return f"consult:{rid}:escalate:{level}"


def second_escalation_at(request: ConsultRequest) -> datetime:
    """Level 2 comes half the deadline after the deadline again, and never sooner than 15 minutes after it."""
    allowed = request.report_due_at - request.created_at
    return request.report_due_at + max(allowed / 2, MIN_SECOND_ESCALATION)


def schedule_escalation(db: Session, request: ConsultRequest, *, level: int, due_at: datetime) -> None:
    timers.schedule(db, kind=ESCALATE_KIND, due_at=due_at, payload={"request_id": request.id, "level": level},
                    dedupe_key=escalation_key(request, level))


def _cancel_escalations(db: Session, request: ConsultRequest) -> None:
    for level in (1, 2):
        timers.cancel(db, dedupe_key=escalation_key(request, level))


def start_clock(db: Session, request: ConsultRequest) -> None:
    schedule_escalation(db, request, level=1, due_at=request.report_due_at)


# --- creating requests ----------------------------------------------------------------------------

@dataclass
class RequestInput:
    """What the inviting doctor fills in (远程医疗服务管理规范: reason, purpose, summary, specialty, grade, consent)."""

    patient_id: int | None
    centre_id: int | None
    kind: ConsultKind | str = ConsultKind.IMAGING
    priority: Priority | str = Priority.ROUTINE
    clinical_question: str = ""
    case_summary: str = ""
    wanted_specialty_id: int | None = None
    wanted_grade: str = ""
    consent_kind: str = ""
    # Why consent could not be taken first: required with an emergency waiver.
    consent_note: str = ""


def _shares_alliance(db: Session, org_a: int, org_b: int) -> bool:
    other = aliased(AllianceMembership)
    return bool(db.execute(select(exists().where(
        AllianceMembership.organisation_id == org_a, other.organisation_id == org_b,
        other.alliance_id == AllianceMembership.alliance_id))).scalar())


def validate(db: Session, *, by: User, data: RequestInput) -> tuple[ReadingCentre, ConsultKind, Priority]:
    """Name every problem at once, before anything is written."""
    if by.organisation_id is None or by.role not in (Role.CLINICIAN, Role.REMOTE_READER, Role.ORG_ADMIN):
        raise AccessDenied("只有机构的医务人员可以发起会诊 / only an organisation's clinical staff request "
                           "consultations")
    errors: list[dict[str, Any]] = []
    kind: ConsultKind = ConsultKind.IMAGING
    priority: Priority = Priority.ROUTINE
    try:
        kind = ConsultKind(data.kind)
    except ValueError:
        errors.append(field_error("kind", "未知的会诊类型 / unknown kind (imaging, ecg, pathology, specialist, mdt)"))
    try:
        priority = Priority(data.priority)
    except ValueError:
        errors.append(field_error("priority", "未知的紧急程度 / unknown priority (emergency, urgent, routine)"))
    centre = db.get(ReadingCentre, data.centre_id) if data.centre_id is not None else None
    if data.centre_id is None:
        errors.append(field_error("centre_id", "请选择受邀的诊断中心 / choose the invited centre"))
    elif centre is None or not centre.is_active:
        errors.append(field_error("centre_id", f"没有编号为 {data.centre_id} 的诊断中心 / unknown centre"))
    elif centre.organisation_id == by.organisation_id:
        errors.append(field_error("centre_id", "不能邀请本机构的中心 / cannot invite your own organisation's centre"))
    elif not _shares_alliance(db, by.organisation_id, centre.organisation_id):
        errors.append(field_error("centre_id", "该中心不在本机构所属的医联体内 / the centre is outside your alliances"))
    elif "kind" not in {e["field"] for e in errors} and centre.kind != kind:
        errors.append(field_error("kind", f"该中心只做“{centre.kind}”类诊断 / that centre reads {centre.kind} only"))
    if data.patient_id is None:
        errors.append(field_error("patient_id", "请先选择患者 / choose the patient first"))
    if not data.clinical_question.strip():
        errors.append(field_error("clinical_question", "请填写会诊目的与临床问题 / state the clinical question"))
    if data.wanted_specialty_id is not None and db.get(Specialty, data.wanted_specialty_id) is None:
        errors.append(field_error("wanted_specialty_id", "未知专科 / unknown specialty"))
    if data.wanted_grade and data.wanted_grade not in {g.value for g in TitleGrade}:
        errors.append(field_error("wanted_grade", "未知职称 / unknown title grade"))
    if data.consent_kind not in CONSENT_KINDS:
        errors.append(field_error("consent_kind", "须记录患者书面知情同意（或监护人同意）/ the patient's written "
                                  "consent (or a guardian's) is required"))
    elif data.consent_kind == "emergency_waiver":
        if priority != Priority.EMERGENCY:
            errors.append(field_error("consent_kind", "仅急诊可先行会诊后补同意 / only an emergency may go ahead "
                                      "without consent"))
        elif not data.consent_note.strip():
            errors.append(field_error("consent_note", "请说明未能先取得同意的原因 / say why consent could not wait"))
    if errors:
        raise InvalidInput("会诊请求有误 / the request has errors: " + "; ".join(e["field"] for e in errors),
                           field_errors=errors)
    assert centre is not None
    return centre, kind, priority


def department_of(db: Session, user: User) -> int | None:
    """The department of the user's post at their own organisation, recorded as the inviting department."""
    post = db.get(Post, user.post_id) if user.post_id is not None else None
    return post.department_id if post is not None and post.organisation_id == user.organisation_id else None


def insert_request(db: Session, *, centre: ReadingCentre, kind: ConsultKind, priority: Priority, inviting_org_id: int,
                   by: User | None, created_via: str, **fields: Any) -> ConsultRequest:
    """Write a new request with its number and report deadline; callers record its first transition."""
    now = utcnow()
    request = ConsultRequest(
        number=f"tmp-{uuid.uuid4().hex[:30]}", kind=kind, priority=priority, state=ConsultState.REQUESTED,
        inviting_organisation_id=inviting_org_id, requested_by_user_id=by.id if by else None,
        centre_id=centre.id, invited_organisation_id=centre.organisation_id, created_via=created_via,
        report_due_at=now + timedelta(minutes=report_minutes(db, priority)), created_at=now, updated_at=now,
        **fields)
    db.add(request)
    db.flush()
    request.number = _new_number(request)
    db.flush()
    return request


def create_request(db: Session, *, by: User, data: RequestInput, created_via: str = "web",
                   client_address: str = "") -> ConsultRequest:
    """A request from the inviting doctor (web page or API): consent recorded, deadline set, centre told."""
    centre, kind, priority = validate(db, by=by, data=data)
    assert data.patient_id is not None and by.organisation_id is not None
    patient = access.resolve_patient(db, data.patient_id)
    access.require_patient_access(db, user=by, patient_id=patient.id, action="teleconsult.create",
                                  client_address=client_address)
    request = insert_request(
        db, centre=centre, kind=kind, priority=priority, inviting_org_id=by.organisation_id, by=by,
        created_via=created_via, patient_id=patient.id, inviting_department_id=department_of(db, by),
        wanted_specialty_id=data.wanted_specialty_id, wanted_grade=data.wanted_grade,
        clinical_question=data.clinical_question.strip(), case_summary=data.case_summary.strip(),
        consent_kind=data.consent_kind, consent_recorded_by_user_id=by.id, consent_at=utcnow())
    db.add(ConsultTransition(request_id=request.id, action="create", from_state="", to_state=str(request.state),
                             by_user_id=by.id, at=request.created_at, reason=data.consent_note.strip(),
                             detail={"created_via": created_via, "consent_kind": data.consent_kind}))
    audit.record(db, actor=_actor(by, client_address), action="teleconsult.create", patient_id=patient.id,
                 resource=f"consult:{request.id}", detail={"centre_id": centre.id, "priority": str(priority),
                                                           "consent_kind": data.consent_kind})
    start_clock(db, request)
    db.flush()
    announce.created(db, request=request)
    return request


# --- routing studies that arrive ------------------------------------------------------------------

def _open_imaging_requests(organisation_id: int) -> Select[tuple[ConsultRequest]]:
    return select(ConsultRequest).where(ConsultRequest.inviting_organisation_id == organisation_id,
                                        ConsultRequest.kind == ConsultKind.IMAGING,
                                        ConsultRequest.state.in_(OPEN_STATES))


def matching_rule(db: Session, *, modality_type: str, organisation_id: int) -> RoutingRule | None:
    specificity = (case((RoutingRule.modality_type != "", 2), else_=0)
                   + case((RoutingRule.from_organisation_id.is_not(None), 1), else_=0))
    return db.execute(
        select(RoutingRule).join(ReadingCentre, ReadingCentre.id == RoutingRule.centre_id)
        .where(RoutingRule.is_active.is_(True), ReadingCentre.is_active.is_(True),
               RoutingRule.modality_type.in_(["", modality_type.upper()]),
               RoutingRule.from_organisation_id.is_(None) | (RoutingRule.from_organisation_id == organisation_id))
        .order_by(specificity.desc(), RoutingRule.position, RoutingRule.id).limit(1)).scalar()


def _received_via(db: Session, study: ImagingStudy) -> str:
    via = db.execute(select(ImagingInstance.received_via).where(ImagingInstance.study_id == study.id)
                     .limit(1)).scalar() if study.id is not None else None
    if via in ("dimse", "stow"):
        return str(via)
    return "dimse" if study.modality_id is not None else "stow"


def link_study(db: Session, *, request: ConsultRequest, study: ImagingStudy, by: User | None,
               how: str = "manual") -> None:
    """Attach a study to a request (its images are what the centre reads); recorded as a move."""
    study.consult_request_id = request.id
    values: dict[str, Any] = {}
    if request.patient_id is None and study.patient_id is not None:
        values["patient_id"] = study.patient_id
    record_transition(db, request, action="link_study", to_state=None, by=by, values=values,
                      detail={"study_instance_uid": study.study_instance_uid, "how": how})


def route_study(db: Session, *, study: ImagingStudy, modality_type: str, organisation_id: int | None,
                requested_by: User | None = None) -> ConsultRequest | None:
    """Find the request a new study belongs to, or create one by the routing rules; None leaves it archived only.

    1. an open imaging request of the same organisation whose number is the study's accession number;
    2. else the newest open imaging request (last 3 days) for the same patient from that organisation
       that has no study yet;
    3. else the most specific active routing rule (modality + organisation → centre, priority).
    """
    if organisation_id is None:
        return None
    db.flush()
    accession = (study.accession_number or "").strip()
    found: ConsultRequest | None = None
    if accession:
        found = db.execute(_open_imaging_requests(organisation_id)
                           .where(ConsultRequest.number == accession).limit(1)).scalar()
        if found is not None:
            link_study(db, request=found, study=study, by=requested_by, how="accession")
            return found
    if study.patient_id is not None:
        has_study = exists().where(ImagingStudy.consult_request_id == ConsultRequest.id,
                                   ImagingStudy.id != study.id)
        found = db.execute(_open_imaging_requests(organisation_id)
                           .where(ConsultRequest.patient_id == study.patient_id,
                                  ConsultRequest.created_at >= utcnow() - LINK_WINDOW, ~has_study)
                           .order_by(ConsultRequest.created_at.desc(), ConsultRequest.id.desc()).limit(1)).scalar()
        if found is not None:
            link_study(db, request=found, study=study, by=requested_by, how="patient")
            return found
    rule = matching_rule(db, modality_type=modality_type or "", organisation_id=organisation_id)
    if rule is None:
        return None
    centre = db.get(ReadingCentre, rule.centre_id)
    assert centre is not None
    via = _received_via(db, study)
    question = " ".join(p for p in (modality_type, study.description) if p).strip()
    request = insert_request(
        db, centre=centre, kind=centre.kind, priority=rule.priority, inviting_org_id=organisation_id,
        by=requested_by, created_via=via, patient_id=study.patient_id,
        clinical_question=question or "影像诊断 / imaging read",
        case_summary=f"申请医生：{study.referring_physician}" if study.referring_physician else "",
        consent_kind=ROUTED_CONSENT, consent_at=utcnow(),
        consent_recorded_by_user_id=requested_by.id if requested_by else None)
    study.consult_request_id = request.id
    db.add(ConsultTransition(request_id=request.id, action="create", from_state="", to_state=str(request.state),
                             by_user_id=requested_by.id if requested_by else None, at=request.created_at,
                             reason="按路由规则自动创建 / created by a routing rule",
                             detail={"created_via": via, "rule_id": rule.id,
                                     "study_instance_uid": study.study_instance_uid}))
    audit.record(db, actor=_actor(requested_by), action="teleconsult.route", patient_id=study.patient_id,
                 resource=f"consult:{request.id}", detail={"rule_id": rule.id, "study_id": study.id})
    start_clock(db, request)
    db.flush()
    announce.created(db, request=request)
    return request


# --- the centre's answer and the requester's cancel -----------------------------------------------

def _require_centre_staff(db: Session, request: ConsultRequest, user: User) -> ReadingCentre:
    centre = _centre_of(db, request)
    if not (reads_for_centre(db, user=user, centre=centre) or manages_centre(db, user=user, centre=centre)):
        raise AccessDenied("只有受邀诊断中心的医师或管理员可以执行此操作 / only the invited centre's readers or "
                           "managers may do this")
    return centre


def _require_reason(reason: str, what: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput(f"请填写{what}理由 / a reason is required", field_errors=[field_error("reason", "required")])
    return reason


def _require_state(request: ConsultRequest, allowed: Iterable[ConsultState], action: str) -> None:
    if request.state not in tuple(allowed):
        raise Conflict(f"请求处于{_state_text(request.state)}状态，不能{_action_text(action)} / the request is "
                       f"{request.state}; "
                       f"cannot {action}", code="invalid_transition",
                       field_errors=[field_error("state", str(request.state))])


def accept(db: Session, *, by: User, request_id: int, client_address: str = "") -> ConsultRequest:
    request = _load(db, request_id)
    _require_centre_staff(db, request, by)
    _require_state(request, (ConsultState.REQUESTED,), "accept")
    record_transition(db, request, action="accept", to_state=ConsultState.ACCEPTED, by=by,
                      values={"accepted_at": utcnow(), "accepted_by_user_id": by.id}, client_address=client_address)
    return request


def decline(db: Session, *, by: User, request_id: int, reason: str, client_address: str = "") -> ConsultRequest:
    """The centre cannot read it (wrong images, outside its scope...): the requester hears why."""
    request = _load(db, request_id)
    _require_centre_staff(db, request, by)
    reason = _require_reason(reason, "拒绝")
    _require_state(request, (ConsultState.REQUESTED, ConsultState.ACCEPTED), "decline")
    record_transition(db, request, action="decline", to_state=ConsultState.DECLINED, by=by, reason=reason,
                      values={"decline_reason": reason, "claimed_by_user_id": None}, client_address=client_address)
    return request


def cancel(db: Session, *, by: User, request_id: int, reason: str, client_address: str = "") -> ConsultRequest:
    """The inviting side withdraws the request, any time before a report exists."""
    request = _load(db, request_id)
    if by.organisation_id != request.inviting_organisation_id:
        raise AccessDenied("只有邀请方机构的人员可以撤销 / only the inviting organisation may cancel")
    reason = _require_reason(reason, "撤销")
    _require_state(request, (ConsultState.REQUESTED, ConsultState.ACCEPTED), "cancel")
    record_transition(db, request, action="cancel", to_state=ConsultState.CANCELLED, by=by, reason=reason,
                      detail={"claimed_by_user_id": request.claimed_by_user_id}, client_address=client_address)
    return request


# --- claims ---------------------------------------------------------------------------------------

def _holder_name(db: Session, request: ConsultRequest) -> str:
    holder = db.get(User, request.claimed_by_user_id) if request.claimed_by_user_id else None
    return holder.display_name if holder else ""


def claim(db: Session, *, by: User, request_id: int, client_address: str = "") -> ConsultRequest:
    """Take a request from the pool (accepting it when still requested); first claim wins."""
    request = _load(db, request_id)
    if not is_centre_reader(db, user=by, request=request):
        raise AccessDenied("只有该诊断中心的阅片医师可以认领 / only the centre's readers may claim")
    _require_state(request, (ConsultState.REQUESTED, ConsultState.ACCEPTED), "claim")
    if holds_claim(request, by):
        return request
    if request.claimed_by_user_id is not None:
        name = _holder_name(db, request)
        raise Conflict(f"该请求已由 {name} 认领 / already claimed by {name}", code="already_claimed",
                       field_errors=[field_error("claimed_by_user_id", name)])
    now = utcnow()
    values: dict[str, Any] = {"claimed_by_user_id": by.id, "claimed_at": now}
    if request.state == ConsultState.REQUESTED:
        values |= {"accepted_at": now, "accepted_by_user_id": by.id}
    try:
        record_transition(db, request, action="claim", to_state=ConsultState.ACCEPTED, by=by, values=values,
                          where=[ConsultRequest.claimed_by_user_id.is_(None)], client_address=client_address)
    except Conflict:
        if request.claimed_by_user_id is not None and request.state == ConsultState.ACCEPTED:
            name = _holder_name(db, request)
            raise Conflict(f"该请求刚被 {name} 认领 / {name} claimed it first", code="already_claimed",
                           field_errors=[field_error("claimed_by_user_id", name)]) from None
        raise
    return request


def release(db: Session, *, by: User, request_id: int, reason: str, client_address: str = "") -> ConsultRequest:
    """Give a claimed request back to the pool, saying why (shift over, outside one's skill...)."""
    request = _load(db, request_id)
    centre = _centre_of(db, request)
    if not (holds_claim(request, by) or manages_centre(db, user=by, centre=centre)):
        raise AccessDenied("只有认领人或科主任可以退回 / only the reader holding the claim (or the head) may release")
    reason = _require_reason(reason, "退回")
    _require_state(request, (ConsultState.ACCEPTED,), "release")
    if request.claimed_by_user_id is None:
        raise Conflict("该请求尚未被认领 / nobody holds this request", code="not_claimed")
    record_transition(db, request, action="release", to_state=None, by=by, reason=reason,
                      values={"claimed_by_user_id": None, "claimed_at": None},
                      where=[ConsultRequest.claimed_by_user_id == request.claimed_by_user_id],
                      detail={"released_user_id": request.claimed_by_user_id}, client_address=client_address)
    return request


def reassign(db: Session, *, by: User, request_id: int, to_user_id: int, reason: str = "",
             client_address: str = "") -> ConsultRequest:
    """The department head or the centre organisation's admin gives the request to another reader."""
    request = _load(db, request_id)
    centre = _centre_of(db, request)
    if not manages_centre(db, user=by, centre=centre):
        raise AccessDenied("只有科主任或医务科可以改派 / only the department head or the medical-affairs office "
                           "may reassign")
    _require_state(request, (ConsultState.REQUESTED, ConsultState.ACCEPTED), "reassign")
    target = db.get(User, to_user_id)
    if target is None or not reads_for_centre(db, user=target, centre=centre):
        raise InvalidInput("改派对象须为该中心的阅片医师 / reassign to one of the centre's readers",
                           field_errors=[field_error("to_user_id", "not a reader of this centre")])
    if request.claimed_by_user_id == target.id:
        raise Conflict(f"该请求已由 {target.display_name} 认领 / {target.display_name} already holds it",
                       code="already_claimed", field_errors=[field_error("to_user_id", "already the holder")])
    now = utcnow()
    values: dict[str, Any] = {"claimed_by_user_id": target.id, "claimed_at": now}
    if request.state == ConsultState.REQUESTED:
        values |= {"accepted_at": now, "accepted_by_user_id": by.id}
    previous = request.claimed_by_user_id
    held = (ConsultRequest.claimed_by_user_id.is_(None) if previous is None
            else ConsultRequest.claimed_by_user_id == previous)
    record_transition(db, request, action="reassign", to_state=ConsultState.ACCEPTED, by=by, reason=reason.strip(),
                      values=values, where=[held], detail={"from_user_id": previous, "to_user_id": target.id},
                      client_address=client_address)
    return request


# --- reads ----------------------------------------------------------------------------------------

def is_party(user: User, request: ConsultRequest) -> bool:
    return user.organisation_id is not None and user.organisation_id in (
        request.inviting_organisation_id, request.invited_organisation_id)


def get_request_for(db: Session, *, request_id: int, user: User, client_address: str = "") -> ConsultRequest:
    """Load a request for one of its parties (inviting organisation, centre organisation), audited."""
    request = _load(db, request_id)
    if user.role == Role.HEALTH_BUREAU or user.role == Role.PATIENT or (
            not is_party(user, request) and user.role != Role.ALLIANCE_ADMIN):
        audit.record_now(actor=_actor(user, client_address), action="teleconsult.read", outcome="denied",
                         patient_id=request.patient_id, resource=f"consult:{request.id}", db=db)
        raise AccessDenied("只有会诊双方机构的人员可以查看 / only staff of the two parties may see this request")
    if request.patient_id is None:
        audit.record(db, actor=_actor(user, client_address), action="teleconsult.read",
                     resource=f"consult:{request.id}")
    elif user.role == Role.ORG_ADMIN and access.decide(db, user=user, patient_id=request.patient_id) is None:
        # The parties' administrators manage the request (reassign, escalations) without a care relationship.
        audit.record(db, actor=_actor(user, client_address), action="teleconsult.read", patient_id=request.patient_id,
                     purpose="teleconsult_admin", resource=f"consult:{request.id}")
    else:
        access.require_patient_access(db, user=user, patient_id=request.patient_id, action="teleconsult.read",
                                      client_address=client_address)
    return request


def studies_of(db: Session, request: ConsultRequest) -> list[ImagingStudy]:
    return list(db.execute(select(ImagingStudy).where(ImagingStudy.consult_request_id == request.id)
                           .order_by(ImagingStudy.received_at, ImagingStudy.id)).scalars())


def escalations_of(db: Session, request: ConsultRequest) -> list[ConsultEscalation]:
    return list(db.execute(select(ConsultEscalation).where(ConsultEscalation.request_id == request.id)
                           .order_by(ConsultEscalation.level)).scalars())


def is_overdue(request: ConsultRequest, now: datetime | None = None) -> bool:
    return request.state in OPEN_STATES and request.report_due_at < (now or utcnow())


def sendable_centres(db: Session, *, user: User, kind: ConsultKind | None = None) -> list[ReadingCentre]:
    """Active centres of the user's alliances (not of their own organisation) they may invite."""
    if user.organisation_id is None:
        return []
    mine = aliased(AllianceMembership)
    theirs = aliased(AllianceMembership)
    q = (select(ReadingCentre).distinct()
         .join(theirs, theirs.organisation_id == ReadingCentre.organisation_id)
         .join(mine, (mine.alliance_id == theirs.alliance_id) & (mine.organisation_id == user.organisation_id))
         .where(ReadingCentre.is_active.is_(True), ReadingCentre.organisation_id != user.organisation_id))
    if kind is not None:
        q = q.where(ReadingCentre.kind == kind)
    return list(db.execute(q.order_by(ReadingCentre.kind, ReadingCentre.name, ReadingCentre.id)).scalars())


@dataclass
class WorklistFilter:
    centre_ids: list[int]
    modality: str = ""
    inviting_organisation_id: int | None = None
    priority: Priority | None = None
    kind: ConsultKind | None = None
    mine_user_id: int | None = None
    unclaimed: bool = False


def worklist_query(f: WorklistFilter, *, limit: int = WORKLIST_LIMIT) -> Select[tuple[ConsultRequest]]:
    """Open requests of the centres, by deadline: the overdue have the earliest deadlines and come first;
    emergencies first at an equal deadline. The WHERE repeats the partial index's predicate, so
    ix_consult_open_centre_due (centre_id, report_due_at) serves it in index order."""
    rank = case({p.value: r for p, r in PRIORITY_RANK.items()}, value=ConsultRequest.priority, else_=9)
    q = select(ConsultRequest).where(
        ConsultRequest.state.in_([str(s) for s in OPEN_STATES]),
        ConsultRequest.centre_id.in_(f.centre_ids) if len(f.centre_ids) != 1
        else ConsultRequest.centre_id == f.centre_ids[0])
    if f.inviting_organisation_id is not None:
        q = q.where(ConsultRequest.inviting_organisation_id == f.inviting_organisation_id)
    if f.priority is not None:
        q = q.where(ConsultRequest.priority == f.priority)
    if f.kind is not None:
        q = q.where(ConsultRequest.kind == f.kind)
    if f.mine_user_id is not None:
        q = q.where(ConsultRequest.claimed_by_user_id == f.mine_user_id)
    if f.unclaimed:
        q = q.where(ConsultRequest.claimed_by_user_id.is_(None))
    if f.modality:
        q = q.where(exists().where(ImagingStudy.consult_request_id == ConsultRequest.id,
                                   ImagingSeries.study_id == ImagingStudy.id,
                                   ImagingSeries.modality == f.modality.upper()))
    return q.order_by(ConsultRequest.report_due_at, rank, ConsultRequest.id).limit(limit)


def worklist(db: Session, *, user: User, centre_id: int | None = None, modality: str = "",
             inviting_organisation_id: int | None = None, priority: Priority | None = None,
             kind: ConsultKind | None = None, mine: bool = False, unclaimed: bool = False,
             limit: int = WORKLIST_LIMIT, client_address: str = "") -> list[ConsultRequest]:
    """The reading worklist of the user's centre(s); audited, since rows name (masked) patients."""
    centres = centres_read_by(db, user)
    if centre_id is not None:
        centres = [c for c in centres if c.id == centre_id]
        if not centres:
            raise AccessDenied("您不是该诊断中心的医师或管理员 / you do not read for that centre")
    if not centres:
        raise AccessDenied("您不在任何诊断中心工作 / you do not read for any centre")
    f = WorklistFilter(centre_ids=[c.id for c in centres], modality=modality.strip(),
                       inviting_organisation_id=inviting_organisation_id, priority=priority, kind=kind,
                       mine_user_id=user.id if mine else None, unclaimed=unclaimed)
    rows = list(db.execute(worklist_query(f, limit=max(1, min(limit, 500)))).scalars())
    audit.record(db, actor=_actor(user, client_address), action="teleconsult.worklist",
                 detail={"count": len(rows), "request_ids": [r.id for r in rows][:100],
                         "centre_ids": f.centre_ids})
    return rows


def list_requests(db: Session, *, user: User, side: str = "sent", states: Sequence[ConsultState] = (),
                  limit: int = 100, client_address: str = "") -> list[ConsultRequest]:
    """What the user's organisation asked for (side "sent") or its centres received ("received"), newest first."""
    if user.organisation_id is None:
        raise AccessDenied("只有机构人员可以查看会诊 / only staff of an organisation see consultations")
    if side not in ("sent", "received"):
        raise InvalidInput("side 须为 sent 或 received / side must be sent or received",
                           field_errors=[field_error("side", "sent | received")])
    column = (ConsultRequest.inviting_organisation_id if side == "sent"
              else ConsultRequest.invited_organisation_id)
    q = select(ConsultRequest).where(column == user.organisation_id)
    if states:
        q = q.where(ConsultRequest.state.in_([str(s) for s in states]))
    rows = list(db.execute(q.order_by(ConsultRequest.created_at.desc(), ConsultRequest.id.desc())
                           .limit(max(1, min(limit, 500)))).scalars())
    audit.record(db, actor=_actor(user, client_address), action="teleconsult.list",
                 detail={"side": side, "count": len(rows), "request_ids": [r.id for r in rows][:100]})
    return rows


def organisation_name(db: Session, organisation_id: int | None) -> str:
    org = db.get(Organisation, organisation_id) if organisation_id else None
    return org.name if org else ""


# --- how rows read on screen -------------------------------------------------------------------------

def mask_name(name: str) -> str:
    """Worklists show 王*英: enough for staff expecting a patient, not to identify a stranger."""
    name = (name or "").strip()
    if len(name) <= 1:
        return name
    return name[0] + "*" * max(1, len(name) - 2) + (name[-1] if len(name) > 2 else "")


def viewer_url(study: ImagingStudy) -> str:
    return f"/imaging/studies/{study.study_instance_uid}/viewer"


@dataclass
class RowInfo:
    patient_masked_name: str = ""
    inviting_organisation_name: str = ""
    centre_name: str = ""
    claimed_by_name: str = ""
    requested_by_name: str = ""
    studies: list[ImagingStudy] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)


def _by_ids(db: Session, columns: tuple[Any, Any], ids: Iterable[int | None]) -> dict[int, Any]:
    wanted = sorted({i for i in ids if i is not None})
    found: dict[int, Any] = {}
    for start in range(0, len(wanted), 900):  # under every backend's bound-parameter limit
        found.update(db.execute(select(*columns).where(columns[0].in_(wanted[start:start + 900]))).all())
    return found


def describe(db: Session, requests: Sequence[ConsultRequest]) -> dict[int, RowInfo]:
    """Names, masked patients, linked studies and their modalities for a page of requests: one query per kind."""
    from healthrelay.patients.models import Patient

    patients = _by_ids(db, (Patient.id, Patient.name), (r.patient_id for r in requests))
    orgs = _by_ids(db, (Organisation.id, Organisation.name), (r.inviting_organisation_id for r in requests))
    centres = _by_ids(db, (ReadingCentre.id, ReadingCentre.name), (r.centre_id for r in requests))
    users = _by_ids(db, (User.id, User.display_name),
                    [*(r.claimed_by_user_id for r in requests), *(r.requested_by_user_id for r in requests)])
    studies: dict[int, list[ImagingStudy]] = {}
    modalities: dict[int, set[str]] = {}
    ids = [r.id for r in requests]
    for start in range(0, len(ids), 900):
        for study in db.execute(select(ImagingStudy).where(ImagingStudy.consult_request_id.in_(ids[start:start + 900]))
                                .order_by(ImagingStudy.received_at, ImagingStudy.id)).scalars():
            studies.setdefault(study.consult_request_id or 0, []).append(study)
    study_request = {s.id: rid for rid, rows in studies.items() for s in rows}
    wanted = list(study_request)
    for start in range(0, len(wanted), 900):
        for study_id, modality in db.execute(select(ImagingSeries.study_id, ImagingSeries.modality).distinct()
                                             .where(ImagingSeries.study_id.in_(wanted[start:start + 900]))):
            if modality:
                modalities.setdefault(study_request[study_id], set()).add(modality)
    for rid, rows in studies.items():  # a study indexed before its series: what the study header says
        for study in rows:
            modalities.setdefault(rid, set()).update(m for m in study.modalities_in_study.split("\\") if m)
    return {r.id: RowInfo(
        patient_masked_name=mask_name(patients.get(r.patient_id or 0, "")) if r.patient_id else "",
        inviting_organisation_name=orgs.get(r.inviting_organisation_id, ""),
        centre_name=centres.get(r.centre_id, ""), claimed_by_name=users.get(r.claimed_by_user_id or 0, ""),
        requested_by_name=users.get(r.requested_by_user_id or 0, ""), studies=studies.get(r.id, []),
        modalities=sorted(modalities.get(r.id, set()))) for r in requests}


def minutes_left(request: ConsultRequest, now: datetime | None = None) -> int:
    """Whole minutes to the report deadline; negative once overdue."""
    seconds = (request.report_due_at - (now or utcnow())).total_seconds()
    return int(seconds // 60) if seconds >= 0 else -max(1, int(-seconds // 60))


# --- care relationship ----------------------------------------------------------------------------

@access.care_relationship_check
def _party_to_consultation(db: Session, user: User, patient_id: int) -> str | None:
    """Staff of the inviting organisation and of the centre's organisation care for the patient while the
    request is open and for 30 days after it closes."""
    if user.organisation_id is None:
        return None
    since = utcnow() - timedelta(days=CARE_RELATIONSHIP_DAYS_AFTER)
    org = user.organisation_id
    found = db.execute(select(exists().where(
        ConsultRequest.patient_id == patient_id,
        (ConsultRequest.inviting_organisation_id == org) | (ConsultRequest.invited_organisation_id == org),
        ConsultRequest.closed_at.is_(None) | (ConsultRequest.closed_at >= since),
    ))).scalar()
    return "teleconsult" if found else None
