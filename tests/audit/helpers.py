"""Test data for the audit trail: events at chosen times, chained exactly as the service chains them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.audit.models import AuditEvent
from healthrelay.audit.service import GENESIS_HASH, compute_hash


def event_at(db: Session, at: datetime, *, action: str = "patient.read", username: str = "doc_a",
             user_id: int | None = None, organisation_id: int | None = None, patient_id: int | None = None,
             outcome: str = "ok", purpose: str = "", detail: dict[str, Any] | None = None,
             resource: str = "") -> AuditEvent:
    """`audit.service.record` always stamps the current time; searches by date need the past."""
    last = db.execute(select(AuditEvent.row_hash).order_by(AuditEvent.id.desc()).limit(1)).scalar()
    event = AuditEvent(occurred_at=at, user_id=user_id, username=username, role="clinician",
                       organisation_id=organisation_id, patient_id=patient_id, action=action, outcome=outcome,
                       purpose=purpose, resource=resource, detail=detail or {}, client_address="10.0.0.9",
                       prev_hash=last or GENESIS_HASH)
    event.row_hash = compute_hash(event)
    db.add(event)
    db.flush()
    return event
