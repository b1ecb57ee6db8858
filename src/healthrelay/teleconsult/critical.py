"""The critical-result loop (危急值): flagged at signature, told at once on every channel, escalated until
someone acknowledges with a record of the telephone call.

Nothing here closes by itself. The requesting doctor is told first (urgent: inbox, live toast, e-mail,
SMS and WeChat when they have addresses); when nobody acknowledges within
`teleconsult_settings.critical_ack_minutes` a durable timer tells the doctor's department head (level 1),
then the inviting organisation's medical-affairs office (医务科, its administrators; level 2), and then
the 医务科 again every interval. Every step is a timestamped CriticalResultEvent.

Critical lab values (危急值 from the laboratory, `open_for_lab`) go through the same loop: the ordering doctor
is told first (else the ordering, else the performing organisation's clinicians), and the ordering
organisation's 医务科 is who the loop climbs to. A `Subject` hides which of the two kinds a row is.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.orm import Session, object_session

from healthrelay.access import service as access
from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.core import timers
from healthrelay.core.db import take_sqlite_write_lock, utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NotFound, field_error
from healthrelay.directory.models import Department, Organisation, Post
from healthrelay.imaging.models import ImagingStudy, Modality
from healthrelay.notifications import service as notifications
from healthrelay.notifications.models import OutboundMessage
from healthrelay.results.models import LabResult
from healthrelay.teleconsult.models import (
    ConsultRequest,
    CriticalResult,
    CriticalResultEvent,
    CriticalState,
    ReadingCentre,
    Report,
    TeleconsultSetting,
)
from healthrelay.web.templating import templates

ESCALATE_KIND = "teleconsult.critical.escalate"
ACK_SETTING = "critical_ack_minutes"
DEFAULT_ACK_MINUTES = 15
LOCAL_TZ = ZoneInfo("Asia/Shanghai")
_MAX_RECIPIENTS = 50
# Roles that may stand in for the requester at the inviting organisation.
_COLLEAGUE_ROLES = (Role.CLINICIAN, Role.ORG_ADMIN)
_SEE_ALL = (Role.ALLIANCE_ADMIN, Role.HEALTH_BUREAU)
_PHONE = re.compile(r"^[0-9+()\- ]{3,40}$")
_LEVEL_ZH = {1: "科主任", 2: "医务科"}


def ack_minutes(db: Session) -> int:
    row = db.get(TeleconsultSetting, ACK_SETTING)
    return row.value if row is not None and row.value > 0 else DEFAULT_ACK_MINUTES


def for_request(db: Session, *, request_id: int) -> CriticalResult | None:
    return db.execute(select(CriticalResult).where(CriticalResult.request_id == request_id)).scalar()


def for_lab(db: Session, *, lab_result_id: int) -> CriticalResult | None:
    return db.execute(select(CriticalResult).where(CriticalResult.lab_result_id == lab_result_id)).scalar()


@dataclass
class Subject:
    """What a critical result is about, whichever kind: a consult request's report or a lab value."""

    kind: str  # "report" or "lab"
    number: str  # the request number, or the lab's order / filler number
    patient_id: int | None
    organisation_id: int  # answerable for acting on it: the inviting member, the ordering organisation
    other_organisation_ids: tuple[int, ...]  # the reading centre's organisation(s), the performing lab
    department_id: int | None  # the requesting department when the request names one
    request: ConsultRequest | None = None
    lab: LabResult | None = None

    @property
    def parties(self) -> set[int]:
        return {self.organisation_id, *self.other_organisation_ids}

    @property
    def context_link(self) -> str:
        return f"/teleconsult/{self.request.id}" if self.request is not None else ""


def number_of(db: Session, result: CriticalResult) -> str:
    """The number a critical result is known by: its request's, or its lab order's."""
    subject = subject_of(db, result)
    return subject.number if subject is not None else ""


def lab_number(lab: LabResult) -> str:
    return lab.order_number or lab.filler_number or f"LAB-{lab.id}"


def lab_organisation(lab: LabResult) -> int:
    """Who must act on a lab value: the organisation that ordered it, else the lab that performed it."""
    return lab.ordering_organisation_id or lab.organisation_id


def subject_of(db: Session, result: CriticalResult) -> Subject | None:
    if result.lab_result_id is not None:
        lab = db.get(LabResult, result.lab_result_id)
        if lab is None:
            return None
        return Subject(kind="lab", number=lab_number(lab), patient_id=lab.patient_id,
                       organisation_id=result.organisation_id or lab_organisation(lab),
                       other_organisation_ids=(lab.organisation_id,), department_id=None, lab=lab)
    request = db.get(ConsultRequest, result.request_id) if result.request_id is not None else None
    if request is None:
        return None
    return Subject(kind="report", number=request.number, patient_id=request.patient_id,
                   organisation_id=request.inviting_organisation_id,
                   other_organisation_ids=tuple(sorted({request.invited_organisation_id, _centre_org(db, request)})),
                   department_id=request.inviting_department_id, request=request)


_CJK = re.compile(r"[\u4e00-\u9fff]")
_RANGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*$")


def lab_finding(db: Session, lab: LabResult) -> str:
    """"血钾 2.5 mmol/L (LL) 参考 3.5–5.3": the test's Chinese name, value, unit, flag and reference range."""
    from healthrelay.results.models import ResultCode

    # The lab's own Chinese name ("血钾") as sent; else the dictionary's; else whatever the sender called it.
    name = lab.test_name if _CJK.search(lab.test_name or "") else (
        db.execute(select(ResultCode.name_zh).where(ResultCode.code == lab.test_code)).scalar()
        or lab.test_name or lab.test_code)
    parts = [name, " ".join(p for p in (lab.value_text, lab.unit) if p)]
    if lab.abnormal_flag:
        parts.append(f"({lab.abnormal_flag})")
    if lab.reference_range:
        match = _RANGE.match(lab.reference_range)
        shown = f"{match.group(1)}–{match.group(2)}" if match else lab.reference_range
        parts.append(f"参考 {shown}")
    return " ".join(p for p in parts if p)


# ---------------------------------------------------------------------------- who is told

def _active(db: Session, ids: list[int | None]) -> list[int]:
    wanted = [i for i in ids if i]
    if not wanted:
        return []
    found = set(db.execute(select(User.id).where(User.id.in_(wanted), User.is_active.is_(True))).scalars())
    return [i for i in dict.fromkeys(wanted) if i in found]


def first_recipients(db: Session, request: ConsultRequest) -> list[int]:
    """The requesting doctor; when the request came from routing (nobody asked), the sending modality's
    contact user, else the inviting organisation's clinicians."""
    found = _active(db, [request.requested_by_user_id])
    if found:
        return found
    contacts = list(db.execute(
        select(Modality.contact_user_id).join(ImagingStudy, ImagingStudy.modality_id == Modality.id)
        .where(ImagingStudy.consult_request_id == request.id, Modality.contact_user_id.is_not(None))
        .order_by(ImagingStudy.id)).scalars())
    found = _active(db, contacts)
    if found:
        return found
    return list(db.execute(select(User.id).where(
        User.organisation_id == request.inviting_organisation_id, User.role == Role.CLINICIAN,
        User.is_active.is_(True)).order_by(User.id).limit(_MAX_RECIPIENTS)).scalars())


def lab_first_recipients(db: Session, lab: LabResult) -> list[int]:
    """The doctor who ordered the test; else the ordering organisation's clinicians, else the performing lab's."""
    found = _active(db, [lab.ordered_by_user_id])
    if found:
        return found
    for org_id in dict.fromkeys(o for o in (lab.ordering_organisation_id, lab.organisation_id) if o):
        found = list(db.execute(select(User.id).where(
            User.organisation_id == org_id, User.role == Role.CLINICIAN, User.is_active.is_(True))
            .order_by(User.id).limit(_MAX_RECIPIENTS)).scalars())
        if found:
            return found
    return []


def department_head_users(db: Session, request: ConsultRequest | Subject | None,
                          notify_user_id: int | None) -> tuple[int | None, list[int]]:
    """The head of the doctor's department (their post's department, else the request's)."""
    dept_id: int | None = None
    if notify_user_id is not None:
        dept_id = db.execute(select(Post.department_id).join(User, User.post_id == Post.id)
                             .where(User.id == notify_user_id)).scalar()
    if isinstance(request, Subject):
        dept_id = dept_id or request.department_id
    elif request is not None:
        dept_id = dept_id or request.inviting_department_id
    if dept_id is None:
        return None, []
    head = db.execute(select(Department.head_practitioner_id).where(Department.id == dept_id)).scalar()
    if head is None:
        return dept_id, []
    ids = db.execute(select(User.id).where(User.practitioner_id == head, User.is_active.is_(True),
                                           User.role != Role.PATIENT).order_by(User.id)).scalars()
    return dept_id, [i for i in ids if i != notify_user_id]


def medical_affairs_users(db: Session, request: ConsultRequest | Subject) -> list[int]:
    """The answerable organisation's 医务科 (its administrators): the inviting or the ordering organisation."""
    org_id = request.organisation_id if isinstance(request, Subject) else request.inviting_organisation_id
    return _org_admins(db, org_id)


def _org_admins(db: Session, organisation_id: int) -> list[int]:
    return list(db.execute(select(User.id).where(
        User.organisation_id == organisation_id, User.role == Role.ORG_ADMIN,
        User.is_active.is_(True)).order_by(User.id).limit(_MAX_RECIPIENTS)).scalars())


# ---------------------------------------------------------------------------- opening the loop

def _event(db: Session, result: CriticalResult, kind: str, *, level: int = 0, by: User | None = None,
           detail: dict[str, Any] | None = None) -> CriticalResultEvent:
    row = CriticalResultEvent(critical_result_id=result.id, kind=kind, level=level, at=utcnow(),
                              by_user_id=by.id if by else None, detail=detail or {})
    db.add(row)
    db.flush()
    return row


def _link(result: CriticalResult) -> str:
    return f"/teleconsult/critical/{result.id}"


def _notify(db: Session, result: CriticalResult, user_ids: list[int], *, level: int,
            title: str, body: str) -> list[int]:
    """Send urgently and record one `notified` event per user and channel (inbox, live, each outbound)."""
    notes = notifications.send(db, user_ids=user_ids, kind="teleconsult.critical", title=title, body=body,
                               link=_link(result), resource=f"critical:{result.id}", urgent=True)
    if not notes:
        return []
    outbound: dict[int, list[OutboundMessage]] = {}
    for message in db.execute(select(OutboundMessage).where(
            OutboundMessage.notification_id.in_([n.id for n in notes])).order_by(OutboundMessage.id)).scalars():
        outbound.setdefault(message.notification_id or 0, []).append(message)
    for note in notes:
        channels = [("inbox", "delivered"), ("live", "pushed")]
        channels += [(m.channel, m.status) for m in outbound.get(note.id, [])]
        for channel, status in channels:
            _event(db, result, "notified", level=level,
                   detail={"user_id": note.user_id, "channel": channel, "status": status,
                           "notification_id": note.id})
    return [n.user_id for n in notes]


def _schedule(db: Session, result: CriticalResult, *, level: int, due_at: datetime) -> None:
    timers.schedule(db, kind=ESCALATE_KIND, due_at=due_at, payload={"critical_id": result.id, "level": level},
                    dedupe_key=f"critical:{result.id}:escalate:{level}")


def _centre_org(db: Session, request: ConsultRequest) -> int:
    org = db.execute(select(ReadingCentre.organisation_id).where(ReadingCentre.id == request.centre_id)).scalar()
    return org or request.invited_organisation_id


def _publish(db: Session, subject: Subject, result: CriticalResult) -> None:
    event = {"type": "critical.changed", "critical_id": result.id, "request_id": result.request_id,
             "lab_result_id": result.lab_result_id, "state": str(result.state), "level": result.level}
    request = subject.request
    orgs = sorted({request.inviting_organisation_id, _centre_org(db, request)}) if request is not None \
        else sorted(subject.parties)
    for org_id in orgs:
        notifications.publish(db, topic=notifications.org_topic(org_id), event=event)
    if request is None:
        return
    # The report panel listens for this too, so an open request page shows the loop move.
    for org_id in orgs:
        notifications.publish(db, topic=notifications.org_topic(org_id),
                              event={"type": "teleconsult.report", "request_id": request.id,
                                     "state": str(request.state)})


def open_for(db: Session, *, request: ConsultRequest, report: Report, by: User) -> CriticalResult:
    """Open the loop for a critical report (once per request) and tell the requester at once."""
    existing = for_request(db, request_id=request.id)
    if existing is not None:
        return existing
    now = utcnow()
    recipients = first_recipients(db, request)
    result = CriticalResult(
        request_id=request.id, report_id=report.id, patient_id=request.patient_id, state=CriticalState.OPEN,
        organisation_id=request.inviting_organisation_id,
        finding=report.critical_finding, flagged_by_user_id=by.id, flagged_at=now,
        notify_user_id=recipients[0] if recipients else None,
        ack_due_at=now + timedelta(minutes=ack_minutes(db)), level=0)
    db.add(result)
    db.flush()
    _event(db, result, "flagged", by=by, detail={"report_id": report.id, "recipients": recipients})
    due = result.ack_due_at.astimezone(LOCAL_TZ).strftime("%H:%M")
    _notify(db, result, recipients, level=0,
            title=f"危急值：{request.number} / critical result",
            body=f"{result.finding[:150]}；请于 {due} 前电话确认 / acknowledge by phone before {due}")
    _schedule(db, result, level=1, due_at=result.ack_due_at)
    audit.record(db, actor=access.actor_of(by), action="teleconsult.critical.flag", patient_id=request.patient_id,
                 resource=f"critical:{result.id}", detail={"request_id": request.id, "recipients": recipients})
    subject = subject_of(db, result)
    if subject is not None:
        _publish(db, subject, result)
    return result


def open_for_lab(db: Session, *, lab: LabResult, by: User | None) -> CriticalResult:
    """Open the loop for a critical lab value (once per lab row) and tell the ordering doctor at once, urgently
    on every channel. The text names the test and value, never the patient."""
    existing = for_lab(db, lab_result_id=lab.id)
    if existing is not None:
        return existing
    take_sqlite_write_lock(db)
    now = utcnow()
    recipients = lab_first_recipients(db, lab)
    result = CriticalResult(
        lab_result_id=lab.id, organisation_id=lab_organisation(lab), patient_id=lab.patient_id,
        state=CriticalState.OPEN, finding=lab_finding(db, lab), flagged_by_user_id=by.id if by else None,
        flagged_at=now, notify_user_id=recipients[0] if recipients else None,
        ack_due_at=now + timedelta(minutes=ack_minutes(db)), level=0)
    db.add(result)
    db.flush()
    _event(db, result, "flagged", by=by, detail={"lab_result_id": lab.id, "recipients": recipients,
                                                 "source": lab.source})
    due = result.ack_due_at.astimezone(LOCAL_TZ).strftime("%H:%M")
    number = lab_number(lab)
    _notify(db, result, recipients, level=0, title=f"检验危急值：{number} / critical lab value",
            body=f"{result.finding[:150]}；请于 {due} 前电话确认 / acknowledge by phone before {due}")
    _schedule(db, result, level=1, due_at=result.ack_due_at)
    actor = access.actor_of(by) if by is not None else audit.Actor(username="system")
    audit.record(db, actor=actor, action="teleconsult.critical.flag", patient_id=lab.patient_id,
                 resource=f"critical:{result.id}", detail={"lab_result_id": lab.id, "recipients": recipients})
    subject = subject_of(db, result)
    if subject is not None:
        _publish(db, subject, result)
    return result


# ---------------------------------------------------------------------------- escalation

@timers.handler(ESCALATE_KIND)
def escalate(db: Session, payload: dict[str, Any]) -> None:
    """Still open: tell the next level and arm the one after it; the 医务科 hears again every interval."""
    # Locked, so an acknowledgement committing meanwhile is seen and nobody is told after it.
    result = db.execute(select(CriticalResult).where(CriticalResult.id == int(payload["critical_id"]))
                        .with_for_update()).scalar()
    if result is None or result.state != CriticalState.OPEN:
        return
    level = int(payload["level"])
    subject = subject_of(db, result)
    if subject is None:
        return
    if level == 1:
        dept_id, heads = department_head_users(db, subject, result.notify_user_id)
        if not heads:
            _event(db, result, "escalation_skipped", level=1,
                   detail={"department_id": dept_id, "reason": "no department head"})
            level = 2
        else:
            _escalate_to(db, result, subject, level=1, user_ids=heads, extra={"department_id": dept_id})
            _schedule(db, result, level=2, due_at=utcnow() + timedelta(minutes=ack_minutes(db)))
            return
    users = medical_affairs_users(db, subject)
    extra: dict[str, Any] = {"organisation_id": subject.organisation_id}
    if not users:
        # Somebody must hear: without a 医务科 at the answerable member, the centre's (or the lab's)
        # administrators do.
        for other in subject.other_organisation_ids:
            users = _org_admins(db, other)
            if users:
                fallback = "centre_medical_affairs" if subject.kind == "report" else "lab_medical_affairs"
                extra = {"organisation_id": other, "fallback": fallback}
                break
    _escalate_to(db, result, subject, level=level, user_ids=users, extra=extra)
    _schedule(db, result, level=level + 1, due_at=utcnow() + timedelta(minutes=ack_minutes(db)))


def _escalate_to(db: Session, result: CriticalResult, subject: Subject, *, level: int, user_ids: list[int],
                 extra: dict[str, Any]) -> None:
    result.level = level
    _event(db, result, "escalated", level=level, detail={"user_ids": user_ids, **extra})
    who = _LEVEL_ZH.get(level, "医务科")
    minutes = int((utcnow() - result.flagged_at).total_seconds() // 60)
    what = "检验危急值" if subject.kind == "lab" else "危急值"
    _notify(db, result, user_ids, level=level,
            title=f"{what}未确认（{who}督办）：{subject.number} / unacknowledged critical result, level {level}",
            body=f"{result.finding[:150]}；已 {minutes} 分钟无人确认 / unacknowledged for {minutes} min")
    audit.record(db, actor=audit.Actor(username="system"), action=f"teleconsult.critical.escalate.{min(level, 2)}",
                 patient_id=result.patient_id, resource=f"critical:{result.id}",
                 detail={"level": level, "notified_user_ids": user_ids})
    _publish(db, subject, result)


# ---------------------------------------------------------------------------- acknowledging

@dataclass
class AckInput:
    """The read-back telephone call that closes the loop, and what was done."""

    call_at: datetime | None = None
    call_number: str = ""
    call_spoken_to: str = ""
    call_read_back: bool | None = None
    action_taken: str = ""


def notified_user_ids(db: Session, result: CriticalResult) -> set[int]:
    ids = set()
    for detail in db.execute(select(CriticalResultEvent.detail).where(
            CriticalResultEvent.critical_result_id == result.id, CriticalResultEvent.kind == "notified")).scalars():
        if isinstance(detail, dict) and detail.get("user_id"):
            ids.add(int(detail["user_id"]))
    if result.notify_user_id:
        ids.add(result.notify_user_id)
    return ids


def can_acknowledge(db: Session, *, user: User, result: CriticalResult) -> bool:
    """Anyone who was told, or the doctor's colleagues at the answerable (inviting or ordering) organisation."""
    if result.state != CriticalState.OPEN or not user.is_active:
        return False
    if user.id in notified_user_ids(db, result):
        return True
    subject = subject_of(db, result)
    answerable = subject.organisation_id if subject is not None else None
    return user.organisation_id is not None and user.organisation_id == answerable and user.role in _COLLEAGUE_ROLES


def _may_see(db: Session, *, user: User, result: CriticalResult, subject: Subject) -> bool:
    if user.role in _SEE_ALL:
        return True
    if user.organisation_id in subject.parties:
        return True
    return user.id in notified_user_ids(db, result)


def get_subject_for(db: Session, *, critical_id: int, user: User) -> tuple[CriticalResult, Subject]:
    """Parties only (both organisations, whoever was told, alliance-wide overseers); others get 404."""
    result = db.get(CriticalResult, critical_id)
    subject = subject_of(db, result) if result is not None else None
    if result is None or subject is None or user.role == Role.PATIENT or not _may_see(
            db, user=user, result=result, subject=subject):
        raise NotFound(f"没有编号为 {critical_id} 的危急值 / no critical result {critical_id}")
    return result, subject


def get_for(db: Session, *, critical_id: int, user: User) -> tuple[CriticalResult, ConsultRequest | None]:
    """As get_subject_for, with the consult request (None for a lab value)."""
    result, subject = get_subject_for(db, critical_id=critical_id, user=user)
    return result, subject.request


def _clean_ack(result: CriticalResult, data: AckInput) -> AckInput:
    errors = []
    now = utcnow()
    call_at = data.call_at
    if call_at is None:
        errors.append(field_error("call_at", "请填写电话通知时间 / when was the call?"))
    else:
        if call_at.tzinfo is None:
            call_at = call_at.replace(tzinfo=LOCAL_TZ)
        if call_at > now + timedelta(minutes=5):
            errors.append(field_error("call_at", "通话时间不能晚于现在 / the call cannot be in the future"))
        elif call_at < result.flagged_at - timedelta(minutes=5):
            errors.append(field_error("call_at", "通话时间早于危急值上报时间 / the call is before the flag"))
    number = (data.call_number or "").strip()
    if not number:
        errors.append(field_error("call_number", "请填写通话号码 / the number called is required"))
    elif not _PHONE.match(number):
        errors.append(field_error("call_number", "号码只能包含数字、空格、+、-、() / digits, spaces, + - ( ) only"))
    spoken_to = " ".join((data.call_spoken_to or "").split())
    if not spoken_to:
        errors.append(field_error("call_spoken_to", "请填写接听人 / who was spoken to is required"))
    elif len(spoken_to) > 100:
        errors.append(field_error("call_spoken_to", "最多 100 字 / at most 100 characters"))
    if data.call_read_back is None:
        errors.append(field_error("call_read_back", "请选择对方是否复述确认 / was the result read back? yes or no"))
    action = (data.action_taken or "").strip()
    if not action:
        errors.append(field_error("action_taken", "请填写处置措施 / the action taken is required"))
    elif len(action) > 2000:
        errors.append(field_error("action_taken", "最多 2000 字 / at most 2000 characters"))
    if errors:
        raise InvalidInput("危急值确认信息不完整 / the acknowledgement is incomplete", field_errors=errors)
    return AckInput(call_at=call_at, call_number=number, call_spoken_to=spoken_to,
                    call_read_back=data.call_read_back, action_taken=action)


def acknowledge(db: Session, *, critical_id: int, by: User, data: AckInput,
                client_address: str = "") -> CriticalResult:
    """Close the loop: the call is recorded, escalation stops, and the centre hears who acknowledged."""
    take_sqlite_write_lock(db)  # SQLite: take the write lock before reading what the write depends on
    result, subject = get_subject_for(db, critical_id=critical_id, user=by)
    if result.state != CriticalState.OPEN:
        raise Conflict(f"该危急值已于 {result.acknowledged_at.astimezone(LOCAL_TZ):%Y-%m-%d %H:%M} 确认 / "
                       "already acknowledged" if result.acknowledged_at else "已确认 / already acknowledged",
                       code="already_acknowledged")
    if not can_acknowledge(db, user=by, result=result):
        raise AccessDenied("只有被通知人员或申请方本机构医师可以确认危急值 / only people who were told, or the "
                           "requester's colleagues, acknowledge", code="not_notified")
    clean = _clean_ack(result, data)
    now = utcnow()
    # Conditional on "still open", so of two people acknowledging at once exactly one wins.
    done = db.execute(update(CriticalResult).where(CriticalResult.id == result.id,
                                                   CriticalResult.state == CriticalState.OPEN)
                      .values(state=CriticalState.ACKNOWLEDGED, acknowledged_by_user_id=by.id, acknowledged_at=now,
                              call_at=clean.call_at, call_number=clean.call_number,
                              call_spoken_to=clean.call_spoken_to, call_read_back=bool(clean.call_read_back),
                              action_taken=clean.action_taken)
                      .execution_options(synchronize_session=False))
    if done.rowcount != 1:
        raise Conflict("该危急值刚被他人确认 / someone else acknowledged it first", code="already_acknowledged")
    db.refresh(result)
    _event(db, result, "acknowledged", level=result.level, by=by, detail={
        "call_at": clean.call_at.isoformat() if clean.call_at else None, "call_number": clean.call_number,
        "call_spoken_to": clean.call_spoken_to, "call_read_back": bool(clean.call_read_back),
        "action_taken": clean.action_taken,
        "minutes": round((now - result.flagged_at).total_seconds() / 60, 1)})
    for level in range(1, result.level + 2):
        timers.cancel(db, dedupe_key=f"critical:{result.id}:escalate:{level}")
    audit.record(db, actor=access.actor_of(by, client_address), action="teleconsult.critical.acknowledge",
                 patient_id=result.patient_id, resource=f"critical:{result.id}",
                 detail={"request_id": result.request_id, "lab_result_id": result.lab_result_id,
                         "level": result.level})
    told = [u for u in _active(db, [result.flagged_by_user_id]) if u != by.id]
    if told:
        name = db.execute(select(User.display_name).where(User.id == by.id)).scalar() or ""
        notifications.send(db, user_ids=told, kind="teleconsult.critical_acknowledged",
                           title=f"危急值已确认：{subject.number} / critical result acknowledged",
                           body=f"{name}：{clean.action_taken[:150]}", link=subject.context_link or _link(result),
                           resource=f"critical:{result.id}")
    _publish(db, subject, result)
    return result


# ---------------------------------------------------------------------------- the report of critical results

@dataclass
class Row:
    result: CriticalResult
    number: str
    inviting: str  # the answerable organisation: inviting member, or the lab value's ordering organisation
    centre: str  # the other side: the reading centre's organisation, or the performing lab
    first_notified_at: datetime | None
    minutes_to_ack: float | None
    overdue: bool
    kind: str = "report"  # "report" (imaging, ECG … reports) or "lab"


@dataclass
class Summary:
    total: int
    open: int
    overdue: int
    acknowledged: int
    median_minutes: float | None
    p90_minutes: float | None
    max_level: int


def default_period(today: date | None = None) -> tuple[date, date]:
    today = today or datetime.now(LOCAL_TZ).date()
    return today - timedelta(days=29), today


def _bounds(start: date, end: date) -> tuple[datetime, datetime]:
    if end < start:
        raise InvalidInput("结束日期早于开始日期 / the end is before the start",
                           field_errors=[field_error("end", "on or after start")])
    if (end - start).days > 366:
        raise InvalidInput("时间范围最长一年 / at most one year at a time",
                           field_errors=[field_error("start", "at most 366 days")])
    return (datetime.combine(start, time.min, LOCAL_TZ), datetime.combine(end + timedelta(days=1), time.min, LOCAL_TZ))


def _scope(user: User) -> Any:
    if user.role in _SEE_ALL:
        return None
    if user.organisation_id is None or user.role == Role.PATIENT:
        raise AccessDenied("无权查看危急值报表 / you may not see critical results")
    return user.organisation_id


def _filtered(query: Any, *, user: User, start: date, end: date, organisation_id: int | None) -> Any:
    """Both kinds in one query: the request's two organisations, or the lab value's answerable and performing
    organisations (outer joins, so each row finds its own)."""
    first, after = _bounds(start, end)
    query = (query.outerjoin(ConsultRequest, ConsultRequest.id == CriticalResult.request_id)
             .outerjoin(LabResult, LabResult.id == CriticalResult.lab_result_id)
             .where(CriticalResult.flagged_at >= first, CriticalResult.flagged_at < after))

    def involving(org_id: int) -> Any:
        return or_(ConsultRequest.inviting_organisation_id == org_id, ConsultRequest.invited_organisation_id == org_id,
                   and_(CriticalResult.lab_result_id.is_not(None),
                        or_(CriticalResult.organisation_id == org_id, LabResult.organisation_id == org_id)))

    own = _scope(user)
    if own is not None:
        query = query.where(involving(own))
    if organisation_id is not None:
        query = query.where(involving(organisation_id))
    return query


def _query(db: Session, *, user: User, start: date, end: date, organisation_id: int | None) -> Any:
    return _filtered(select(CriticalResult, ConsultRequest, LabResult), user=user, start=start, end=end,
                     organisation_id=organisation_id)


def report(db: Session, *, user: User, start: date, end: date, organisation_id: int | None = None,
           limit: int = 500) -> tuple[list[Row], Summary]:
    """Critical results of both kinds flagged in the period, open ones first (oldest due first), then newest."""
    now = utcnow()
    base = _query(db, user=user, start=start, end=end, organisation_id=organisation_id)
    ordered = base.order_by(case((CriticalResult.state == CriticalState.OPEN, 0), else_=1),
                            case((CriticalResult.state == CriticalState.OPEN, CriticalResult.ack_due_at),
                                 else_=None),
                            CriticalResult.flagged_at.desc(), CriticalResult.id.desc()).limit(max(1, min(limit, 5000)))
    triples = db.execute(ordered).all()
    ids = [r.id for r, _, _ in triples]
    first_notified: dict[int, datetime] = {}
    if ids:
        event = CriticalResultEvent
        first_notified = dict(db.execute(select(event.critical_result_id, func.min(event.at))
                                         .where(event.critical_result_id.in_(ids), event.kind == "notified")
                                         .group_by(event.critical_result_id)).all())
    sides: dict[int, tuple[str, int | None, int | None]] = {}
    for result, request, lab in triples:
        if request is not None:
            sides[result.id] = ("report", request.inviting_organisation_id, request.invited_organisation_id)
        elif lab is not None:
            sides[result.id] = ("lab", result.organisation_id or lab_organisation(lab), lab.organisation_id)
    org_ids = {o for _, a, b in sides.values() for o in (a, b) if o}
    orgs = dict(db.execute(select(Organisation.id, Organisation.name).where(Organisation.id.in_(org_ids))).all()) \
        if org_ids else {}
    rows = []
    for result, request, lab in triples:
        kind, answerable, other = sides.get(result.id, ("report", None, None))
        number = request.number if request is not None else lab_number(lab) if lab is not None else ""
        minutes = ((result.acknowledged_at - result.flagged_at).total_seconds() / 60
                   if result.acknowledged_at else None)
        rows.append(Row(result=result, number=number, inviting=orgs.get(answerable or 0, ""),
                        centre=orgs.get(other or 0, ""), first_notified_at=first_notified.get(result.id),
                        minutes_to_ack=minutes, kind=kind,
                        overdue=result.state == CriticalState.OPEN and result.ack_due_at < now))
    return rows, summarise(db, user=user, start=start, end=end, organisation_id=organisation_id)


def summarise(db: Session, *, user: User, start: date, end: date, organisation_id: int | None = None) -> Summary:
    """Counts by SQL; the acknowledgement times of the period feed the median and 90th percentile."""
    now = utcnow()
    base = _filtered(select(CriticalResult.id, CriticalResult.state, CriticalResult.ack_due_at, CriticalResult.level,
                            CriticalResult.flagged_at, CriticalResult.acknowledged_at),
                     user=user, start=start, end=end, organisation_id=organisation_id).subquery()
    open_ = base.c.state == CriticalState.OPEN.value
    counts = db.execute(select(
        func.count(), func.sum(case((open_, 1), else_=0)),
        func.sum(case((and_(open_, base.c.ack_due_at < now), 1), else_=0)),
        func.max(base.c.level))).one()
    acked = db.execute(select(base.c.flagged_at, base.c.acknowledged_at)
                       .where(base.c.acknowledged_at.is_not(None))).all()
    minutes = sorted((a - f).total_seconds() / 60 for f, a in acked if a is not None and f is not None)
    return Summary(total=int(counts[0] or 0), open=int(counts[1] or 0), overdue=int(counts[2] or 0),
                   acknowledged=len(minutes), median_minutes=statistics.median(minutes) if minutes else None,
                   p90_minutes=percentile(minutes, 90), max_level=int(counts[3] or 0))


def percentile(values: list[float], pct: float) -> float | None:
    """Linear interpolation between closest ranks (the spreadsheet PERCENTILE.INC)."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def events_of(db: Session, result: CriticalResult) -> list[CriticalResultEvent]:
    return list(db.execute(select(CriticalResultEvent).where(CriticalResultEvent.critical_result_id == result.id)
                           .order_by(CriticalResultEvent.id)).scalars())


def is_overdue(result: CriticalResult, now: datetime | None = None) -> bool:
    return result.state == CriticalState.OPEN and result.ack_due_at < (now or utcnow())


def minutes_to_ack(result: CriticalResult) -> float | None:
    if result.acknowledged_at is None:
        return None
    return round((result.acknowledged_at - result.flagged_at).total_seconds() / 60, 1)


def view(db: Session, *, critical_id: int, user: User, client_address: str = "") -> tuple[CriticalResult,
                                                                                        ConsultRequest | None]:
    """One critical result for a party, audited: the finding is patient data. The request is None for a lab
    value (see `subject_of` for what both kinds share)."""
    result, subject = get_subject_for(db, critical_id=critical_id, user=user)
    audit.record(db, actor=access.actor_of(user, client_address), action="teleconsult.critical.read",
                 patient_id=result.patient_id, resource=f"critical:{result.id}",
                 detail={"request_id": result.request_id, "lab_result_id": result.lab_result_id})
    return result, subject.request


def subject_names(db: Session, subject: Subject) -> tuple[str, str]:
    """The answerable organisation's name and the other side's (centre or performing lab), for pages."""
    other = subject.other_organisation_ids[0] if subject.other_organisation_ids else None
    if subject.request is not None:
        other = subject.request.invited_organisation_id
    names = dict(db.execute(select(Organisation.id, Organisation.name)
                            .where(Organisation.id.in_([subject.organisation_id, other or 0]))).all())
    return names.get(subject.organisation_id, ""), names.get(other or 0, "")


def _subject_for_template(result: Any) -> Subject | None:
    """Jinja helper (`critical_subject(result)`): the critical templates show both kinds from the row alone."""
    if not isinstance(result, CriticalResult):
        return None
    db = object_session(result)
    return subject_of(db, result) if db is not None else None


def _names_for_template(subject: Any) -> tuple[str, str]:
    if not isinstance(subject, Subject):
        return "", ""
    db = object_session(subject.request or subject.lab)
    return subject_names(db, subject) if db is not None else ("", "")


templates.env.globals["critical_subject"] = _subject_for_template
templates.env.globals["critical_subject_names"] = _names_for_template


def audit_view(db: Session, *, user: User, output: str, count: int, client_address: str = "") -> None:
    """Who looked at (or exported) the list of critical results; call last, as it takes the audit lock."""
    audit.record(db, actor=access.actor_of(user, client_address),
                 action="teleconsult.critical.list" if output in ("page", "json") else "teleconsult.critical.export",
                 detail={"output": output, "count": count})
