"""Referral tables: the referral itself, its recorded transitions, deadlines, escalations and follow-ups."""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Date, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from healthrelay.core.db import Base, UTCDateTime, utcnow
from healthrelay.directory.models import _enum


class Direction(enum.StrEnum):
    UP = "up"  # 上转
    DOWN = "down"  # 下转


class Urgency(enum.StrEnum):
    ROUTINE = "routine"
    URGENT = "urgent"
    GREEN_CHANNEL = "green_channel"  # 绿色通道


class State(enum.StrEnum):
    DRAFT = "draft"
    SENT = "sent"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    REDIRECTED = "redirected"
    ARRIVED = "arrived"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class Referral(Base):
    __tablename__ = "referrals"
    __table_args__ = (
        # Worklists: a department's (or organisation's) open referrals, overdue first.
        Index("ix_referrals_to_org_state_due", "to_organisation_id", "state", "response_due_at"),
        Index("ix_referrals_to_dept_state_due", "to_department_id", "state", "response_due_at"),
        Index("ix_referrals_from_org_state", "from_organisation_id", "state"),
        # Referral indicators (referrals/kpi.py): the period's referrals read from the index alone on
        # PostgreSQL, and the lead-hospital discharges with their down referrals (migration 0006).
        Index("ix_referrals_sent_kpi", "sent_at", postgresql_include=[
            "id", "direction", "urgency", "state", "from_organisation_id", "to_organisation_id", "answered_at",
            "response_due_at", "closed_at", "round"]),
        Index("ix_referrals_up_completed_closed", "closed_at", postgresql_include=["id", "to_organisation_id"],
              postgresql_where=text("direction = 'up' AND state = 'completed'"),
              sqlite_where=text("direction = 'up' AND state = 'completed'")),
        Index("ix_referrals_down_parent", "parent_referral_id", postgresql_include=["from_organisation_id"],
              postgresql_where=text("direction = 'down' AND sent_at IS NOT NULL"),
              sqlite_where=text("direction = 'down' AND sent_at IS NOT NULL")),
        # Referrals waiting for an answer by receiver and deadline (partial), so "overdue first" can be
        # read in index order and stop at the limit (migration 0006).
        Index("ix_referrals_awaiting_org_due", "to_organisation_id", "response_due_at",
              postgresql_where=text("state IN ('sent', 'redirected')"),
              sqlite_where=text("state IN ('sent', 'redirected')")),
        Index("ix_referrals_awaiting_dept_due", "to_department_id", "response_due_at",
              postgresql_where=text("state IN ('sent', 'redirected')"),
              sqlite_where=text("state IN ('sent', 'redirected')")),
        # What an organisation sent, newest first (the board's "outgoing" list).
        Index("ix_referrals_from_org_created", "from_organisation_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(40), unique=True)  # ZZ20261123-0042
    direction: Mapped[Direction] = mapped_column(_enum(Direction))
    urgency: Mapped[Urgency] = mapped_column(_enum(Urgency))
    state: Mapped[State] = mapped_column(_enum(State), default=State.DRAFT)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    from_organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    from_user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    to_organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    to_department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"))
    to_team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    wanted_specialty_id: Mapped[int | None] = mapped_column(ForeignKey("specialties.id"))
    reason: Mapped[str] = mapped_column(Text, default="")
    diagnosis_code: Mapped[str] = mapped_column(String(12), default="")
    diagnosis_text: Mapped[str] = mapped_column(String(300), default="")
    case_summary: Mapped[str] = mapped_column(Text, default="")
    vital_signs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    medicines: Mapped[list[Any]] = mapped_column(JSON, default=list)
    consent_kind: Mapped[str] = mapped_column(String(20), default="")
    consent_recorded_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    consent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    response_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Each redirect starts a new answering round with its own deadline and escalation timers.
    round: Mapped[int] = mapped_column(Integer, default=0)
    appointment_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    bed: Mapped[str] = mapped_column(String(60), default="")
    decline_reason: Mapped[str] = mapped_column(Text, default="")
    suggested_alternative_organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"))
    outcome: Mapped[str] = mapped_column(Text, default="")
    # Down referrals: {"diagnosis", "medicines", "follow_up": [{"due_on", "kind"}], "warning_signs"}.
    care_plan: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    parent_referral_id: Mapped[int | None] = mapped_column(ForeignKey("referrals.id"), index=True)
    # Send-back-up: the earlier referrals of this episode with their transitions, as sent.
    history: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    transitions: Mapped[list[ReferralTransition]] = relationship(
        back_populates="referral", order_by="ReferralTransition.id")


class ReferralTransition(Base):
    __tablename__ = "referral_transitions"

    id: Mapped[int] = mapped_column(primary_key=True)
    referral_id: Mapped[int] = mapped_column(ForeignKey("referrals.id", ondelete="CASCADE"), index=True)
    from_state: Mapped[str] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    reason: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    referral: Mapped[Referral] = relationship(back_populates="transitions")


class ReferralDeadline(Base):
    """How long the receiver has to answer, per urgency; data, so the alliance can change it."""

    __tablename__ = "referral_deadlines"

    urgency: Mapped[str] = mapped_column(String(20), primary_key=True)
    response_minutes: Mapped[int] = mapped_column(Integer)
    # An unanswered referral expires this long after it was sent, and the sender is told to refer elsewhere.
    expire_minutes: Mapped[int] = mapped_column(Integer, default=4320)


class ReferralEscalation(Base):
    """Level 1: the receiving department head; level 2: the medical-affairs office (医务科)."""

    __tablename__ = "referral_escalations"
    __table_args__ = (UniqueConstraint("referral_id", "round", "level"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    referral_id: Mapped[int] = mapped_column(ForeignKey("referrals.id", ondelete="CASCADE"), index=True)
    round: Mapped[int] = mapped_column(Integer, default=0)
    level: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    notified_organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"))
    notified_department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"))
    notified_user_ids: Mapped[list[int]] = mapped_column(JSON, default=list)


class FollowUpTask(Base):
    __tablename__ = "referral_follow_up_tasks"
    __table_args__ = (Index("ix_referral_follow_up_tasks_org_due", "organisation_id", "done_at", "due_on"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    referral_id: Mapped[int] = mapped_column(ForeignKey("referrals.id", ondelete="CASCADE"), index=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    due_on: Mapped[date] = mapped_column(Date)
    kind: Mapped[str] = mapped_column(String(60))
    note: Mapped[str] = mapped_column(Text, default="")
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ReferralAttachment(Base):
    """A result or document sent with a referral; the bytes live under the data dir, named by hash."""

    __tablename__ = "referral_attachments"

    id: Mapped[int] = mapped_column(primary_key=True)
    referral_id: Mapped[int] = mapped_column(ForeignKey("referrals.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(200))
    content_type: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(200), default="")
    uploaded_by_user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    uploaded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
