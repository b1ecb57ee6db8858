"""Request and response shapes of the consultation-request API."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from healthrelay.teleconsult.models import ConsultKind, ConsultState, Priority


class RequestCreate(BaseModel):
    """A request to a reading centre. The patient's written (or a guardian's) consent is required;
    `emergency_waiver` only for an emergency, with `consent_note` saying why consent could not wait."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    patient_id: int
    centre_id: int
    kind: ConsultKind = ConsultKind.IMAGING
    priority: Priority = Priority.ROUTINE
    clinical_question: str = Field(min_length=1, max_length=2000)
    case_summary: str = Field(default="", max_length=20000)
    wanted_specialty_id: int | None = None
    wanted_grade: str = Field(default="", max_length=20)
    consent_kind: str = Field(max_length=20)
    consent_note: str = Field(default="", max_length=500)


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: str = Field(default="", max_length=2000)


class ReassignIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    to_user_id: int
    reason: str = Field(default="", max_length=2000)


class TransitionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    action: str
    from_state: str
    to_state: str
    by_user_id: int | None
    at: datetime
    reason: str
    detail: dict[str, Any]


class EscalationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    level: int
    at: datetime
    notified_user_ids: list[int]


class StudyRef(BaseModel):
    study_instance_uid: str
    modalities: str
    description: str
    study_date: date | None
    number_of_instances: int
    viewer_url: str


class RequestOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    number: str
    kind: ConsultKind
    priority: Priority
    state: ConsultState
    patient_id: int | None
    inviting_organisation_id: int
    inviting_department_id: int | None
    requested_by_user_id: int | None
    centre_id: int
    invited_organisation_id: int
    wanted_specialty_id: int | None
    wanted_grade: str
    clinical_question: str
    created_via: str
    report_due_at: datetime
    overdue: bool = False
    accepted_at: datetime | None
    claimed_by_user_id: int | None
    claimed_at: datetime | None
    reported_at: datetime | None
    closed_at: datetime | None
    created_at: datetime


class RequestDetail(RequestOut):
    case_summary: str
    consent_kind: str
    consent_recorded_by_user_id: int | None
    consent_at: datetime | None
    decline_reason: str
    transitions: list[TransitionOut]
    studies: list[StudyRef] = []
    escalations: list[EscalationOut] = []


class WorklistItem(RequestOut):
    """A worklist row: what a reader needs to pick the next study, the patient's name masked."""

    patient_masked_name: str = ""
    inviting_organisation_name: str = ""
    claimed_by_name: str = ""
    modalities: list[str] = []
    studies: list[StudyRef] = []
    minutes_left: int = 0  # negative when overdue


class CentreOut(BaseModel):
    id: int
    code: str
    name: str
    kind: ConsultKind
    organisation_id: int
    organisation_name: str
    department_id: int | None
