"""Durable timers and jobs kept in the database.

A timer is a row with a due time. Runners (the web process in the embedded setup, or
`healthrelay worker` processes) claim due rows with `FOR UPDATE SKIP LOCKED` on PostgreSQL
(SQLite allows one writer at a time, which serialises claims), run the handler and mark the
row fired in the same transaction, so each timer fires once even with several runners.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Index, String, Text, UniqueConstraint, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from healthrelay.core.db import Base, UTCDateTime, take_sqlite_write_lock, utcnow

log = logging.getLogger("healthrelay.timers")

Handler = Callable[[Session, dict[str, Any]], None]
_handlers: dict[str, Handler] = {}
# Recurring jobs: kind -> interval. The runner keeps exactly one pending timer per recurring kind.
_recurring: dict[str, timedelta] = {}

MAX_ATTEMPTS = 5


class Timer(Base):
    __tablename__ = "timers"
    __table_args__ = (
        UniqueConstraint("dedupe_key", name="uq_timers_dedupe_key"),
        Index("ix_timers_pending_due", "fired_at", "due_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(60))
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Scheduling the same key twice is a no-op, so callers may schedule idempotently.
    dedupe_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    fired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    fired_by: Mapped[str] = mapped_column(String(100), default="")
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")


def handler(kind: str, *, every: timedelta | None = None) -> Callable[[Handler], Handler]:
    """Register the function that runs when a timer of `kind` comes due."""

    def register(fn: Handler) -> Handler:
        _handlers[kind] = fn
        if every is not None:
            _recurring[kind] = every
        return fn

    return register


def schedule(db: Session, *, kind: str, due_at: datetime, payload: dict[str, Any] | None = None,
             dedupe_key: str | None = None) -> Timer | None:
    """Add a timer in the caller's transaction; returns None if `dedupe_key` already exists."""
    take_sqlite_write_lock(db)  # the savepoint below must nest inside the caller's transaction
    if dedupe_key is not None:
        existing = db.execute(select(Timer).where(Timer.dedupe_key == dedupe_key)).scalar()
        if existing is not None:
            return None
    timer = Timer(kind=kind, due_at=due_at, payload=payload or {}, dedupe_key=dedupe_key)
    try:
        # A savepoint, so another runner inserting the same key first costs only this insert.
        with db.begin_nested():
            db.add(timer)
    except IntegrityError:
        if dedupe_key is None:
            raise
        return None
    return timer


def cancel(db: Session, *, dedupe_key: str) -> None:
    timer = db.execute(select(Timer).where(Timer.dedupe_key == dedupe_key)).scalar()
    if timer is not None and timer.fired_at is None:
        timer.cancelled_at = utcnow()


def _claim_one(db: Session) -> Timer | None:
    query = (select(Timer)
             .where(Timer.fired_at.is_(None), Timer.cancelled_at.is_(None), Timer.due_at <= utcnow(),
                    Timer.attempts < MAX_ATTEMPTS)
             .order_by(Timer.due_at).limit(1))
    if db.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    take_sqlite_write_lock(db)  # so two runners cannot read the same row
    return db.execute(query).scalar()


def _ensure_recurring(db: Session) -> None:
    now = utcnow()
    for kind, every in _recurring.items():
        slot = int(now.timestamp() // every.total_seconds())
        schedule(db, kind=kind, due_at=datetime.fromtimestamp(slot * every.total_seconds(), now.tzinfo),
                 dedupe_key=f"recurring:{kind}:{slot}")


def run_due(session_factory: sessionmaker[Session], *, runner: str, limit: int = 100) -> int:
    """Fire up to `limit` due timers, each in its own transaction; returns how many fired."""
    with session_factory() as db:
        _ensure_recurring(db)
        db.commit()
    fired = 0
    while fired < limit:
        with session_factory() as db:
            timer = _claim_one(db)
            if timer is None:
                db.rollback()
                return fired
            fn = _handlers.get(timer.kind)
            try:
                if fn is None:
                    raise LookupError(f"no handler for timer kind {timer.kind!r}")
                with db.begin_nested():
                    fn(db, dict(timer.payload))
                timer.fired_at = utcnow()
                timer.fired_by = runner
            except Exception:  # noqa: BLE001 - keep the runner alive; the error is kept on the row
                timer.attempts += 1
                timer.last_error = traceback.format_exc(limit=5)[-2000:]
                log.exception("timer %s (%s) failed", timer.id, timer.kind)
            db.commit()
            fired += timer.fired_at is not None
    return fired


class TimerThread(threading.Thread):
    """Runs timers inside the web process for the embedded (single-process) setup."""

    def __init__(self, session_factory: sessionmaker[Session], *, runner: str, interval: float = 2.0) -> None:
        super().__init__(name="healthrelay-timers", daemon=True)
        self.session_factory = session_factory
        self.runner = runner
        self.interval = interval
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                run_due(self.session_factory, runner=self.runner)
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the loop
                log.exception("timer loop error")
            self.stop_event.wait(self.interval)


def run_forever(session_factory: sessionmaker[Session], *, runner: str, interval: float = 1.0,
                max_loops: int | None = None) -> None:
    loops = 0
    while max_loops is None or loops < max_loops:
        run_due(session_factory, runner=runner)
        loops += 1
        time.sleep(interval)


@handler("maintenance.prune_login_attempts", every=timedelta(hours=1))
def _prune_login_attempts(db: Session, _payload: dict[str, Any]) -> None:
    """Failed-login rows only matter for the throttling window; keep a day for investigation."""
    from healthrelay.accounts.models import LoginAttempt

    db.execute(delete(LoginAttempt).where(LoginAttempt.attempted_at < utcnow() - timedelta(days=1)))
