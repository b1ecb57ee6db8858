"""Remote consultation (远程会诊) tables: requests to a reading centre, their reports and critical results.

One request/worklist/report machine serves imaging now and ECG and pathology next: the request says
what kind of reading it wants; the centre's readers claim it from a worklist sorted by deadline.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from healthrelay.core.db import Base, UTCDateTime, utcnow
from healthrelay.directory.models import _enum


class ConsultKind(enum.StrEnum):
    IMAGING = "imaging"  # 远程影像诊断
    ECG = "ecg"  # 远程心电诊断
    PATHOLOGY = "pathology"  # 远程病理诊断
    SPECIALIST = "specialist"  # 专科会诊
    MDT = "mdt"  # 多学科会诊


class Priority(enum.StrEnum):
    EMERGENCY = "emergency"
    URGENT = "urgent"
    ROUTINE = "routine"


class ConsultState(enum.StrEnum):
    REQUESTED = "requested"  # waiting for the centre to accept or decline
    ACCEPTED = "accepted"  # on the centre's worklist
    DECLINED = "declined"
    PRELIMINARY = "preliminary"  # a trainee's report waiting for a senior's co-signature
    REPORTED = "reported"  # signed: the requester can read it
    CANCELLED = "cancelled"


class ReadingCentre(Base):
    """A resource-sharing centre (资源共享中心) that reads for the members: imaging, ECG, pathology ..."""

    __tablename__ = "reading_centres"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[ConsultKind] = mapped_column(_enum(ConsultKind))
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"))
    is_active: Mapped[bool] = mapped_column(default=True)


class ConsultDeadline(Base):
    """How long the centre has to report, per priority; data, so the alliance can change it."""

    __tablename__ = "consult_deadlines"

    priority: Mapped[str] = mapped_column(String(20), primary_key=True)
    report_minutes: Mapped[int] = mapped_column(Integer)


class TeleconsultSetting(Base):
    """Tunable numbers of the remote-diagnosis rules (critical-result acknowledgement minutes ...)."""

    __tablename__ = "teleconsult_settings"

    key: Mapped[str] = mapped_column(String(60), primary_key=True)
    value: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(String(200), default="")


class RoutingRule(Base):
    """Which centre reads a study nobody asked for: modality type + sending organisation → centre, priority.

    Empty fields match anything; the most specific active rule (then the lowest `position`) wins.
    """

    __tablename__ = "consult_routing_rules"

    id: Mapped[int] = mapped_column(primary_key=True)
    modality_type: Mapped[str] = mapped_column(String(16), default="")
    from_organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"))
    centre_id: Mapped[int] = mapped_column(ForeignKey("reading_centres.id"))
    priority: Mapped[Priority] = mapped_column(_enum(Priority), default=Priority.ROUTINE)
    position: Mapped[int] = mapped_column(Integer, default=100)
    is_active: Mapped[bool] = mapped_column(default=True)


class ConsultRequest(Base):
    __tablename__ = "consult_requests"
    __table_args__ = (
        # The reading worklist: a centre's open requests by deadline, read in index order (partial).
        Index("ix_consult_open_centre_due", "centre_id", "report_due_at",
              postgresql_where=text("state IN ('requested', 'accepted', 'preliminary')"),
              sqlite_where=text("state IN ('requested', 'accepted', 'preliminary')")),
        Index("ix_consult_from_org_created", "inviting_organisation_id", "created_at"),
        Index("ix_consult_invited_org_created", "invited_organisation_id", "created_at"),
        Index("ix_consult_claimed_by", "claimed_by_user_id", "state"),
        Index("ix_consult_patient", "patient_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(40), unique=True)  # YC20261123-0042
    kind: Mapped[ConsultKind] = mapped_column(_enum(ConsultKind))
    priority: Mapped[Priority] = mapped_column(_enum(Priority))
    state: Mapped[ConsultState] = mapped_column(_enum(ConsultState), default=ConsultState.REQUESTED)
    # A study that could not be matched to a resident still gets read; the patient is linked later.
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"))
    # 邀请方: who asks.
    inviting_organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    inviting_department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"))
    requested_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    # 受邀方: the centre that reads.
    centre_id: Mapped[int] = mapped_column(ForeignKey("reading_centres.id"))
    invited_organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    wanted_specialty_id: Mapped[int | None] = mapped_column(ForeignKey("specialties.id"))
    wanted_grade: Mapped[str] = mapped_column(String(20), default="")  # a directory TitleGrade
    clinical_question: Mapped[str] = mapped_column(Text, default="")
    case_summary: Mapped[str] = mapped_column(Text, default="")
    consent_kind: Mapped[str] = mapped_column(String(20), default="")  # written / guardian / emergency_waiver
    consent_recorded_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    consent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # "web", "api", "dimse" or "stow": requests created by routing rules come from the receiver.
    created_via: Mapped[str] = mapped_column(String(10), default="web")
    report_due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    accepted_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    decline_reason: Mapped[str] = mapped_column(Text, default="")
    claimed_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    transitions: Mapped[list[ConsultTransition]] = relationship(
        back_populates="request", order_by="ConsultTransition.id")


class ConsultTransition(Base):
    """Every move of a request (state changes, claims, releases, reassignments), with who, when and why."""

    __tablename__ = "consult_transitions"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("consult_requests.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(30))  # accept, decline, claim, release, reassign, report, sign ...
    from_state: Mapped[str] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    reason: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    request: Mapped[ConsultRequest] = relationship(back_populates="transitions")


class ConsultEscalation(Base):
    """An overdue request: level 1 tells the centre's department head, level 2 the centre's 医务科."""

    __tablename__ = "consult_escalations"
    __table_args__ = (UniqueConstraint("request_id", "level"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("consult_requests.id", ondelete="CASCADE"), index=True)
    level: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    notified_user_ids: Mapped[list[int]] = mapped_column(JSON, default=list)


class ReportState(enum.StrEnum):
    DRAFT = "draft"
    AWAITING_COSIGN = "awaiting_cosign"  # signed by a trainee, waiting for a senior
    SIGNED = "signed"


class Report(Base):
    """The structured report. Once signed its content is fixed (content_sha256); changes are addenda."""

    __tablename__ = "consult_reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("consult_requests.id", ondelete="CASCADE"), unique=True)
    state: Mapped[ReportState] = mapped_column(_enum(ReportState), default=ReportState.DRAFT)
    author_user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    technique: Mapped[str] = mapped_column(Text, default="")
    findings: Mapped[str] = mapped_column(Text, default="")
    impression: Mapped[str] = mapped_column(Text, default="")
    recommendation: Mapped[str] = mapped_column(Text, default="")
    critical: Mapped[bool] = mapped_column(default=False)
    critical_finding: Mapped[str] = mapped_column(Text, default="")
    # Mutual recognition (互认): the mark's scope ("county", "province", "national") or "" for none.
    recognition_scope: Mapped[str] = mapped_column(String(20), default="")
    # Coded content of the report (ECG: {"codes", "measurements", "rhythm_note"}); {} for free-text reports.
    structured: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default=text("'{}'"))
    signed_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    signed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cosigned_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    cosigned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # SHA-256 of the canonical signed content (fields, signer, time), so any later edit shows.
    content_sha256: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    addenda: Mapped[list[ReportAddendum]] = relationship(back_populates="report", order_by="ReportAddendum.id")


class ReportAddendum(Base):
    """A signed amendment; the original report stays as it was signed."""

    __tablename__ = "consult_report_addenda"

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("consult_reports.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)
    signed_by_user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    content_sha256: Mapped[str] = mapped_column(String(64))

    report: Mapped[Report] = relationship(back_populates="addenda")


class CriticalState(enum.StrEnum):
    OPEN = "open"  # waiting for someone to acknowledge
    ACKNOWLEDGED = "acknowledged"


class CriticalResult(Base):
    """A critical finding (危急值) and its loop: notified at once, escalated until someone acknowledges.

    Either a consult request's signed report (request_id, report_id) or a critical lab value (lab_result_id);
    exactly one of the two is set. `organisation_id` is the organisation answerable for acting on it: the
    inviting member of a request, the ordering (else performing) organisation of a lab value.
    """

    __tablename__ = "critical_results"
    __table_args__ = (
        Index("ix_critical_open_due", "ack_due_at",
              postgresql_where=text("state = 'open'"), sqlite_where=text("state = 'open'")),
        Index("ix_critical_flagged_at", "flagged_at"),
        CheckConstraint("(request_id IS NULL) <> (lab_result_id IS NULL)", name="one_subject"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int | None] = mapped_column(ForeignKey("consult_requests.id", ondelete="CASCADE"),
                                                   unique=True)
    report_id: Mapped[int | None] = mapped_column(ForeignKey("consult_reports.id", ondelete="CASCADE"))
    lab_result_id: Mapped[int | None] = mapped_column(ForeignKey("lab_results.id", ondelete="CASCADE"), unique=True)
    organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"), index=True)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"))
    state: Mapped[CriticalState] = mapped_column(_enum(CriticalState), default=CriticalState.OPEN)
    finding: Mapped[str] = mapped_column(Text)
    # Nobody when a lab value arrived over HL7 without an interface account.
    flagged_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    flagged_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The requesting doctor, who must acknowledge first.
    notify_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    ack_due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    level: Mapped[int] = mapped_column(Integer, default=0)  # 0 requester, 1 department head, 2+ medical affairs
    acknowledged_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The read-back telephone call that goes with an acknowledgement.
    call_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    call_number: Mapped[str] = mapped_column(String(40), default="")
    call_spoken_to: Mapped[str] = mapped_column(String(100), default="")
    call_read_back: Mapped[bool] = mapped_column(default=False)
    action_taken: Mapped[str] = mapped_column(Text, default="")

    events: Mapped[list[CriticalResultEvent]] = relationship(
        back_populates="critical_result", order_by="CriticalResultEvent.id")


class CriticalResultEvent(Base):
    """Every step of the loop, timestamped: flagged, notified (per channel), escalated, called, acknowledged."""

    __tablename__ = "critical_result_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    critical_result_id: Mapped[int] = mapped_column(ForeignKey("critical_results.id", ondelete="CASCADE"),
                                                    index=True)
    kind: Mapped[str] = mapped_column(String(30))
    level: Mapped[int] = mapped_column(Integer, default=0)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    critical_result: Mapped[CriticalResult] = relationship(back_populates="events")
