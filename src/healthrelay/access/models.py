"""Break-the-glass grants: the one way to see a patient without a care relationship."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from healthrelay.accounts.models import User
from healthrelay.core.db import Base, UTCDateTime, utcnow


class BreakGlassGrant(Base):
    """Emergency access without a care relationship: time-limited and flagged for review."""

    __tablename__ = "break_glass_grants"
    __table_args__ = (Index("ix_break_glass_user_patient", "user_id", "patient_id", "expires_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    reason: Mapped[str] = mapped_column(Text)
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    reviewed_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    review_outcome: Mapped[str] = mapped_column(String(20), default="")  # justified / unjustified
    review_note: Mapped[str] = mapped_column(Text, default="")

    user: Mapped[User] = relationship(foreign_keys=[user_id])
