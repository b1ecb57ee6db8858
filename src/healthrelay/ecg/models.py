"""ECG tables: one row per received tracing, with its samples, quality flags and automatic measurements.

The recording is what the ECG centre reads; the reading itself (claim, report, critical loop) is the
teleconsult request it belongs to, so every ECG is on the centre's worklist from the moment it arrives.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from healthrelay.core.db import Base, UTCDateTime, utcnow

# How the patient was found: given by the uploader, matched on the device's demographics, linked by hand,
# or not (flagged for a person to link).
MATCH_GIVEN = "given"
MATCH_MATCHED = "matched"
MATCH_MANUAL = "manual"
MATCH_UNMATCHED = "unmatched"


class EcgRecording(Base):
    __tablename__ = "ecg_recordings"
    __table_args__ = (
        Index("ix_ecg_recordings_org_received", "organisation_id", "received_at"),
        Index("ix_ecg_recordings_patient", "patient_id", "received_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # The device's identity of the tracing (DICOM SOP Instance UID, aECG id, or a hash of the files):
    # the same tracing sent twice is one recording.
    uid: Mapped[str] = mapped_column(String(128), unique=True)
    consult_request_id: Mapped[int] = mapped_column(ForeignKey("consult_requests.id"), index=True)
    # The member that recorded it (the uploader's organisation, or the sending device's).
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"))
    patient_match: Mapped[str] = mapped_column(String(20), default=MATCH_UNMATCHED)
    match_note: Mapped[str] = mapped_column(String(300), default="")
    # What the device said about the patient (name, resident_id, record_number, birth_date, sex).
    demographics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    source_format: Mapped[str] = mapped_column(String(20))  # dicom, aecg, csv, wfdb
    received_via: Mapped[str] = mapped_column(String(10))  # web, api, dicom, stow
    device: Mapped[str] = mapped_column(String(200), default="")
    uploaded_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    acquired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the clinic first saw the patient (接诊), if the uploader says: the chest-pain pathway's first medical
    # contact for a STEMI found on this tracing, which no ambulance can supply when the village came first.
    first_contact_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sample_rate: Mapped[float] = mapped_column(Float)
    duration_s: Mapped[float] = mapped_column(Float)
    lead_names: Mapped[list[str]] = mapped_column(JSON, default=list)
    # int16 microvolts per lead, numpy .npz (compressed), in lead_names order. Loaded only when asked for.
    samples: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    # The files as received (a zip), kept for the record and for export.
    original: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    sha256: Mapped[str] = mapped_column(String(64))
    # [{code, message, lead, blocking}]: a blocking flag means no automatic measurement.
    quality_flags: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    measurable: Mapped[bool] = mapped_column(default=False)
    # The automatic (preliminary) read: Measurements.as_dict(); empty when not measured.
    measurements: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    measure_note: Mapped[str] = mapped_column(Text, default="")  # why it was not measured
    suggested_codes: Mapped[list[str]] = mapped_column(JSON, default=list)
    number_of_leads: Mapped[int] = mapped_column(Integer, default=0)
