"""Request and response shapes of the pathway API."""

from __future__ import annotations

from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from healthrelay.pathways.models import CaseState, Centre


class CaseCreate(BaseModel):
    """Open (or join) a case. An open case of the same centre for the same patient from the last 24 h is
    reused: links still empty are filled in, nodes not yet recorded are added."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    centre: Centre
    patient_id: int | None = None
    source: str = Field(default="manual", max_length=20)
    call_id: int | None = None
    ecg_request_id: int | None = None
    hospital_organisation_id: int | None = None
    diagnosis: str = Field(default="", max_length=2000)
    diagnosis_code: str = Field(default="", max_length=30)
    arrival_mode: str | None = Field(default=None, max_length=20)
    bypass_ed: bool | None = None
    nodes: dict[str, AwareDatetime] = Field(default_factory=dict, max_length=30)


class NodeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    node: str = Field(min_length=1, max_length=40)
    at: AwareDatetime
    note: str = Field(default="", max_length=1000)
    reason: str = Field(default="", max_length=1000)
    source: str = Field(default="manual", max_length=20)


class LinkIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    call_id: int | None = None
    ecg_request_id: int | None = None
    hospital_organisation_id: int | None = None
    arrival_mode: str | None = Field(default=None, max_length=20)
    bypass_ed: bool | None = None


class CloseIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    outcome: str = Field(min_length=1, max_length=2000)


class NodeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    node: str
    at: datetime
    recorded_at: datetime
    by_user_id: int | None
    source: str
    note: str


class IntervalOut(BaseModel):
    code: str
    minutes: float | None
    target_minutes: float | None
    on_target: bool | None
    running: bool


class CaseOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    number: str
    centre: Centre
    state: CaseState
    patient_id: int | None
    source: str
    hospital_organisation_id: int | None
    opened_organisation_id: int | None
    ecg_request_id: int | None
    call_id: int | None
    arrival_mode: str
    bypass_ed: bool | None
    diagnosis: str
    diagnosis_code: str
    outcome: str
    opened_at: datetime
    closed_at: datetime | None
    nodes: list[NodeOut] = []
    intervals: list[IntervalOut] = []


class MonthOut(BaseModel):
    month: str
    cases: int
    median: float | None
    mean: float | None
    on_target: int
    share: float | None
    met: bool | None
    missed_case_numbers: list[str]


class MetricOut(BaseModel):
    centre: str
    code: str
    zh: str
    en: str
    target: str
    months: list[MonthOut]
