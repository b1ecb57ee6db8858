"""Background work of referrals: escalating unanswered referrals when their deadline passes, and expiring them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.core import timers
from healthrelay.core.db import utcnow
from healthrelay.directory.models import Department
from healthrelay.referrals import announce, service
from healthrelay.referrals.models import Referral, ReferralEscalation


def _department_head_users(db: Session, referral: Referral) -> tuple[int | None, list[int]]:
    if referral.to_department_id is None:
        return None, []
    dept = db.get(Department, referral.to_department_id)
    if dept is None or dept.head_practitioner_id is None:
        return referral.to_department_id, []
    ids = db.execute(select(User.id).where(User.practitioner_id == dept.head_practitioner_id,
                                           User.is_active.is_(True))).scalars()
    return dept.id, sorted(ids)


def _medical_affairs_users(db: Session, referral: Referral) -> list[int]:
    """The 医务科 is staffed by the receiving organisation's administrators."""
    ids = db.execute(select(User.id).where(User.organisation_id == referral.to_organisation_id,
                                           User.role == Role.ORG_ADMIN, User.is_active.is_(True))).scalars()
    return sorted(ids)


@timers.handler(service.ESCALATE_KIND)
def escalate(db: Session, payload: dict[str, Any]) -> None:
    """Record the escalation if the referral is still unanswered in the same round; level 1 arms level 2."""
    referral = db.get(Referral, int(payload["referral_id"]))
    level = int(payload["level"])
    round_ = int(payload.get("round", 0))
    if referral is None or referral.state not in service.AWAITING_ANSWER or referral.round != round_:
        return
    existing = db.execute(select(ReferralEscalation.id).where(
        ReferralEscalation.referral_id == referral.id, ReferralEscalation.round == round_,
        ReferralEscalation.level == level)).scalar()
    if existing is not None:
        return
    if level == 1:
        dept_id, user_ids = _department_head_users(db, referral)
        row = ReferralEscalation(referral_id=referral.id, round=round_, level=1, at=utcnow(),
                                 notified_organisation_id=referral.to_organisation_id,
                                 notified_department_id=dept_id, notified_user_ids=user_ids)
        minutes = service.deadline_minutes(db, referral.urgency)
        service._schedule_escalation(db, referral, level=2, due_at=utcnow() + timedelta(minutes=minutes))
    else:
        row = ReferralEscalation(referral_id=referral.id, round=round_, level=level, at=utcnow(),
                                 notified_organisation_id=referral.to_organisation_id,
                                 notified_user_ids=_medical_affairs_users(db, referral))
    db.add(row)
    db.flush()
    audit.record(db, actor=audit.Actor(username="system"), action=f"referral.escalate.{level}",
                 patient_id=referral.patient_id, resource=f"referral:{referral.id}",
                 detail={"level": level, "round": round_, "notified_user_ids": row.notified_user_ids})
    announce.escalation(db, referral=referral, level=level, user_ids=row.notified_user_ids)


@timers.handler(service.EXPIRE_KIND)
def expire(db: Session, payload: dict[str, Any]) -> None:
    """Still unanswered in the same round at the expiry time: the referral expires and the sender hears."""
    referral = db.get(Referral, int(payload["referral_id"]))
    if referral is None or referral.state not in service.AWAITING_ANSWER or referral.round != int(payload["round"]):
        return
    service.expire(db, referral_id=referral.id)
