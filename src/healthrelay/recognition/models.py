"""Mutual recognition (检查检验结果互认) tables.

Rules a county tunes are data, seeded by migration 0015: which organisation passed which external quality
assessment (室间质评) and at what scope, how long a result stays valid, what a repeat costs, and the national
list of reasons that justify ordering a recognisable result again. Orders and the decision taken at ordering
(use the prior result, or order again with a reason) are kept so the repeats page can count both.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from healthrelay.core.db import Base, UTCDateTime, utcnow


class EqaRecord(Base):
    """One external quality assessment result of an organisation for one year.

    It covers a single code, or a whole lab category, or an examination modality (exactly one of the three is
    set). Scope is where the assessment counts: "national" (全国HR), "province" (省HR) or "alliance" (医共体HR).
    """

    __tablename__ = "eqa_records"
    __table_args__ = (Index("ix_eqa_records_org_year", "organisation_id", "year"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    code: Mapped[str] = mapped_column(String(40), default="")
    category: Mapped[str] = mapped_column(String(20), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    scope: Mapped[str] = mapped_column(String(20))
    year: Mapped[int] = mapped_column(Integer)
    passed: Mapped[bool] = mapped_column(default=True)
    program: Mapped[str] = mapped_column(String(200), default="")  # programme or certificate, as printed
    recorded_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RecognitionValidity(Base):
    """How many days a result stays recognisable: per code, else modality, else category, else the blank row.

    Local defaults seeded by 0015 (a county edits them on /recognition/settings): chemistry 30 days (glucose 7,
    it changes quickly), electrolytes 7, HbA1c 60, blood count 7, cardiac markers 1, coagulation 7; CT 90, DR 30,
    ultrasound 30, MR 180, ECG 7, pathology 365, endoscopy 180; anything else 30.
    """

    __tablename__ = "recognition_validity"
    __table_args__ = (UniqueConstraint("code", "category", "modality", name="uq_recognition_validity_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), default="")
    category: Mapped[str] = mapped_column(String(20), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    days: Mapped[int] = mapped_column(Integer)
    note: Mapped[str] = mapped_column(String(200), default="")


class RecognitionPrice(Base):
    """What one test or examination costs the patient, in fen (分), looked up like the validity windows."""

    __tablename__ = "recognition_prices"
    __table_args__ = (UniqueConstraint("code", "category", "modality", name="uq_recognition_prices_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), default="")
    category: Mapped[str] = mapped_column(String(20), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    price_fen: Mapped[int] = mapped_column(Integer)


class ReorderReason(Base):
    """The national exceptions (医疗机构检查检验结果互认管理办法 2022) that justify ordering a recognisable result
    again; some need a free-text note."""

    __tablename__ = "reorder_reasons"

    code: Mapped[str] = mapped_column(String(40), primary_key=True)
    name_zh: Mapped[str] = mapped_column(String(100))
    name_en: Mapped[str] = mapped_column(String(100))
    needs_note: Mapped[bool] = mapped_column(default=False)
    position: Mapped[int] = mapped_column(Integer, default=100)
    is_active: Mapped[bool] = mapped_column(default=True)


class ClinicalOrder(Base):
    """A test or examination ordered for a patient: in the platform (web, API) or by a member's HIS (HL7)."""

    __tablename__ = "clinical_orders"
    __table_args__ = (
        Index("uq_clinical_orders_placer", "ordering_organisation_id", "placer_number", unique=True,
              postgresql_where=text("placer_number <> ''"), sqlite_where=text("placer_number <> ''")),
        Index("ix_clinical_orders_patient", "patient_id", "ordered_at"),
        Index("ix_clinical_orders_org", "ordering_organisation_id", "ordered_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(40), unique=True)  # JC20261204-0042
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    ordering_organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    ordered_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    ordering_provider: Mapped[str] = mapped_column(String(100), default="")  # as the HIS named the doctor
    performing_organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"))
    code: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(8))  # lab | exam
    name: Mapped[str] = mapped_column(String(200), default="")
    placer_number: Mapped[str] = mapped_column(String(40), default="")
    # placed: to be done; satisfied: answered by a recognised prior result; cancelled.
    status: Mapped[str] = mapped_column(String(12), default="placed")
    source: Mapped[str] = mapped_column(String(10), default="web")  # web | api | hl7
    clinical_note: Mapped[str] = mapped_column(Text, default="")
    ordered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    hl7_message_id: Mapped[int | None] = mapped_column(Integer)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_reason: Mapped[str] = mapped_column(String(200), default="")


class RecognitionDecision(Base):
    """What happened to an order that had recognisable priors: recognised (the prior answers it), repeated with a
    recorded reason, or repeated without one (an HL7 order; flagged for the ordering organisation).

    The price is copied at decision time so a later price change does not rewrite last year's savings.
    """

    __tablename__ = "recognition_decisions"
    __table_args__ = (
        Index("ix_recognition_decisions_org_at", "organisation_id", "decided_at"),
        Index("ix_recognition_decisions_at", "decided_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("clinical_orders.id"), unique=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))  # the ordering organisation
    outcome: Mapped[str] = mapped_column(String(12))  # recognised | repeated | unreasoned
    code: Mapped[str] = mapped_column(String(40))
    prior_kind: Mapped[str] = mapped_column(String(8))  # lab | exam
    prior_lab_result_id: Mapped[int | None] = mapped_column(ForeignKey("lab_results.id"))
    prior_exam_result_id: Mapped[int | None] = mapped_column(ForeignKey("exam_results.id"))
    prior_organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    prior_reported_at: Mapped[datetime] = mapped_column(UTCDateTime)
    prior_scope: Mapped[str] = mapped_column(String(20), default="")
    priors_offered: Mapped[int] = mapped_column(Integer, default=1)
    reason_code: Mapped[str | None] = mapped_column(ForeignKey("reorder_reasons.code"))
    reason_note: Mapped[str] = mapped_column(Text, default="")
    price_fen: Mapped[int] = mapped_column(Integer, default=0)
    decided_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # A flagged (unreasoned) repeat gets its reason later from the ordering organisation.
    resolved_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
