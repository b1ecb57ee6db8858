"""HL7 v2 interface tables: who may send (MSH-4 registry), every message taken in, the ones that could not be
taken (dead letters, kept whole for an admin to inspect and replay), and the way back out (destinations and
an outbound queue with retries).

Raw bytes are kept exactly as they arrived, so a message can be decoded again in another character set or
replayed after its patient has been registered.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from healthrelay.core.db import Base, UTCDateTime, utcnow


class Hl7Sender(Base):
    """A member hospital's sending system, known by its MSH-4 sending facility; unknown senders are refused."""

    __tablename__ = "hl7_senders"

    id: Mapped[int] = mapped_column(primary_key=True)
    facility: Mapped[str] = mapped_column(String(60), unique=True)  # MSH-4.1, e.g. QX_SHIMEN_WSY
    application: Mapped[str] = mapped_column(String(60), default="")  # MSH-3.1; "" accepts any application
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    # The account the audit trail names for what this system writes (its results, registrations, orders).
    interface_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    is_active: Mapped[bool] = mapped_column(default=True)
    note: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Hl7Message(Base):
    """A message taken in and acknowledged; (sender, control ID) is unique, so a repeat is answered, not stored."""

    __tablename__ = "hl7_messages"
    __table_args__ = (
        UniqueConstraint("sender_id", "control_id", name="uq_hl7_messages_sender_control"),
        Index("ix_hl7_messages_received", "received_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sender_id: Mapped[int] = mapped_column(ForeignKey("hl7_senders.id"))
    control_id: Mapped[str] = mapped_column(String(64))  # MSH-10
    message_type: Mapped[str] = mapped_column(String(20))  # ORU^R01, ADT^A04, ORM^O01, OML^O21
    charset: Mapped[str] = mapped_column(String(20), default="UTF-8")  # as decoded (MSH-18)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    peer: Mapped[str] = mapped_column(String(80), default="")
    ack_code: Mapped[str] = mapped_column(String(2), default="AA")
    ack_text: Mapped[str] = mapped_column(Text, default="")
    # What it created or changed: {"patients": [...], "lab_results": [...], "exam_results": [...], "orders": [...]}.
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Hl7DeadLetter(Base):
    """A message that could not be taken: unparseable, undecodable, from an unknown sender, for an unknown
    patient, with unknown codes. Kept whole with the reason; an admin inspects it and replays it."""

    __tablename__ = "hl7_dead_letters"
    __table_args__ = (Index("ix_hl7_dead_letters_state", "state", "received_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    peer: Mapped[str] = mapped_column(String(80), default="")
    sender_facility: Mapped[str] = mapped_column(String(60), default="")
    control_id: Mapped[str] = mapped_column(String(64), default="")
    message_type: Mapped[str] = mapped_column(String(20), default="")
    charset: Mapped[str] = mapped_column(String(20), default="")
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    reason_code: Mapped[str] = mapped_column(String(40))  # e.g. unknown_sender, bad_charset, unknown_patient
    reason: Mapped[str] = mapped_column(Text)  # Chinese first, then English
    ack_code: Mapped[str] = mapped_column(String(2), default="AE")  # what the sender was told (AE or AR)
    state: Mapped[str] = mapped_column(String(12), default="open")  # open, replayed, discarded
    handled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    handled_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    handled_note: Mapped[str] = mapped_column(Text, default="")
    replay_message_id: Mapped[int | None] = mapped_column(ForeignKey("hl7_messages.id"))


class Hl7Destination(Base):
    """Where an organisation's own system listens for results we send back (ORU^R01 over MLLP)."""

    __tablename__ = "hl7_destinations"

    id: Mapped[int] = mapped_column(primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), unique=True)
    host: Mapped[str] = mapped_column(String(200))
    port: Mapped[int] = mapped_column(Integer)
    receiving_application: Mapped[str] = mapped_column(String(60), default="")  # MSH-5
    receiving_facility: Mapped[str] = mapped_column(String(60), default="")  # MSH-6
    charset: Mapped[str] = mapped_column(String(20), default="UTF-8")  # UTF-8 or GB18030
    is_active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Hl7Outbound(Base):
    """One message to send, built at commit time and retried until the destination acknowledges it."""

    __tablename__ = "hl7_outbound"
    __table_args__ = (Index("ix_hl7_outbound_state", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    destination_id: Mapped[int] = mapped_column(ForeignKey("hl7_destinations.id"), index=True)
    control_id: Mapped[str] = mapped_column(String(64), unique=True)
    message_type: Mapped[str] = mapped_column(String(20), default="ORU^R01")
    # What it carries: ("consult_report", report id) or ("lab_result", id).
    source_kind: Mapped[str] = mapped_column(String(20))
    source_id: Mapped[int] = mapped_column(Integer)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(12), default="pending")  # pending, sent, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str] = mapped_column(Text, default="")
    ack_code: Mapped[str] = mapped_column(String(2), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
