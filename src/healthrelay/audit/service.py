"""Writing and verifying the hash-chained audit trail.

Each row's hash covers its content and the previous row's hash, so editing or deleting
any row breaks the chain from there on. Appends are serialised (an advisory lock on
PostgreSQL, SQLite's write lock taken before reading the last hash) so concurrent
processes and threads keep one chain.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select, text
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session, SessionTransaction

from healthrelay.audit.models import AuditEvent
from healthrelay.core.db import get_sessionmaker, take_sqlite_write_lock, utcnow

GENESIS_HASH = "0" * 64
_PG_AUDIT_LOCK = 0x4845414C  # any constant shared by every process
# Keys in Session.info: the session's transaction holds the append lock; events to write after it ends.
_HOLDS_LOCK = "healthrelay.audit.holds_lock"
_DEFERRED = "healthrelay.audit.deferred"

log = logging.getLogger("healthrelay.audit")


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
    _take_append_lock(db)
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


def _take_append_lock(db: Session) -> None:
    """Serialise appends until the transaction ends, so two writers never read the same last hash."""
    dialect = db.get_bind().dialect.name
    if dialect == "postgresql":
        db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_AUDIT_LOCK})
    else:
        take_sqlite_write_lock(db)  # else two threads could read the same last hash and fork the chain
    db.info[_HOLDS_LOCK] = True


def _blocks_other_writers(db: Session) -> bool:
    """Would a second connection's append wait for this session's transaction to end?"""
    if not db.in_transaction():
        return False
    if db.info.get(_HOLDS_LOCK):
        return True
    if db.get_bind().dialect.name == "sqlite":
        return bool(getattr(db.connection().connection.dbapi_connection, "in_transaction", False))
    return False


def record_now(*, actor: Actor, action: str, db: Session | None = None, **kwargs: Any) -> None:
    """Append and commit in a transaction of its own, so the event survives the request failing.

    For refused access and failed logins. Pass the caller's session as `db`: when its open
    transaction already holds the append lock (PostgreSQL advisory lock, SQLite write lock), a
    second connection would wait for it forever (or until SQLite's busy timeout), so the event is
    written right after that transaction commits or rolls back instead.
    """
    if db is not None and _blocks_other_writers(db):
        db.info.setdefault(_DEFERRED, []).append((actor, action, kwargs))
        return
    _append_and_commit(actor=actor, action=action, **kwargs)


def _append_and_commit(*, actor: Actor, action: str, **kwargs: Any) -> None:
    db = get_sessionmaker()()
    try:
        record(db, actor=actor, action=action, **kwargs)
        db.commit()
    finally:
        db.close()


@sa_event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is not None:  # a savepoint; the outer transaction still holds the lock
        return
    session.info.pop(_HOLDS_LOCK, None)
    for actor, action, kwargs in session.info.pop(_DEFERRED, None) or []:
        try:
            _append_and_commit(actor=actor, action=action, **kwargs)
        except Exception:  # noqa: BLE001 - never mask the caller's own outcome; the loss is logged loudly
            log.exception("could not write deferred audit event %s for %s", action, actor.username)


@dataclass
class ChainBreak:
    event_id: int
    problem: str


def _iter_events(db: Session, batch: int = 5000) -> Iterator[AuditEvent]:
    """Every event in id order, as stored now.

    populate_existing: events this session already holds are re-read, or a row edited behind the
    session's back would be checked from its stale cached copy. Only the events read here are
    expunged afterwards; the caller's other objects (the signed-in user) stay in the session.
    """
    last_id = 0
    while True:
        rows = db.execute(
            select(AuditEvent).where(AuditEvent.id > last_id).order_by(AuditEvent.id).limit(batch)
            .execution_options(populate_existing=True)
        ).scalars().all()
        if not rows:
            return
        yield from rows
        last_id = rows[-1].id
        for row in rows:
            db.expunge(row)


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


def search_query(*, user_id: int | None = None, username: str | None = None,
                 patient_id: int | None = None, action: str | None = None, outcome: str | None = None,
                 since: datetime | None = None, until: datetime | None = None,
                 limit: int = 200, before_id: int | None = None,
                 organisation_id: int | None = None) -> Select[tuple[AuditEvent]]:
    """The search as a statement, so exports can stream plain rows with the very same filters.

    `organisation_id` limits to events recorded for that organisation's users (an organisation
    admin's view).
    """
    q = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if organisation_id is not None:
        q = q.where(AuditEvent.organisation_id == organisation_id)
    if user_id is not None:
        q = q.where(AuditEvent.user_id == user_id)
    if username:
        q = q.where(AuditEvent.username == username)
    if patient_id is not None:
        q = q.where(AuditEvent.patient_id == patient_id)
    if action:
        q = q.where(AuditEvent.action.startswith(action, autoescape=True))
    if outcome:
        q = q.where(AuditEvent.outcome == outcome)
    if since:
        q = q.where(AuditEvent.occurred_at >= since)
    if until:
        q = q.where(AuditEvent.occurred_at < until)
    if before_id:
        q = q.where(AuditEvent.id < before_id)
    return q


def search(db: Session, **filters: Any) -> list[AuditEvent]:
    """Newest first, keyset-paginated by id (`before_id`) so deep pages stay fast."""
    return list(db.execute(search_query(**filters)).scalars())


def read_scope(user: Any) -> int | None:
    """Which events an admin may read: None for all (alliance admin), else their organisation's."""
    from healthrelay.accounts.models import Role
    from healthrelay.core.errors import AccessDenied

    if user.role == Role.ALLIANCE_ADMIN:
        return None
    if user.role == Role.ORG_ADMIN and user.organisation_id is not None:
        return int(user.organisation_id)
    raise AccessDenied("只有管理员可以查看审计日志 / only administrators read the audit trail")
