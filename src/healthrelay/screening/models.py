"""Screening tables: the services an event can offer (data), events, who attended, their results, school imports.

A county tunes `screening_services` (seeded by migration 0019): each service names the values it records
(`fields`) and when a result is abnormal (`rule`), so a new service is a new row, not new code. Attendance rows
carry the tablet's `client_token`, unique, so a registration retried over a slow connection is stored once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from healthrelay.core.db import Base, UTCDateTime, utcnow

EVENT_KINDS = ("free_clinic", "mobile_checkup", "school_checkup")


class ScreeningService(Base):
    """One service of an event: bp (血压), glucose (血糖), tcm_pulse (中医体质辨识), tumour_risk, bone_density, ecg, dr,
    height_weight, vision, dental, acupuncture, consultation.

    `fields`: [{"key": "sbp", "zh": "收缩压", "en": "Systolic", "type": "int" | "float" | "choice" | "text",
    "unit": "mmHg", "required": true, "min": .., "max": .., "choices": [[code, zh, en], ...]}].
    `rule`: {"type": "bp" | "glucose" | "bmi" | "choice" | "below" | "at_least" | "none", ...}; see
    screening.service.judge.
    """

    __tablename__ = "screening_services"

    code: Mapped[str] = mapped_column(String(30), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    name_en: Mapped[str] = mapped_column(String(100), default="")
    sort_order: Mapped[int] = mapped_column(Integer, default=0)
    fields: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    rule: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class ScreeningEvent(Base):
    """A free clinic (义诊), a mobile check-up (巡回体检, with the exam vehicle) or a school check-up.

    status: planned → open (registration and results accepted) → closed. The counts a county reports that are
    not rows (leaflets, medicines handed out) are typed in by the organiser.
    """

    __tablename__ = "screening_events"
    __table_args__ = (Index("ix_screening_events_host_start", "host_organisation_id", "starts_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(30), unique=True)  # SC20261205-0001
    kind: Mapped[str] = mapped_column(String(20))
    title: Mapped[str] = mapped_column(String(200))
    host_organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    place: Mapped[str] = mapped_column(String(200), default="")
    area_id: Mapped[int | None] = mapped_column(ForeignKey("areas.id"))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    departments: Mapped[list[str]] = mapped_column(JSON, default=list)  # 心内科, 内分泌科, 中医科 ...
    services: Mapped[list[str]] = mapped_column(JSON, default=list)  # screening_services codes
    status: Mapped[str] = mapped_column(String(10), default="planned")
    leaflets_given: Mapped[int] = mapped_column(Integer, default=0)
    medicines_given: Mapped[int] = mapped_column(Integer, default=0)  # packs handed out
    medicines_value_fen: Mapped[int] = mapped_column(Integer, default=0)
    notes: Mapped[str] = mapped_column(Text, default="")
    created_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ScreeningAttendance(Base):
    """One resident at one event (at most once). `how`: resident_id, match, chosen, new, import."""

    __tablename__ = "screening_attendances"
    __table_args__ = (UniqueConstraint("event_id", "patient_id", name="uq_screening_attendance_event_patient"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("screening_events.id"))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    client_token: Mapped[str] = mapped_column(String(64), unique=True)
    how: Mapped[str] = mapped_column(String(12), default="match")
    school: Mapped[str] = mapped_column(String(100), default="")
    grade: Mapped[str] = mapped_column(String(20), default="")
    class_name: Mapped[str] = mapped_column(String(20), default="")
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    registered_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class ScreeningResult(Base):
    """One service's values for one attendance (entered again, it is replaced); an abnormal one makes a task."""

    __tablename__ = "screening_results"
    __table_args__ = (
        UniqueConstraint("attendance_id", "service_code", name="uq_screening_result_attendance_service"),
        Index("ix_screening_results_event_service", "event_id", "service_code"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    attendance_id: Mapped[int] = mapped_column(ForeignKey("screening_attendances.id"))
    event_id: Mapped[int] = mapped_column(ForeignKey("screening_events.id"))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    service_code: Mapped[str] = mapped_column(ForeignKey("screening_services.code"))
    values: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    abnormal: Mapped[bool] = mapped_column(Boolean, default=False)
    danger: Mapped[bool] = mapped_column(Boolean, default=False)
    finding: Mapped[str] = mapped_column(String(300), default="")
    task_id: Mapped[int | None] = mapped_column(ForeignKey("chronic_tasks.id"))
    # The chronic reading this result made (a known hypertensive's BP, a diabetic's glucose): entered again, that
    # reading is corrected rather than a second one added.
    reading_id: Mapped[int | None] = mapped_column(ForeignKey("chronic_readings.id"))
    recorded_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ScreeningImport(Base):
    """A school check-up sheet imported into an event; `errors`: [{"row", "field", "message"}]."""

    __tablename__ = "screening_imports"

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("screening_events.id"), index=True)
    filename: Mapped[str] = mapped_column(String(200))
    rows_total: Mapped[int] = mapped_column(Integer, default=0)
    rows_imported: Mapped[int] = mapped_column(Integer, default=0)
    rows_skipped: Mapped[int] = mapped_column(Integer, default=0)  # already at the event (a re-import)
    rows_failed: Mapped[int] = mapped_column(Integer, default=0)
    residents_new: Mapped[int] = mapped_column(Integer, default=0)
    abnormal_findings: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    imported_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
