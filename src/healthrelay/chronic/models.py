"""Chronic disease management (慢病管理) tables: registries, family-doctor contracts, readings, follow-ups,
worklist calls and team tasks.

What a county tunes is data seeded by migration 0018: the conditions (hypertension and type 2 diabetes
today, each with its thresholds and visit rules in `rules`), the service packages of family-doctor
contracts, and the call outcomes with the days they hide a patient from the overdue list.

An enrolment carries a few denormalised columns (next visit due, the latest blood pressure and glucose,
risk level, last contact) kept current by `chronic.service` and `chronic.followups` at every reading and
visit, so the overdue worklist and the county indicators read one indexed table instead of scanning
years of visits.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Date, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from healthrelay.core.db import Base, UTCDateTime, utcnow


class ChronicCondition(Base):
    """A registry: "htn" (高血压) and "t2dm" (2型糖尿病) seeded; another is a new row.

    `rules` holds the thresholds (keys seeded by 0018): visits_per_year 4, review_days 14,
    referral_check_days 14, bp_target [140, 90], bp_target_elderly [150, 90], elderly_age 65,
    danger_sbp 180, danger_dbp 110, glucose_high 16.7, glucose_low 3.9, fpg_target 7.0,
    control_window_days 90, lost_after_days 365, prevalence (share of adults, for the management rate),
    uses_bp / uses_glucose (which readings decide control).
    """

    __tablename__ = "chronic_conditions"

    code: Mapped[str] = mapped_column(String(20), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    name_en: Mapped[str] = mapped_column(String(100), default="")
    icd10_prefixes: Mapped[list[str]] = mapped_column(JSON, default=list)
    rules: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    active: Mapped[bool] = mapped_column(default=True)


class ChronicEnrolment(Base):
    """One resident in one registry (高血压/糖尿病患者管理卡).

    status: "active", "moved" (迁出), "died", "closed" (other reason, in `closed_reason`).
    The columns from `next_visit_due` down are derived (see module docstring); `next_visit_kind` says why
    the next visit is due: "routine" (quarterly), "review" (2-week review after an uncontrolled visit),
    "first" (new enrolment). `risk_level`: 3 danger (last SBP ≥ 180 or DBP ≥ 110, glucose ≥ 16.7 or ≤ 3.9),
    2 uncontrolled, adverse reaction or complication at the last visit, 1 otherwise.
    """

    __tablename__ = "chronic_enrolments"
    __table_args__ = (
        UniqueConstraint("patient_id", "condition_code", name="uq_chronic_enrolment_patient_condition"),
        # The team's overdue worklist: active rows of one team by due date.
        Index("ix_chronic_enrolments_team_due", "team_id", "status", "next_visit_due"),
        Index("ix_chronic_enrolments_village", "village_area_id", "condition_code", "status"),
        Index("ix_chronic_enrolments_org", "organisation_id", "condition_code", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    condition_code: Mapped[str] = mapped_column(ForeignKey("chronic_conditions.code"))
    # The managing centre (township/community) and family-doctor team; the village of residence at enrolment.
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    village_area_id: Mapped[int | None] = mapped_column(ForeignKey("areas.id"))
    diagnosed_on: Mapped[date] = mapped_column(Date)
    # clinic, screening, referral, school, device, self_report, transfer
    source: Mapped[str] = mapped_column(String(20), default="clinic")
    risk_factors: Mapped[list[str]] = mapped_column(JSON, default=list)  # smoking, obesity, dyslipidaemia, ...
    complications: Mapped[list[str]] = mapped_column(JSON, default=list)  # stroke, chd, ckd, retinopathy, ...
    # [{"name": "氨氯地平", "dose": "5mg", "frequency": "qd"}]
    medicines: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(10), default="active")
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    enrolled_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_reason: Mapped[str] = mapped_column(String(200), default="")

    # ---- derived, kept current by the service on every reading and visit
    next_visit_due: Mapped[date | None] = mapped_column(Date)
    next_visit_kind: Mapped[str] = mapped_column(String(10), default="first")
    last_visit_on: Mapped[date | None] = mapped_column(Date)  # last face-to-face follow-up
    last_classification: Mapped[str] = mapped_column(String(20), default="")
    uncontrolled_streak: Mapped[int] = mapped_column(Integer, default=0)  # uncontrolled visits in a row
    last_sbp: Mapped[int | None] = mapped_column(Integer)
    last_dbp: Mapped[int | None] = mapped_column(Integer)
    last_bp_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_glucose: Mapped[float | None] = mapped_column(Float)  # mmol/L, fasting when known
    last_glucose_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_contact_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # any reading or visit
    risk_level: Mapped[int] = mapped_column(Integer, default=1)
    hidden_until: Mapped[date | None] = mapped_column(Date)  # a call outcome hides the row until then


class ServicePackage(Base):
    """A family-doctor service package (签约服务包), data: basic (free), chronic, elderly, maternal-child..."""

    __tablename__ = "service_packages"

    code: Mapped[str] = mapped_column(String(30), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    name_en: Mapped[str] = mapped_column(String(100), default="")
    price_fen: Mapped[int] = mapped_column(Integer, default=0)  # the resident's share per year
    items: Mapped[list[str]] = mapped_column(JSON, default=list)
    active: Mapped[bool] = mapped_column(default=True)


class FamilyDoctorContract(Base):
    """家庭医生签约: a resident signed to one team for a period; at most one active contract per resident.

    status: "active", "ended" (period over or ended early, reason kept), "cancelled". Signing also puts the
    resident on the team's panel (`team_panel_entries`), the care relationship the access policy reads.
    """

    __tablename__ = "family_doctor_contracts"
    __table_args__ = (
        Index("ix_fd_contracts_patient_status", "patient_id", "status"),
        Index("ix_fd_contracts_team_status", "team_id", "status", "ends_on"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(30), unique=True)  # QY20261205-0001
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"))
    package_code: Mapped[str] = mapped_column(ForeignKey("service_packages.code"))
    starts_on: Mapped[date] = mapped_column(Date)
    ends_on: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(10), default="active")
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    signed_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_reason: Mapped[str] = mapped_column(String(200), default="")


class MonitoringPoint(Base):
    """A place where readings are taken: village blood-pressure point (村血压监测点), clinic, pharmacy,
    a home device. `device_serials` lets a device CSV export name its point."""

    __tablename__ = "monitoring_points"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20), default="village_point")  # village_point, clinic, pharmacy, home
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    area_id: Mapped[int | None] = mapped_column(ForeignKey("areas.id"), index=True)
    device_serials: Mapped[list[str]] = mapped_column(JSON, default=list)
    active: Mapped[bool] = mapped_column(default=True)


class ChronicReading(Base):
    """A blood pressure ("bp": sbp/dbp/pulse) or glucose ("glucose": mmol/L with its context) reading.

    source: manual, device_csv, follow_up (the BP/glucose of a visit), screening. A device export's own
    record id makes a re-import a no-op (unique with the device serial).
    """

    __tablename__ = "chronic_readings"
    __table_args__ = (
        Index("ix_chronic_readings_patient_time", "patient_id", "measured_at"),
        Index("ix_chronic_readings_point_time", "point_id", "measured_at"),
        UniqueConstraint("device_serial", "device_record_id", name="uq_chronic_readings_device_record"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    point_id: Mapped[int | None] = mapped_column(ForeignKey("monitoring_points.id"))
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    kind: Mapped[str] = mapped_column(String(10))  # bp, glucose
    measured_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sbp: Mapped[int | None] = mapped_column(Integer)
    dbp: Mapped[int | None] = mapped_column(Integer)
    pulse: Mapped[int | None] = mapped_column(Integer)
    glucose_mmol: Mapped[float | None] = mapped_column(Float)
    glucose_context: Mapped[str] = mapped_column(String(12), default="")  # fasting, random, post_meal
    source: Mapped[str] = mapped_column(String(12), default="manual")
    # NULL (not "") when absent, so the unique constraint only binds device rows.
    device_serial: Mapped[str | None] = mapped_column(String(60))
    device_record_id: Mapped[str | None] = mapped_column(String(60))
    recorded_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ChronicFollowUp(Base):
    """A follow-up visit per the national basic public-health specification (随访服务记录表).

    mode: clinic (门诊), home (家庭), phone (电话), online; face-to-face means clinic or home.
    classification: controlled (控制满意), uncontrolled (控制不满意), adverse_reaction (不良反应),
    complication (并发症). `referral_id`: the upward referral proposed at this visit, if any.
    """

    __tablename__ = "chronic_follow_ups"
    __table_args__ = (
        Index("ix_chronic_follow_ups_enrolment_date", "enrolment_id", "visit_on"),
        Index("ix_chronic_follow_ups_patient_date", "patient_id", "visit_on"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    enrolment_id: Mapped[int] = mapped_column(ForeignKey("chronic_enrolments.id"))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    condition_code: Mapped[str] = mapped_column(ForeignKey("chronic_conditions.code"))
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    visit_on: Mapped[date] = mapped_column(Date)
    mode: Mapped[str] = mapped_column(String(10), default="clinic")
    symptoms: Mapped[list[str]] = mapped_column(JSON, default=list)  # codes, "none" for 无症状
    sbp: Mapped[int | None] = mapped_column(Integer)
    dbp: Mapped[int | None] = mapped_column(Integer)
    heart_rate: Mapped[int | None] = mapped_column(Integer)
    weight_kg: Mapped[float | None] = mapped_column(Float)
    height_cm: Mapped[float | None] = mapped_column(Float)
    bmi: Mapped[float | None] = mapped_column(Float)
    # Lifestyle: {"smoking_per_day": 0, "drinking_liang_per_day": 0, "exercise_per_week": 3,
    # "exercise_minutes": 30, "salt": "light|medium|heavy", "mood": "good|fair|poor",
    # "compliance": "good|fair|poor"}
    lifestyle: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    medicines: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    adherence: Mapped[str] = mapped_column(String(12), default="regular")  # regular, intermittent, none
    side_effects: Mapped[str] = mapped_column(Text, default="")  # empty when none
    fasting_glucose: Mapped[float | None] = mapped_column(Float)  # mmol/L (diabetes)
    hba1c: Mapped[float | None] = mapped_column(Float)  # %
    foot_pulse: Mapped[str] = mapped_column(String(20), default="")  # normal, weak_left, weak_right, weak_both, absent
    hypoglycaemia: Mapped[str] = mapped_column(String(12), default="")  # none, occasional, frequent
    classification: Mapped[str] = mapped_column(String(20))
    next_visit_on: Mapped[date | None] = mapped_column(Date)
    referral_id: Mapped[int | None] = mapped_column(ForeignKey("referrals.id"))
    note: Mapped[str] = mapped_column(Text, default="")
    recorded_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CallOutcomeRule(Base):
    """What a worklist call outcome does (data): hide the patient from the overdue list for `hide_days`,
    and/or close the enrolment with a status ("moved", "died")."""

    __tablename__ = "call_outcome_rules"

    code: Mapped[str] = mapped_column(String(30), primary_key=True)  # agreed_to_visit, call_later, moved, died
    name: Mapped[str] = mapped_column(String(100))
    name_en: Mapped[str] = mapped_column(String(100), default="")
    hide_days: Mapped[int] = mapped_column(Integer, default=0)
    closes_with_status: Mapped[str] = mapped_column(String(10), default="")


class ChronicCall(Base):
    """A call from the overdue worklist and its outcome."""

    __tablename__ = "chronic_calls"
    __table_args__ = (Index("ix_chronic_calls_enrolment_time", "enrolment_id", "called_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    enrolment_id: Mapped[int] = mapped_column(ForeignKey("chronic_enrolments.id"))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    outcome_code: Mapped[str] = mapped_column(ForeignKey("call_outcome_rules.code"))
    hidden_until: Mapped[date | None] = mapped_column(Date)
    note: Mapped[str] = mapped_column(Text, default="")
    called_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    called_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class ChronicTask(Base):
    """A piece of work for a family-doctor team about one resident.

    kind: "referral_check" (check on an upward referral 2 weeks after it was proposed), "screening"
    (an abnormal finding at a free clinic or check-up), "review" (other). status: open, done, cancelled.
    """

    __tablename__ = "chronic_tasks"
    __table_args__ = (Index("ix_chronic_tasks_team_status_due", "team_id", "status", "due_on"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    kind: Mapped[str] = mapped_column(String(20))
    title: Mapped[str] = mapped_column(String(300))
    detail: Mapped[str] = mapped_column(Text, default="")
    due_on: Mapped[date] = mapped_column(Date)
    enrolment_id: Mapped[int | None] = mapped_column(ForeignKey("chronic_enrolments.id"))
    referral_id: Mapped[int | None] = mapped_column(ForeignKey("referrals.id"))
    # Set by the screening domain; a plain integer so chronic does not depend on screening's tables.
    screening_result_id: Mapped[int | None] = mapped_column(Integer, index=True)
    status: Mapped[str] = mapped_column(String(10), default="open")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    done_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    outcome: Mapped[str] = mapped_column(Text, default="")
