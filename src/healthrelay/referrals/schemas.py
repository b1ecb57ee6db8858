"""Request and response shapes of the referral API."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from healthrelay.referrals.models import Direction, State, Urgency


class ReferralCreate(BaseModel):
    """An upward referral; `"send": true` sends it at once (consent must then be recorded)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    patient_id: int
    to_organisation_id: int
    to_department_id: int | None = None
    wanted_specialty_id: int | None = None
    urgency: Urgency = Urgency.ROUTINE
    reason: str = Field(min_length=1, max_length=2000)
    diagnosis_code: str = Field(default="", max_length=12)
    diagnosis_text: str = Field(default="", max_length=300)
    case_summary: str = Field(default="", max_length=20000)
    vital_signs: dict[str, Any] = Field(default_factory=dict)
    medicines: list[Any] = Field(default_factory=list)
    # written / verbal / guardian: the patient's consent, taken by the caller now.
    consent_kind: str | None = Field(default=None, max_length=20)
    send: bool = False


class FollowUpItem(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    due_on: date
    kind: str = Field(min_length=1, max_length=60)
    note: str = Field(default="", max_length=500)


class CarePlan(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    diagnosis: str = Field(default="", max_length=300)
    medicines: list[Any] = Field(default_factory=list)
    follow_up: list[FollowUpItem] = Field(min_length=1)
    warning_signs: list[str] = Field(default_factory=list)


class DownReferralCreate(BaseModel):
    """下转 to a township/community centre or one of its family-doctor teams; sent at once."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    patient_id: int
    to_organisation_id: int
    to_team_id: int | None = None
    urgency: Urgency = Urgency.ROUTINE
    reason: str = Field(default="", max_length=2000)
    diagnosis_code: str = Field(default="", max_length=12)
    diagnosis_text: str = Field(default="", max_length=300)
    case_summary: str = Field(default="", max_length=20000)
    consent_kind: str | None = Field(default=None, max_length=20)
    care_plan: CarePlan
    # The upward referral that brought the patient to this hospital, if any.
    parent_referral_id: int | None = None


class AcceptIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    appointment_at: datetime | None = None
    bed: str = Field(default="", max_length=60)


class DeclineIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: str = Field(default="", max_length=2000)
    suggested_alternative_organisation_id: int | None = None


class RedirectIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    to_organisation_id: int
    to_department_id: int | None = None
    reason: str = Field(default="", max_length=2000)


class CompleteIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    outcome: str = Field(default="", max_length=2000)


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: str = Field(default="", max_length=2000)


class SendBackUpIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: str = Field(default="", max_length=2000)
    urgency: Urgency = Urgency.URGENT
    consent_kind: str = Field(default="verbal", max_length=20)
    to_department_id: int | None = None


class TransitionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    from_state: str
    to_state: str
    by_user_id: int | None
    at: datetime
    reason: str
    detail: dict[str, Any]


class ReferralOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    number: str
    direction: Direction
    urgency: Urgency
    state: State
    patient_id: int
    from_organisation_id: int
    from_user_id: int
    to_organisation_id: int
    to_department_id: int | None
    to_team_id: int | None
    wanted_specialty_id: int | None
    response_due_at: datetime | None
    overdue: bool = False
    appointment_at: datetime | None
    bed: str
    created_at: datetime
    sent_at: datetime | None
    parent_referral_id: int | None


class ReferralDetail(ReferralOut):
    reason: str
    diagnosis_code: str
    diagnosis_text: str
    case_summary: str
    vital_signs: dict[str, Any]
    medicines: list[Any]
    consent_kind: str
    consent_recorded_by_user_id: int | None
    consent_at: datetime | None
    decline_reason: str
    suggested_alternative_organisation_id: int | None
    outcome: str
    care_plan: dict[str, Any]
    history: list[Any]
    transitions: list[TransitionOut]


class AttachmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    referral_id: int
    filename: str
    content_type: str
    size_bytes: int
    sha256: str
    description: str
    uploaded_by_user_id: int
    uploaded_at: datetime


class EscalationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    round: int
    level: int
    at: datetime
    notified_organisation_id: int | None
    notified_department_id: int | None
    notified_user_ids: list[int]


class ReferralFull(ReferralDetail):
    """The detail plus what lives in other tables: attachments and escalations."""

    attachments: list[AttachmentOut] = []
    escalations: list[EscalationOut] = []


class DepartmentRef(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    specialty_id: int | None


class TargetSuggestionOut(BaseModel):
    organisation_id: int
    organisation_name: str
    level: str
    distance_km: float | None
    departments: list[DepartmentRef]
    reasons: list[str]


class Icd10Out(BaseModel):
    code: str
    name_zh: str
    name_en: str


class FollowUpDoneIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    note: str = Field(default="", max_length=1000)


class FollowUpTaskOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    referral_id: int
    organisation_id: int
    team_id: int | None
    patient_id: int
    due_on: date
    kind: str
    note: str
    done_at: datetime | None
