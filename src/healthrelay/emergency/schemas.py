"""Request and response shapes of the emergency API. The service checks every value and names the field, so
the shapes stay loose where a rule applies (category, priority, coordinates)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class CallCreate(BaseModel):
    """A 120 call as the dispatcher takes it down: a village/town (`area_id`) or coordinates, or both."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    category: str = Field(max_length=32)
    priority: int
    complaint: str = Field(max_length=2000)
    caller_name: str = Field(default="", max_length=100)
    caller_phone: str = Field(default="", max_length=40)
    area_id: int | None = None
    latitude: float | None = None
    longitude: float | None = None
    address: str = Field(default="", max_length=300)
    patient_id: int | None = None
    received_at: AwareDatetime | None = None
    answered_at: AwareDatetime | None = None
    onset_at: AwareDatetime | None = None


class DispatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ambulance_id: int
    destination_organisation_id: int | None = None


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: str = Field(default="", max_length=2000)


class AmbulanceStateIn(BaseModel):
    """A crew's button: the next state, where they are (from the phone's GPS, if it gave one) and why."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    to_state: str = Field(max_length=32)
    latitude: float | None = None
    longitude: float | None = None
    reason: str = Field(default="", max_length=2000)
    expected_state: str | None = Field(default=None, max_length=32)


class CallOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    number: str
    category: str
    priority: int
    state: str
    source: str
    complaint: str
    caller_name: str
    caller_phone: str
    area_id: int | None
    latitude: float
    longitude: float
    address: str
    urban: bool
    patient_id: int | None
    onset_at: datetime | None
    received_at: datetime
    answered_at: datetime | None
    dispatched_at: datetime | None
    departed_at: datetime | None
    on_scene_at: datetime | None
    left_scene_at: datetime | None
    at_hospital_at: datetime | None
    closed_at: datetime | None
    ambulance_id: int | None
    station_organisation_id: int | None
    destination_organisation_id: int | None
    from_organisation_id: int | None
    pathway_case_id: int | None
    ecg_request_id: int | None
    close_reason: str


class CallDetail(CallOut):
    recommendation: dict[str, Any]


class AmbulanceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    code: str
    plate: str
    kind: str
    station_organisation_id: int
    state: str
    latitude: float
    longitude: float
    state_changed_at: datetime
    current_call_id: int | None
    has_ecg_transmitter: bool
    next_states: list[str] = []


class StateChangeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    ambulance_id: int
    call_id: int | None
    from_state: str
    to_state: str
    at: datetime
    latitude: float | None
    longitude: float | None
    position_source: str
    by_user_id: int | None
    reason: str


class AreaOut(BaseModel):
    id: int
    name: str
    level: str
    parent_name: str
    latitude: float | None
    longitude: float | None
    urban: bool
