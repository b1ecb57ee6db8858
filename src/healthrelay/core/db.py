"""Engine, sessions and the declarative base shared by every domain."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, DateTime, Engine, MetaData, create_engine, event, func, text
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from healthrelay.core.config import get_settings

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


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

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
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


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


def reset_caches() -> None:
    """Forget engine and settings (tests switch databases between runs)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()
    get_sessionmaker.cache_clear()
    get_settings.cache_clear()
