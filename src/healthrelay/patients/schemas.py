"""Request and response shapes of the master patient index API."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, ConfigDict, Field

from healthrelay.patients.models import IdentifierType, Sex


class PatientCreate(BaseModel):
    """A registration (建档). Formats are checked again in the service, which names each problem."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=50)
    sex: Sex
    birth_date: date
    resident_id: str | None = Field(default=None, max_length=30)
    phone: str = Field(default="", max_length=30)
    area_id: int | None = None
    grid: str = Field(default="", max_length=60)
    address_line: str = Field(default="", max_length=300)
    insurance_card: str | None = Field(default=None, max_length=30)
    # This organisation's own record number (病案号/门诊号); optional.
    record_number: str | None = Field(default=None, max_length=40)
    # Set after looking at the likely-duplicates warning: "these are different people".
    confirm_not_duplicate: bool = False


class PatientUpdate(BaseModel):
    """Only the fields sent are changed."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str | None = Field(default=None, min_length=1, max_length=50)
    sex: Sex | None = None
    birth_date: date | None = None
    resident_id: str | None = Field(default=None, max_length=30)
    phone: str | None = Field(default=None, max_length=30)
    area_id: int | None = None
    grid: str | None = Field(default=None, max_length=60)
    address_line: str | None = Field(default=None, max_length=300)
    deceased_on: date | None = None


class IdentifierCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    type: IdentifierType
    value: str = Field(min_length=1, max_length=64)
    # Record numbers only; defaults to the caller's organisation.
    issuer_organisation_id: int | None = None


class MergeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    survivor_id: int
    merged_id: int
    reason: str = Field(min_length=1, max_length=2000)


class UndoMerge(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: str = Field(min_length=1, max_length=2000)


class IdentifierOut(BaseModel):
    id: int
    type: IdentifierType
    value: str  # masked unless the caller's role needs the full number
    masked: bool
    issuer_organisation_id: int | None = None
    issuer_name: str = ""


class RegistrationOut(BaseModel):
    organisation_id: int
    organisation_name: str
    registered_at: datetime


class PanelOut(BaseModel):
    team_id: int
    team_name: str
    since: datetime


class MergeOut(BaseModel):
    id: int
    survivor_id: int
    merged_id: int
    reason: str
    merged_at: datetime
    merged_by: str = ""
    moved: dict[str, int] = Field(default_factory=dict, description="rows moved per table.column")
    undone_at: datetime | None = None
    undone_by: str = ""
    undo_reason: str = ""


class PatientOut(BaseModel):
    id: int
    # Set when the id asked for was merged into this record.
    requested_id: int | None = None
    name: str
    pinyin: str
    sex: Sex
    birth_date: date
    phone: str
    area_id: int | None
    area_name: str = ""
    grid: str
    address_line: str
    deceased_on: date | None = None
    resident_id: str = ""
    resident_id_masked: bool = True
    identifiers: list[IdentifierOut] = Field(default_factory=list)
    registrations: list[RegistrationOut] = Field(default_factory=list)
    panels: list[PanelOut] = Field(default_factory=list)
    merges: list[MergeOut] = Field(default_factory=list)
    access_purpose: str = ""
    created_at: datetime


class SearchRow(BaseModel):
    """Just enough to tell people apart; details only through the audited record."""

    id: int
    name: str
    sex: Sex
    birth_year: int
    area_name: str = ""
    masked_id: str = ""
    masked_phone: str = ""
    can_open: bool


class CandidateOut(BaseModel):
    patient_id: int
    score: int
    reasons: list[str]
    name: str
    sex: Sex
    birth_date: date
    area_name: str = ""
    masked_id: str = ""
