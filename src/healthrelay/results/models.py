"""Results tables: the test and examination dictionary, lab results and examination reports from every member.

A result is stored once, whoever produced it (entered on the platform, signed by the remote diagnosis centre,
received over HL7), with the performing organisation and the mutual-recognition scope it carried when it was
recorded, so the patient-wide view and the recognition rules read one place.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from healthrelay.core.db import Base, UTCDateTime, utcnow

LAB = "lab"
EXAM = "exam"
# HL7 v2 table 0078 flags we accept: normal, high, low, critically high/low, abnormal, critically abnormal.
ABNORMAL_FLAGS = ("", "N", "H", "L", "HH", "LL", "A", "AA")
CRITICAL_FLAGS = frozenset({"HH", "LL", "AA"})
STATUSES = ("final", "corrected", "preliminary")
SOURCES = ("entered", "hl7", "centre")


class JSONList(TypeDecorator[list[str]]):
    """A list kept as JSON text. Seeded rows of this table are copied back verbatim by the PostgreSQL test
    harness (tests/conftest.py restores seeded rows after truncation), which cannot pass a Python list to a native
    json column; as text the same round trip works on both databases."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: list[str] | None, dialect: Any) -> str:
        return json.dumps(list(value or []), ensure_ascii=False)

    def process_result_value(self, value: str | None, dialect: Any) -> list[str]:
        return list(json.loads(value)) if value else []


class ResultCode(Base):
    """One test or examination a member may report, with what a county tunes: names, unit, reference range,
    critical limits and the other codes senders use for it (LOINC, common Chinese LIS codes)."""

    __tablename__ = "result_codes"

    code: Mapped[str] = mapped_column(String(40), primary_key=True)  # local mnemonic: GLU, K, CT_HEAD ...
    kind: Mapped[str] = mapped_column(String(8))  # lab | exam
    name_zh: Mapped[str] = mapped_column(String(100))
    name_en: Mapped[str] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(20))  # chemistry, electrolyte, ... / imaging, ultrasound, ecg ...
    modality: Mapped[str] = mapped_column(String(16), default="")  # "" for labs; CT, DR, MR, US, ECG, PATH, ES
    body_part: Mapped[str] = mapped_column(String(40), default="")  # DICOM body part (HEAD, CHEST ...); "" = any
    unit: Mapped[str] = mapped_column(String(40), default="")  # "" = a qualitative (text) test
    reference_range: Mapped[str] = mapped_column(String(60), default="")  # "3.5-5.3", "<5.2", "阴性"
    critical_low: Mapped[float | None] = mapped_column(Float)
    critical_high: Mapped[float | None] = mapped_column(Float)
    loinc: Mapped[str] = mapped_column(String(20), default="")
    aliases: Mapped[list[str]] = mapped_column(JSONList, default=list)


class LabResult(Base):
    """One test result (检验结果) as the performing lab reported it."""

    __tablename__ = "lab_results"
    __table_args__ = (
        Index("ix_lab_results_patient_test_reported", "patient_id", "test_code", "reported_at"),
        # The lab's own number for the result (HL7 OBR-3) makes a resend a no-op and a correction an update.
        Index("uq_lab_results_filler", "organisation_id", "filler_number", "test_code", unique=True,
              postgresql_where=text("filler_number <> ''"), sqlite_where=text("filler_number <> ''")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))  # the performing lab
    ordering_organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"))
    ordered_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    order_number: Mapped[str] = mapped_column(String(40), default="")  # placer (ORC-2 / OBR-2)
    filler_number: Mapped[str] = mapped_column(String(40), default="")  # filler (ORC-3 / OBR-3)
    test_code: Mapped[str] = mapped_column(String(40))  # always the local code of result_codes
    test_name: Mapped[str] = mapped_column(String(200))
    value_text: Mapped[str] = mapped_column(String(200))
    value_numeric: Mapped[float | None] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(40), default="")
    reference_range: Mapped[str] = mapped_column(String(60), default="")
    abnormal_flag: Mapped[str] = mapped_column(String(4), default="")
    specimen: Mapped[str] = mapped_column(String(60), default="")
    collected_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reported_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(12), default="final")
    critical: Mapped[bool] = mapped_column(default=False)
    recognition_scope: Mapped[str] = mapped_column(String(20), default="")  # "" = no HR mark
    source: Mapped[str] = mapped_column(String(10))  # entered | hl7 | centre
    hl7_message_id: Mapped[int | None] = mapped_column(Integer)  # no FK: the message log may be pruned
    entered_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ExamResult(Base):
    """One examination report (检查报告): imaging, ultrasound, ECG, pathology, endoscopy."""

    __tablename__ = "exam_results"
    __table_args__ = (
        Index("ix_exam_results_patient_exam_performed", "patient_id", "exam_code", "performed_at"),
        Index("uq_exam_results_filler", "organisation_id", "filler_number", "exam_code", unique=True,
              postgresql_where=text("filler_number <> ''"), sqlite_where=text("filler_number <> ''")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))  # where it was performed
    ordering_organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"))
    exam_code: Mapped[str] = mapped_column(String(40))
    exam_name: Mapped[str] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(20))
    modality: Mapped[str] = mapped_column(String(16), default="")
    body_part: Mapped[str] = mapped_column(String(40), default="")
    performed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reported_at: Mapped[datetime] = mapped_column(UTCDateTime)
    findings: Mapped[str] = mapped_column(Text, default="")
    impression: Mapped[str] = mapped_column(Text, default="")
    recognition_scope: Mapped[str] = mapped_column(String(20), default="")
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    # Written from a signed remote-diagnosis report: one result per request.
    consult_request_id: Mapped[int | None] = mapped_column(ForeignKey("consult_requests.id"), unique=True)
    order_number: Mapped[str] = mapped_column(String(40), default="")
    filler_number: Mapped[str] = mapped_column(String(40), default="")
    critical: Mapped[bool] = mapped_column(default=False)
    source: Mapped[str] = mapped_column(String(10))
    hl7_message_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
