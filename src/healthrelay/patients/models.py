"""Master patient index: one person, one record, many identifiers across the alliance."""

from __future__ import annotations

import enum
from datetime import date, datetime

from sqlalchemy import JSON, Date, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from healthrelay.core.db import Base, UTCDateTime, utcnow
from healthrelay.directory.models import _enum


class Sex(enum.StrEnum):
    MALE = "M"
    FEMALE = "F"
    UNKNOWN = "U"


class IdentifierType(enum.StrEnum):
    RESIDENT_ID = "resident_id"  # 居民身份证
    INSURANCE_CARD = "insurance_card"  # 医保卡
    MEDICAL_RECORD = "medical_record"  # per-organisation record number (病案号/门诊号)


class Patient(Base):
    __tablename__ = "patients"
    __table_args__ = (
        Index("ix_patients_birth_date_sex", "birth_date", "sex"),
        Index("ix_patients_pinyin_initials", "pinyin_initials"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    pinyin: Mapped[str] = mapped_column(String(200), index=True)  # "zhang san"
    pinyin_initials: Mapped[str] = mapped_column(String(20))  # "zs"
    sex: Mapped[Sex] = mapped_column(_enum(Sex))
    birth_date: Mapped[date] = mapped_column(Date)
    phone: Mapped[str] = mapped_column(String(40), default="", index=True)
    # Village (or urban community) of residence, and the grid (网格) inside it.
    area_id: Mapped[int | None] = mapped_column(ForeignKey("areas.id"), index=True)
    grid: Mapped[str] = mapped_column(String(60), default="")
    address_line: Mapped[str] = mapped_column(String(300), default="")
    # Set when this record was merged into another; every lookup then follows the survivor.
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), index=True)
    deceased_on: Mapped[date | None] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", use_alter=True))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    identifiers: Mapped[list[PatientIdentifier]] = relationship(
        back_populates="patient", cascade="all, delete-orphan")
    registrations: Mapped[list[PatientRegistration]] = relationship(
        back_populates="patient", cascade="all, delete-orphan")


class PatientIdentifier(Base):
    __tablename__ = "patient_identifiers"
    __table_args__ = (
        # The same number can only identify one person (per issuer for record numbers).
        UniqueConstraint("type", "issuer_organisation_id", "value", name="uq_patient_identifiers_value"),
        # NULLs are distinct in unique constraints, so national identifiers need their own index.
        Index("uq_patient_identifiers_national", "type", "value", unique=True,
              sqlite_where=text("issuer_organisation_id IS NULL"),
              postgresql_where=text("issuer_organisation_id IS NULL")),
        Index("ix_patient_identifiers_value", "value"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    type: Mapped[IdentifierType] = mapped_column(_enum(IdentifierType))
    value: Mapped[str] = mapped_column(String(64))
    # Only record numbers have an issuer; NULL for national identifiers.
    issuer_organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"))

    patient: Mapped[Patient] = relationship(back_populates="identifiers")


class PatientRegistration(Base):
    """The patient is registered (建档) at an organisation: the first care relationship."""

    __tablename__ = "patient_registrations"
    __table_args__ = (UniqueConstraint("patient_id", "organisation_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    registered_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))

    patient: Mapped[Patient] = relationship(back_populates="registrations")


class TeamPanelEntry(Base):
    """A resident on a family-doctor team's panel (签约/管理): a care relationship for its members."""

    __tablename__ = "team_panel_entries"
    __table_args__ = (UniqueConstraint("team_id", "patient_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"), index=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    since: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PatientMerge(Base):
    """A merge of a duplicate into a survivor; `moved` lists every row re-pointed so undo is exact."""

    __tablename__ = "patient_merges"

    id: Mapped[int] = mapped_column(primary_key=True)
    survivor_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    merged_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    reason: Mapped[str] = mapped_column(Text)
    # {"table.column": [primary keys...]} of rows that pointed at merged_id before the merge.
    moved: Mapped[dict[str, list[int]]] = mapped_column(JSON, default=dict)
    merged_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    merged_by_user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    undone_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    undone_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    undo_reason: Mapped[str] = mapped_column(Text, default="")
