"""Who hears about a consultation request, and when: inbox messages, outbound channels and live page updates.

Called inside the service's transaction; the notifications domain holds everything back until it commits.
Messages carry the request number, the organisations and the deadline, never the patient's name or ID:
they may leave the platform by SMS or email.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.directory.models import Organisation, Post
from healthrelay.notifications import service as notifications
from healthrelay.teleconsult.models import ConsultKind, ConsultRequest, ConsultState, Priority, ReadingCentre

_SHANGHAI = ZoneInfo("Asia/Shanghai")
_PRIORITY_ZH = {Priority.EMERGENCY: "【急诊】", Priority.URGENT: "【急】", Priority.ROUTINE: ""}
KIND_ZH = {ConsultKind.IMAGING: "远程影像诊断", ConsultKind.ECG: "远程心电诊断", ConsultKind.PATHOLOGY: "远程病理诊断",
           ConsultKind.SPECIALIST: "专科会诊", ConsultKind.MDT: "多学科会诊"}
_MAX_RECIPIENTS = 50


def centre_staff(db: Session, centre: ReadingCentre) -> list[int]:
    """The readers of the centre (its department's, when it has one), who pick new work off the worklist."""
    q = select(User.id).where(User.organisation_id == centre.organisation_id, User.is_active.is_(True),
                              User.role.in_([Role.REMOTE_READER, Role.CLINICIAN]))
    if centre.department_id is not None:
        q = q.where(exists().where(Post.practitioner_id == User.practitioner_id,
                                   Post.organisation_id == centre.organisation_id,
                                   Post.department_id == centre.department_id))
    return list(db.execute(q.order_by(User.id).limit(_MAX_RECIPIENTS)).scalars())


def _org(db: Session, organisation_id: int | None) -> str:
    org = db.get(Organisation, organisation_id) if organisation_id else None
    return org.name if org else ""


def _centre(db: Session, request: ConsultRequest) -> ReadingCentre:
    centre = db.get(ReadingCentre, request.centre_id)
    assert centre is not None
    return centre


def _due(request: ConsultRequest) -> str:
    return request.report_due_at.astimezone(_SHANGHAI).strftime("%m-%d %H:%M")


def _notify(db: Session, request: ConsultRequest, user_ids: list[int | None], kind: str, title: str, body: str,
            urgent: bool) -> None:
    wanted = [u for u in user_ids if u is not None]
    if wanted:
        notifications.send(db, user_ids=wanted, kind=kind, title=title, body=body,
                           link=f"/teleconsult/{request.id}", resource=f"consult:{request.id}", urgent=urgent)


def publish(db: Session, request: ConsultRequest, *, event_type: str, **extra: Any) -> None:
    """Tell both parties' open pages (worklists, lists, the detail page) that the request changed."""
    for org_id in sorted({request.inviting_organisation_id, request.invited_organisation_id}):
        notifications.publish(db, topic=notifications.org_topic(org_id), event={
            "type": event_type, "request_id": request.id, "centre_id": request.centre_id,
            "state": str(request.state), "priority": str(request.priority), **extra})


def created(db: Session, *, request: ConsultRequest) -> None:
    """The centre hears about new work; emergencies and urgent requests urgently (SMS/WeChat too)."""
    centre = _centre(db, request)
    label = KIND_ZH.get(ConsultKind(request.kind), "远程会诊")
    _notify(db, request, list(centre_staff(db, centre)), "teleconsult.incoming",
            f"{_PRIORITY_ZH[Priority(request.priority)]}新{label}请求 {request.number}",
            f"{_org(db, request.inviting_organisation_id)} → {centre.name}；请于 {_due(request)} 前报告 / "
            f"new request, report by {_due(request)}", urgent=request.priority != Priority.ROUTINE)
    publish(db, request, event_type="teleconsult.changed", action="create")


def changed(db: Session, *, request: ConsultRequest, action: str, from_state: ConsultState, by: User | None,
            reason: str = "", detail: dict[str, Any] | None = None) -> None:
    """After every recorded move: live updates for both parties, and messages for the moves people wait for."""
    publish(db, request, event_type="teleconsult.changed", action=action)
    number = request.number
    pressing = request.priority != Priority.ROUTINE
    requester = [request.requested_by_user_id] if by is None or by.id != request.requested_by_user_id else []
    centre = _centre(db, request)
    if action == "accept" or (action == "claim" and from_state == ConsultState.REQUESTED):
        _notify(db, request, requester, "teleconsult.accepted", f"会诊 {number} 已被接收 / accepted",
                f"{centre.name} 已接收，预计 {_due(request)} 前出具报告 / report due {_due(request)}", urgent=False)
    elif action == "decline":
        _notify(db, request, requester, "teleconsult.declined", f"会诊 {number} 被拒绝 / declined",
                f"{centre.name}：{reason}", urgent=pressing)
    elif action == "cancel":
        holder = (detail or {}).get("claimed_by_user_id")
        _notify(db, request, [holder] if holder else [], "teleconsult.cancelled",
                f"会诊 {number} 已被邀请方撤销 / cancelled", reason, urgent=False)
    elif action == "reassign" and request.claimed_by_user_id is not None:
        _notify(db, request, [request.claimed_by_user_id], "teleconsult.assigned",
                f"{_PRIORITY_ZH[Priority(request.priority)]}会诊 {number} 已改派给您 / assigned to you",
                f"{_org(db, request.inviting_organisation_id)} → {centre.name}；请于 {_due(request)} 前报告",
                urgent=pressing)


def escalation(db: Session, *, request: ConsultRequest, level: int, user_ids: list[int]) -> None:
    who = "科主任" if level == 1 else "医务科"
    centre = _centre(db, request)
    _notify(db, request, list(user_ids), f"teleconsult.escalation.{level}",
            f"超时未报告：会诊 {request.number}（{who}督办）/ report overdue, escalated",
            f"{_org(db, request.inviting_organisation_id)} → {centre.name}，报告时限 {_due(request)} 已过 / "
            f"the report deadline has passed", urgent=True)
    publish(db, request, event_type="teleconsult.escalated", level=level)
