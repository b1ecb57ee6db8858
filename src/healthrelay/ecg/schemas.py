"""Request and response shapes of the tele-ECG API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class QualityFlagOut(BaseModel):
    code: str
    message: str
    lead: str = ""
    blocking: bool


class RecordingOut(BaseModel):
    """One received ECG: where it came from, whom it belongs to, its quality and its request."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    uid: str
    consult_request_id: int
    organisation_id: int
    patient_id: int | None
    patient_match: str
    match_note: str
    source_format: str
    received_via: str
    device: str
    acquired_at: datetime | None
    received_at: datetime
    sample_rate: float
    duration_s: float
    lead_names: list[str]
    quality_flags: list[QualityFlagOut]
    measurable: bool
    viewer_url: str = ""
    request_url: str = ""


class MeasurementsOut(BaseModel):
    """The automatic read: preliminary until the reader confirms or corrects it in the report."""

    recording_id: int
    preliminary: bool = True
    measurable: bool
    measurements: dict[str, Any]
    measure_note: str
    suggested_codes: list[str]
    quality_flags: list[QualityFlagOut]


class SamplesOut(BaseModel):
    recording_id: int
    sample_rate: float
    units: str
    lead_names: list[str]
    leads: dict[str, list[int]]


class LinkPatientIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    patient_id: int
    reason: str = Field(default="", max_length=500)


class StatementOut(BaseModel):
    code: str
    group: str
    zh: str
    en: str
    critical: bool
    territory: str
