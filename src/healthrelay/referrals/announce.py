"""Who hears about a referral, and when: inbox messages, outbound channels and live board updates.

Called from `service.transition` and the escalation timer, inside their transaction; the
notifications domain holds everything back until that transaction commits. Messages carry the
referral number and diagnosis, never the patient's name or ID: they may leave the platform by
email or SMS.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.directory.models import Department, Organisation, Post
from healthrelay.notifications import service as notifications
from healthrelay.referrals.models import Direction, Referral, State, Urgency

_SHANGHAI = ZoneInfo("Asia/Shanghai")
_URGENCY_ZH = {Urgency.GREEN_CHANNEL: "【绿色通道】", Urgency.URGENT: "【急】", Urgency.ROUTINE: ""}
_DIRECTION_ZH = {Direction.UP: "上转", Direction.DOWN: "下转"}
_MAX_RECIPIENTS = 50


def receiving_staff(db: Session, referral: Referral) -> list[int]:
    """The receiving department's clinicians; the whole organisation's when no department is named or staffed."""
    base = select(User.id).where(User.organisation_id == referral.to_organisation_id, User.is_active.is_(True),
                                 User.role.in_([Role.CLINICIAN, Role.ORG_ADMIN]))
    if referral.to_department_id is not None:
        ids = list(db.execute(base.join(Post, Post.id == User.post_id)
                              .where(Post.department_id == referral.to_department_id)
                              .order_by(User.id).limit(_MAX_RECIPIENTS)).scalars())
        if ids:
            return ids
    return list(db.execute(base.where(User.role == Role.CLINICIAN).order_by(User.id).limit(_MAX_RECIPIENTS))
                .scalars())


def _where(db: Session, referral: Referral) -> str:
    org = db.get(Organisation, referral.to_organisation_id)
    dept = db.get(Department, referral.to_department_id) if referral.to_department_id else None
    return (org.name if org else "") + (f" {dept.name}" if dept else "")


def _sender(db: Session, referral: Referral) -> str:
    org = db.get(Organisation, referral.from_organisation_id)
    return org.name if org else ""


def _link(referral: Referral) -> str:
    return f"/referrals/{referral.id}"


def _notify(db: Session, referral: Referral, user_ids: list[int], kind: str, title: str, body: str,
            urgent: bool) -> None:
    if user_ids:
        notifications.send(db, user_ids=user_ids, kind=kind, title=title, body=body, link=_link(referral),
                           resource=f"referral:{referral.id}", urgent=urgent)


def transition(db: Session, *, referral: Referral, from_state: State, by: User | None) -> None:
    for org_id in {referral.from_organisation_id, referral.to_organisation_id}:
        notifications.publish(db, topic=f"org:{org_id}", event={
            "type": "referral.changed", "referral_id": referral.id, "state": str(referral.state),
            "urgency": str(referral.urgency), "direction": str(referral.direction)})
    state, number = referral.state, referral.number
    pressing = referral.urgency != Urgency.ROUTINE
    sender_ids = [referral.from_user_id] if by is None or by.id != referral.from_user_id else []
    if state in (State.SENT, State.REDIRECTED):
        due = referral.response_due_at.astimezone(_SHANGHAI).strftime("%H:%M") if referral.response_due_at else ""
        _notify(db, referral, receiving_staff(db, referral), "referral.incoming",
                f"{_URGENCY_ZH[referral.urgency]}新{_DIRECTION_ZH[referral.direction]}转诊 {number}",
                f"{_sender(db, referral)} → {_where(db, referral)}；诊断：{referral.diagnosis_text or '-'}；"
                f"请于 {due} 前答复 / new referral, answer by {due}", urgent=pressing)
    elif state == State.ACCEPTED:
        when = (referral.appointment_at.astimezone(_SHANGHAI).strftime("%m-%d %H:%M")
                if referral.appointment_at else referral.bed)
        _notify(db, referral, sender_ids, "referral.accepted", f"转诊 {number} 已接收 / accepted",
                f"{_where(db, referral)} 已接收：{when or '-'}", urgent=pressing)
    elif state == State.DECLINED:
        _notify(db, referral, sender_ids, "referral.declined", f"转诊 {number} 被拒绝 / declined",
                f"理由：{referral.decline_reason}", urgent=pressing)
    elif state == State.EXPIRED:
        _notify(db, referral, sender_ids, "referral.expired", f"转诊 {number} 无人答复已过期 / expired",
                "请改转其他医院或电话联系 / refer elsewhere or call", urgent=True)
    elif state == State.CANCELLED and from_state != State.DRAFT:
        _notify(db, referral, receiving_staff(db, referral), "referral.cancelled",
                f"转诊 {number} 已被转出方撤销 / cancelled by the sender", referral.transitions[-1].reason
                if referral.transitions else "", urgent=False)
    elif state == State.COMPLETED:
        _notify(db, referral, sender_ids, "referral.completed", f"转诊 {number} 已完成 / completed",
                f"转归：{referral.outcome}", urgent=False)


def escalation(db: Session, *, referral: Referral, level: int, user_ids: list[int]) -> None:
    who = "科主任" if level == 1 else "医务科"
    _notify(db, referral, user_ids, f"referral.escalation.{level}",
            f"超时未答复：转诊 {referral.number}（{who}督办）/ unanswered referral escalated",
            f"{_sender(db, referral)} → {_where(db, referral)}，答复时限已过 / the answer deadline has passed",
            urgent=True)
    notifications.publish(db, topic=f"org:{referral.to_organisation_id}", event={
        "type": "referral.escalated", "referral_id": referral.id, "level": level})
