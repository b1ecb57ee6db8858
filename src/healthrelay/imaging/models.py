"""Imaging tables: the modalities allowed to send, and the index of received studies, series and instances.

The pixel data lives in a storage backend (local files or Orthanc); these rows are the index the
worklists, QIDO-RS searches and the viewer read, so no query ever opens a DICOM file.
"""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Date, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from healthrelay.core.db import Base, UTCDateTime, utcnow
from healthrelay.directory.models import _enum


class PatientMatch(enum.StrEnum):
    MATCHED = "matched"  # found in the master patient index
    UNMATCHED = "unmatched"  # flagged: nobody in the index fits the DICOM patient module
    MANUAL = "manual"  # linked by hand after being flagged


class Modality(Base):
    """A device (or gateway) registered to send images: calling AE titles not listed here are refused."""

    __tablename__ = "imaging_modalities"

    id: Mapped[int] = mapped_column(primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    modality_type: Mapped[str] = mapped_column(String(16))  # DICOM (0008,0060): CT, DX, CR, MR, US, ECG ...
    name: Mapped[str] = mapped_column(String(200), default="")
    # The doctor told about this device's studies when nobody else asked for them (critical results).
    contact_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    is_active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ImagingStudy(Base):
    __tablename__ = "imaging_studies"
    __table_args__ = (
        Index("ix_imaging_studies_patient_date", "patient_id", "study_date"),
        Index("ix_imaging_studies_org_received", "organisation_id", "received_at"),
        Index("ix_imaging_studies_match", "patient_match", "received_at"),
        Index("ix_imaging_studies_received", "received_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"))
    patient_match: Mapped[PatientMatch] = mapped_column(_enum(PatientMatch), default=PatientMatch.UNMATCHED)
    match_note: Mapped[str] = mapped_column(String(300), default="")
    # The member that examined the patient (the sending modality's organisation).
    organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"))
    modality_id: Mapped[int | None] = mapped_column(ForeignKey("imaging_modalities.id"))
    consult_request_id: Mapped[int | None] = mapped_column(ForeignKey("consult_requests.id"), index=True)
    modalities_in_study: Mapped[str] = mapped_column(String(64), default="")  # "CT" or "CT\\SR"
    study_date: Mapped[date | None] = mapped_column(Date)
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="", index=True)
    study_id: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(200), default="")
    referring_physician: Mapped[str] = mapped_column(String(200), default="")
    # The DICOM patient module as received (the index keeps what the device sent, even when matched).
    dicom_patient_name: Mapped[str] = mapped_column(String(200), default="")
    dicom_patient_id: Mapped[str] = mapped_column(String(64), default="")
    dicom_birth_date: Mapped[str] = mapped_column(String(8), default="")
    dicom_sex: Mapped[str] = mapped_column(String(1), default="")
    number_of_series: Mapped[int] = mapped_column(Integer, default=0)
    number_of_instances: Mapped[int] = mapped_column(Integer, default=0)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    series: Mapped[list[ImagingSeries]] = relationship(back_populates="study", order_by="ImagingSeries.series_number")


class ImagingSeries(Base):
    __tablename__ = "imaging_series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("imaging_studies.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(String(200), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    number_of_instances: Mapped[int] = mapped_column(Integer, default=0)

    study: Mapped[ImagingStudy] = relationship(back_populates="series")


class ImagingInstance(Base):
    __tablename__ = "imaging_instances"
    __table_args__ = (Index("ix_imaging_instances_series_number", "series_id", "instance_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("imaging_studies.id", ondelete="CASCADE"), index=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("imaging_series.id", ondelete="CASCADE"))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    number_of_frames: Mapped[int] = mapped_column(Integer, default=1)
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    # Where the backend keeps it: a path under the data dir, or an Orthanc instance id.
    storage_backend: Mapped[str] = mapped_column(String(20), default="local")
    storage_key: Mapped[str] = mapped_column(String(300))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    received_via: Mapped[str] = mapped_column(String(20))  # "dimse" or "stow"
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Tags the viewer and WADO-RS metadata need without opening the file (window, spacing ...).
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
