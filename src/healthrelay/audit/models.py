"""Append-only, hash-chained audit trail of logins, access decisions and patient-data use."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from healthrelay.core.db import Base, UTCDateTime


class AuditEvent(Base):
    """No foreign keys on purpose: the trail must outlive and never block the rows it mentions."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_patient_at", "patient_id", "occurred_at"),
        Index("ix_audit_events_user_at", "user_id", "occurred_at"),
        Index("ix_audit_events_action_at", "action", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    user_id: Mapped[int | None] = mapped_column(Integer)
    username: Mapped[str] = mapped_column(String(60), default="")
    role: Mapped[str] = mapped_column(String(32), default="")
    organisation_id: Mapped[int | None] = mapped_column(Integer)
    patient_id: Mapped[int | None] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(60))  # e.g. patient.read, login.failed, access.denied
    outcome: Mapped[str] = mapped_column(String(20), default="ok")  # ok / denied / failed
    purpose: Mapped[str] = mapped_column(String(60), default="")  # treatment / break_glass / admin ...
    resource: Mapped[str] = mapped_column(String(200), default="")
    detail: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    client_address: Mapped[str] = mapped_column(String(64), default="")
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64), unique=True)
