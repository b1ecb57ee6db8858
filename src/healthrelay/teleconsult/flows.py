"""Background work of consultation requests: escalating a report that is overdue.

The level-1 timer is armed when the request is created, due at its report deadline; when it fires on a
request that still has no signed report it tells the centre department's head and arms level 2, which
tells the centre organisation's medical-affairs office (its admins). Closing a request (reported, declined,
cancelled) cancels the timers; a handler that fires anyway finds the request closed and does nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.audit import service as audit
from healthrelay.core import timers
from healthrelay.core.db import utcnow
from healthrelay.teleconsult import announce, service
from healthrelay.teleconsult.models import ConsultEscalation, ConsultRequest, ReadingCentre


@timers.handler(service.ESCALATE_KIND)
def escalate(db: Session, payload: dict[str, Any]) -> None:
    """Record the escalation once per level while the report is still missing; level 1 arms level 2."""
    request = db.get(ConsultRequest, int(payload["request_id"]))
    level = int(payload["level"])
    if request is None or request.state not in service.OPEN_STATES:
        return
    done = db.execute(select(ConsultEscalation.id).where(ConsultEscalation.request_id == request.id,
                                                         ConsultEscalation.level == level)).scalar()
    if done is not None:
        return
    centre = db.get(ReadingCentre, request.centre_id)
    assert centre is not None
    if level == 1:
        user_ids = service.centre_head_user_ids(db, centre)
        service.schedule_escalation(db, request, level=2, due_at=service.second_escalation_at(request))
    else:
        user_ids = service.centre_admin_user_ids(db, centre)
    row = ConsultEscalation(request_id=request.id, level=level, at=utcnow(), notified_user_ids=user_ids)
    db.add(row)
    db.flush()
    audit.record(db, actor=audit.Actor(username="system"), action=f"teleconsult.escalate.{level}",
                 patient_id=request.patient_id, resource=f"consult:{request.id}",
                 detail={"level": level, "notified_user_ids": user_ids})
    announce.escalation(db, request=request, level=level, user_ids=user_ids)
