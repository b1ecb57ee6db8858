"""Emergency tables: 120 calls, ambulances and their state log, and the response targets ("1030").

An ambulance and its call point at each other: the call keeps the ambulance sent (a foreign key), the
ambulance keeps the call it is on (`current_call_id`, a plain column so the two tables do not depend on each
other in a cycle). `pathway_case_id` is a plain column too: the pathway tables come in a later migration.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from healthrelay.core.db import Base, UTCDateTime, utcnow
from healthrelay.directory.models import _enum


class CallCategory(enum.StrEnum):
    CHEST_PAIN = "chest_pain"  # 胸痛
    STROKE = "stroke"  # 卒中
    TRAUMA = "trauma"  # 创伤
    CRITICAL_MATERNAL = "critical_maternal"  # 危重孕产妇
    CRITICAL_NEONATAL = "critical_neonatal"  # 危重新生儿
    OTHER = "other"


class CallState(enum.StrEnum):
    RECEIVED = "received"  # the phone rang
    ANSWERED = "answered"  # a dispatcher took the call (the intake form was saved)
    DISPATCHED = "dispatched"  # an ambulance was sent
    ON_SCENE = "on_scene"
    TRANSPORTING = "transporting"
    AT_HOSPITAL = "at_hospital"
    CLOSED = "closed"
    CANCELLED = "cancelled"


class AmbulanceKind(enum.StrEnum):
    TRANSPORT = "transport"  # 转运型
    EMERGENCY = "emergency"  # 急救型
    MOBILE_ICU = "mobile_icu"  # 监护型 (移动ICU)


class AmbulanceState(enum.StrEnum):
    AVAILABLE = "available"
    DISPATCHED = "dispatched"
    EN_ROUTE = "en_route"
    ON_SCENE = "on_scene"
    TRANSPORTING = "transporting"
    AT_HOSPITAL = "at_hospital"
    RETURNING = "returning"
    OUT_OF_SERVICE = "out_of_service"


class EmergencyCall(Base):
    __tablename__ = "emergency_calls"
    __table_args__ = (
        # The dispatch board: open calls by priority and waiting time, read off a partial index.
        Index("ix_emergency_calls_open", "priority", "received_at",
              postgresql_where=text("state NOT IN ('closed', 'cancelled')"),
              sqlite_where=text("state NOT IN ('closed', 'cancelled')")),
        # The response metrics: per station and month.
        Index("ix_emergency_calls_station_received", "station_organisation_id", "received_at"),
        Index("ix_emergency_calls_received", "received_at"),
        Index("ix_emergency_calls_patient", "patient_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(40), unique=True)  # JJ20261204-0007
    category: Mapped[CallCategory] = mapped_column(_enum(CallCategory))
    priority: Mapped[int] = mapped_column(Integer)  # 1 critical … 4 non-urgent
    caller_name: Mapped[str] = mapped_column(String(100), default="")
    caller_phone: Mapped[str] = mapped_column(String(40), default="")
    complaint: Mapped[str] = mapped_column(Text, default="")
    area_id: Mapped[int | None] = mapped_column(ForeignKey("areas.id"), index=True)
    latitude: Mapped[float] = mapped_column(Float)
    longitude: Mapped[float] = mapped_column(Float)
    address: Mapped[str] = mapped_column(String(300), default="")
    # Inside the county seat's town (街道): on scene within 10 minutes; elsewhere 30.
    urban: Mapped[bool] = mapped_column(default=False)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"))
    # Symptom onset when the caller knows it (the thrombolysis window counts from it).
    onset_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    state: Mapped[CallState] = mapped_column(_enum(CallState), default=CallState.ANSWERED)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    departed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    on_scene_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    left_scene_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    at_hospital_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ambulance_id: Mapped[int | None] = mapped_column(ForeignKey("ambulances.id"), index=True)
    station_organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"))
    destination_organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"), index=True)
    # What the dispatcher was shown: the ranked ambulances with minutes, the destination with its reasons.
    recommendation: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    pathway_case_id: Mapped[int | None] = mapped_column(Integer, index=True)
    ecg_request_id: Mapped[int | None] = mapped_column(ForeignKey("consult_requests.id"), index=True)
    # "120" (a phone call), "ecg_centre" (a STEMI found by the ECG centre) or "transfer" (between members).
    source: Mapped[str] = mapped_column(String(20), default="120")
    from_organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"))
    created_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    dispatched_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    close_reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CallEvent(Base):
    """Every change of a call (answer, dispatch, state moves, cancellation), with who, when and why."""

    __tablename__ = "emergency_call_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    call_id: Mapped[int] = mapped_column(ForeignKey("emergency_calls.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(30))
    from_state: Mapped[str] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    reason: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Ambulance(Base):
    __tablename__ = "ambulances"
    __table_args__ = (Index("ix_ambulances_station_state", "station_organisation_id", "state"),
                      Index("ix_ambulances_state", "state"))

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)  # 城区-01
    plate: Mapped[str] = mapped_column(String(20), default="")
    kind: Mapped[AmbulanceKind] = mapped_column(_enum(AmbulanceKind))
    station_organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    state: Mapped[AmbulanceState] = mapped_column(_enum(AmbulanceState), default=AmbulanceState.AVAILABLE)
    latitude: Mapped[float] = mapped_column(Float)
    longitude: Mapped[float] = mapped_column(Float)
    state_changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    current_call_id: Mapped[int | None] = mapped_column(Integer)
    has_ecg_transmitter: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AmbulanceStateChange(Base):
    """The ambulance log: each state change with time, position and who."""

    __tablename__ = "ambulance_state_changes"
    __table_args__ = (Index("ix_ambulance_state_changes_ambulance_at", "ambulance_id", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ambulance_id: Mapped[int] = mapped_column(ForeignKey("ambulances.id", ondelete="CASCADE"))
    call_id: Mapped[int | None] = mapped_column(ForeignKey("emergency_calls.id"), index=True)
    from_state: Mapped[str] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    # "gps" (the crew's browser), "station", "scene", "destination" or "" (unknown).
    position_source: Mapped[str] = mapped_column(String(20), default="")
    by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    reason: Mapped[str] = mapped_column(Text, default="")


class ResponseTarget(Base):
    """The national pre-hospital targets, as data a county may tighten (seeded by the migration).

    answer_seconds 10 (≥ 95 %), depart_minutes 3 (≥ 95 %), urban_on_scene 10 and rural_on_scene 30 minutes
    ("1030"). `required_share` is None where the rule names no share.
    """

    __tablename__ = "emergency_response_targets"

    code: Mapped[str] = mapped_column(String(40), primary_key=True)
    limit_value: Mapped[float] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(10))  # "seconds" | "minutes"
    required_share: Mapped[float | None] = mapped_column(Float)
    description: Mapped[str] = mapped_column(String(200), default="")


class EmergencySetting(Base):
    """Tunable numbers of the dispatch rules (mobile-ICU preference margin, thrombolysis window ...)."""

    __tablename__ = "emergency_settings"

    key: Mapped[str] = mapped_column(String(60), primary_key=True)
    value: Mapped[float] = mapped_column(Float)
    description: Mapped[str] = mapped_column(String(200), default="")
