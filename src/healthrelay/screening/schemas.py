"""API models of the screening domain. Formats are checked again in the service, which names each problem."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from healthrelay.screening.service import EventCounts


class ServiceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    code: str
    name: str
    name_en: str
    fields: list[dict[str, Any]]
    rule: dict[str, Any]


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    kind: str = Field(max_length=20)
    title: str = Field(max_length=200)
    host_organisation_id: int
    starts_at: datetime
    ends_at: datetime
    services: list[str] = Field(max_length=20)
    team_id: int | None = None
    place: str = Field(default="", max_length=200)
    area_id: int | None = None
    departments: list[str] = Field(default_factory=list, max_length=20)
    notes: str = Field(default="", max_length=4000)


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    number: str
    kind: str
    title: str
    host_organisation_id: int
    team_id: int | None
    place: str
    area_id: int | None
    starts_at: datetime
    ends_at: datetime
    departments: list[str]
    services: list[str]
    status: str
    leaflets_given: int
    medicines_given: int
    medicines_value_fen: int


class EventDetailOut(EventOut):
    counts: EventCounts | None = None


class StatusIn(BaseModel):
    status: str = Field(max_length=10)


class CountsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    leaflets_given: int = 0
    medicines_given: int = 0
    medicines_value_fen: int = 0


class RegisterIn(BaseModel):
    """A quick registration; `client_token` is made once per form so a retried POST is stored once."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    client_token: str = Field(max_length=64)
    resident_id: str = Field(default="", max_length=30)
    name: str = Field(default="", max_length=50)
    sex: str = Field(default="", max_length=1)
    birth_date: date | None = None
    phone: str = Field(default="", max_length=30)
    village: int | None = None
    # Picked from the likely duplicates shown, sent with the same details as before: the pick must be one of the
    # candidates for them (or hold the resident ID given), else 422 naming patient_id.
    patient_id: int | None = None
    confirm_new: bool = False  # looked at them: a different person


class AttendanceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    event_id: int
    patient_id: int
    how: str
    registered_at: datetime


class ResultIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service_code: str = Field(max_length=30)
    values: dict[str, Any]


class ResultOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    attendance_id: int
    service_code: str
    values: dict[str, Any]
    abnormal: bool
    danger: bool
    finding: str
    task_id: int | None


class ImportOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    event_id: int
    filename: str
    rows_total: int
    rows_imported: int
    rows_skipped: int
    rows_failed: int
    residents_new: int
    abnormal_findings: int
    errors: list[dict[str, Any]]
