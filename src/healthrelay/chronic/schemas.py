"""Request and response models of the chronic registry API (enrolments, readings, contracts, team panels)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from healthrelay.core.ids import MAX_ID, Id, IdPath, IdQuery, is_id  # noqa: F401 - the domain's id types

MAX_OFFSET = 100_000  # a page of a list no one scrolls that far; a bigger OFFSET is refused
Code = Annotated[str, Field(max_length=40)]


class MedicineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=60)
    dose: str = Field("", max_length=30)
    frequency: str = Field(max_length=10, description="qd, bid, tid, qid, qn, qw, prn")


class EnrolmentIn(BaseModel):
    """Put a resident in a registry; a closed enrolment of the same condition is reopened."""

    model_config = ConfigDict(extra="forbid")

    patient_id: Id
    condition_code: str = Field(max_length=20, description="htn | t2dm")
    diagnosed_on: date
    source: str = Field("clinic", max_length=20)
    risk_factors: list[Code] = Field(default_factory=list, max_length=20)
    complications: list[Code] = Field(default_factory=list, max_length=20)
    medicines: list[MedicineIn] = Field(default_factory=list, max_length=20)
    team_id: Id | None = None


class EnrolmentUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    risk_factors: list[Code] | None = Field(None, max_length=20)
    complications: list[Code] | None = Field(None, max_length=20)
    medicines: list[MedicineIn] | None = Field(None, max_length=20)


class EnrolmentClose(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: str = Field(max_length=10, description="moved | died | closed")
    reason: str = Field("", max_length=200)


class EnrolmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    patient_id: int
    condition_code: str
    organisation_id: int
    team_id: int | None
    village_area_id: int | None
    diagnosed_on: date
    source: str
    risk_factors: list[str]
    complications: list[str]
    medicines: list[dict[str, Any]]
    status: str
    enrolled_at: datetime
    closed_at: datetime | None
    closed_reason: str
    next_visit_due: date | None
    next_visit_kind: str
    last_visit_on: date | None
    last_sbp: int | None
    last_dbp: int | None
    last_bp_at: datetime | None
    last_glucose: float | None
    last_glucose_at: datetime | None
    last_contact_at: datetime | None
    risk_level: int


class ReadingIn(BaseModel):
    """A blood pressure (kind "bp": sbp, dbp, optional pulse) or glucose (kind "glucose": mmol/L) reading.
    `measured_at` must carry its time zone (e.g. 2026-12-05T08:30:00+08:00)."""

    model_config = ConfigDict(extra="forbid")

    patient_id: Id
    kind: str = Field(max_length=10, description="bp | glucose")
    measured_at: AwareDatetime
    sbp: int | None = Field(None, ge=-1000, le=1000)
    dbp: int | None = Field(None, ge=-1000, le=1000)
    pulse: int | None = Field(None, ge=-1000, le=1000)
    glucose: float | None = Field(None, ge=-1000, le=1000)
    glucose_context: str = Field("", max_length=12, description="'' | fasting | random | post_meal")
    point_id: Id | None = None


class ReadingOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    patient_id: int
    point_id: int | None
    organisation_id: int
    kind: str
    measured_at: datetime
    sbp: int | None
    dbp: int | None
    pulse: int | None
    glucose_mmol: float | None
    glucose_context: str
    source: str
    danger: bool = False


class ImportErrorOut(BaseModel):
    row: int
    field: str
    message: str


class ImportReportOut(BaseModel):
    filename: str
    point_id: int
    total: int
    added: int
    duplicates: int
    failed: int
    danger: int
    errors: list[ImportErrorOut]


class ContractIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patient_id: Id
    team_id: Id
    package_code: str = Field(max_length=30)
    starts_on: date
    years: int = Field(1, ge=1, le=3)


class ContractEnd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(max_length=200)


class ContractOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    number: str
    patient_id: int
    team_id: int
    package_code: str
    starts_on: date
    ends_on: date
    status: str
    signed_at: datetime
    ended_at: datetime | None
    ended_reason: str


class PanelRowOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    patient_id: int
    name: str
    sex: str
    birth_date: date
    contract_number: str
    starts_on: date
    ends_on: date
    package_code: str
    package_name: str
    conditions: list[str]
    next_visit_due: date | None
    risk_level: int


class PanelOut(BaseModel):
    team_id: int
    team_name: str
    total: int
    page: int
    pages: int
    rows: list[PanelRowOut]


class PointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(max_length=40)
    name: str = Field(max_length=200)
    organisation_id: Id
    kind: str = Field("village_point", max_length=20)
    area_id: Id | None = None
    device_serials: list[Annotated[str, Field(max_length=60)]] = Field(default_factory=list, max_length=50)


class PointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    code: str
    name: str
    kind: str
    organisation_id: int
    area_id: int | None
    device_serials: list[str]
    active: bool
