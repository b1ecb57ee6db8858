"""Writing and verifying the hash-chained audit trail.

Each row's hash covers its content and the previous row's hash, so editing or deleting
any row breaks the chain from there on. Appends are serialised (an advisory lock on
PostgreSQL; SQLite serialises writers anyway) so concurrent processes keep one chain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from healthrelay.audit.models import AuditEvent
from healthrelay.core.db import get_sessionmaker, utcnow

GENESIS_HASH = "0" * 64
_PG_AUDIT_LOCK = 0x4845414C  # any constant shared by every process


@dataclass(frozen=True)
class Actor:
    """Who did it and from where; built from the request's user."""

    user_id: int | None = None
    username: str = ""
    role: str = ""
    organisation_id: int | None = None
    client_address: str = ""


def _canonical(event: AuditEvent) -> bytes:
    body = {
        "occurred_at": event.occurred_at.isoformat(timespec="microseconds"),
        "user_id": event.user_id,
        "username": event.username,
        "role": event.role,
        "organisation_id": event.organisation_id,
        "patient_id": event.patient_id,
        "action": event.action,
        "outcome": event.outcome,
        "purpose": event.purpose,
        "resource": event.resource,
        "detail": event.detail,
        "client_address": event.client_address,
        "prev_hash": event.prev_hash,
    }
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def compute_hash(event: AuditEvent) -> str:
    return hashlib.sha256(_canonical(event)).hexdigest()


def record(db: Session, *, actor: Actor, action: str, patient_id: int | None = None,
           outcome: str = "ok", purpose: str = "", resource: str = "",
           detail: dict[str, Any] | None = None) -> AuditEvent:
    """Append an event inside the caller's transaction (it commits or rolls back with the change)."""
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_AUDIT_LOCK})
    last = db.execute(select(AuditEvent.row_hash).order_by(AuditEvent.id.desc()).limit(1)).scalar()
    event = AuditEvent(
        occurred_at=utcnow(),
        user_id=actor.user_id, username=actor.username, role=actor.role,
        organisation_id=actor.organisation_id, client_address=actor.client_address,
        patient_id=patient_id, action=action, outcome=outcome, purpose=purpose,
        resource=resource, detail=detail or {}, prev_hash=last or GENESIS_HASH,
    )
    event.row_hash = compute_hash(event)
    db.add(event)
    db.flush()
    return event


def record_now(*, actor: Actor, action: str, **kwargs: Any) -> None:
    """Append and commit at once, in a transaction of its own.

    For events that must survive the request failing: refused access, failed logins.
    """
    db = get_sessionmaker()()
    try:
        record(db, actor=actor, action=action, **kwargs)
        db.commit()
    finally:
        db.close()


@dataclass
class ChainBreak:
    event_id: int
    problem: str


def _iter_events(db: Session, batch: int = 5000) -> Iterator[AuditEvent]:
    last_id = 0
    while True:
        rows = db.execute(
            select(AuditEvent).where(AuditEvent.id > last_id).order_by(AuditEvent.id).limit(batch)
        ).scalars().all()
        if not rows:
            return
        yield from rows
        last_id = rows[-1].id
        db.expunge_all()


def verify_chain(db: Session) -> tuple[int, list[ChainBreak]]:
    """Recompute every hash; returns (events checked, breaks found)."""
    expected_prev = GENESIS_HASH
    checked = 0
    breaks: list[ChainBreak] = []
    for event in _iter_events(db):
        checked += 1
        if event.prev_hash != expected_prev:
            breaks.append(ChainBreak(event.id, "previous-hash link broken (a row was removed or reordered)"))
        if compute_hash(event) != event.row_hash:
            breaks.append(ChainBreak(event.id, "content does not match its hash (the row was edited)"))
        expected_prev = event.row_hash
    return checked, breaks


def search(db: Session, *, user_id: int | None = None, username: str | None = None,
           patient_id: int | None = None, action: str | None = None, outcome: str | None = None,
           since: datetime | None = None, until: datetime | None = None,
           limit: int = 200, before_id: int | None = None) -> list[AuditEvent]:
    """Newest first, keyset-paginated by id so deep pages stay fast."""
    q = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if user_id is not None:
        q = q.where(AuditEvent.user_id == user_id)
    if username:
        q = q.where(AuditEvent.username == username)
    if patient_id is not None:
        q = q.where(AuditEvent.patient_id == patient_id)
    if action:
        q = q.where(AuditEvent.action.startswith(action))
    if outcome:
        q = q.where(AuditEvent.outcome == outcome)
    if since:
        q = q.where(AuditEvent.occurred_at >= since)
    if until:
        q = q.where(AuditEvent.occurred_at < until)
    if before_id:
        q = q.where(AuditEvent.id < before_id)
    return list(db.execute(q).scalars())
