"""Engine, sessions and the declarative base shared by every domain."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, DateTime, Engine, MetaData, create_engine, event, func, text
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from healthrelay.core.config import get_settings

T = TypeVar("T")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Store UTC, always hand back aware datetimes (SQLite forgets the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use healthrelay.core.db.utcnow()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def local_month(db: Session, column: Any) -> ColumnElement[str]:
    """The Shanghai month of a UTC timestamp column as "YYYY-MM", the same on both databases (China keeps no
    daylight saving, so SQLite's fixed +8 hours is exact)."""
    if db.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("Asia/Shanghai", column), "YYYY-MM")
    return func.strftime("%Y-%m", column, "+8 hours")


def utcnow() -> datetime:
    return datetime.now(UTC)


LOCAL_TZ = ZoneInfo("Asia/Shanghai")


def local_today() -> date:
    """Today in Shanghai: the day a clinic's "today", "overdue" and "in the future" mean."""
    return datetime.now(LOCAL_TZ).date()


# FastAPI runs sync routes and the session dependency's setup and teardown on a pool of 40 threads. If fewer
# connections than threads may be checked out, a burst of requests fills the threads with checkouts waiting for
# a connection while the requests holding connections wait for a thread to commit in: a deadlock broken only by
# the pool timeout (a 500 after 30 s). So every thread can hold a connection: pool_size + max_overflow >= 40.
POOL_SIZE, MAX_OVERFLOW = 10, 40


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before it returns, so what we acknowledged (a C-STORE, an HL7 ACK, a
            # referral's 200) survives a power cut too, not only a crash; about 1 ms per commit.
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW)


@lru_cache
def get_engine() -> Engine:
    settings = get_settings()
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return make_engine(settings.database_url)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


def take_sqlite_write_lock(db: Session) -> None:
    """On SQLite, start the write transaction now.

    pysqlite only sends BEGIN before a data change, so a read that decides a write (the last
    audit hash, the next due timer) would otherwise run outside any transaction, and a savepoint
    opened first would become the outer transaction and commit on release. A change that touches
    no row takes the write lock without side effects. PostgreSQL needs none of this.
    """
    if db.get_bind().dialect.name == "sqlite":
        db.execute(text("UPDATE alembic_version SET version_num = version_num WHERE 0"))


def session_scope() -> Iterator[Session]:
    """One unit of work per request: commit on success, roll back on any error."""
    db = get_sessionmaker()()
    try:
        yield db
        db.commit()
    finally:
        # On error, close() rolls the transaction back without expiring loaded objects, so the
        # error page can still show the signed-in user.
        db.close()


def in_one_transaction(work: Callable[[Session], T]) -> T:
    """Run `work` in a session of its own, committed or rolled back in the same thread.

    For bursts of writes (a popular clinic's bookings): with the request-scoped session the write lock (SQLite)
    or the row lock is taken in the route's thread but released by the dependency's teardown in another pool
    thread, so more simultaneous writers than pool threads leave the holder waiting for a thread that every
    waiter occupies. Call it from an async route through `run_in_threadpool`.
    """
    db = get_sessionmaker()()
    try:
        result = work(db)
        db.commit()
        return result
    finally:
        db.close()  # rolls back on error


def reset_caches() -> None:
    """Forget engine and settings (tests switch databases between runs)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()
    get_sessionmaker.cache_clear()
    get_settings.cache_clear()
