"""Request and response models of mutual recognition (orders, priors, the repeats report)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from healthrelay.core.ids import MAX_ID, Id  # noqa: F401 - the domain's id types


class ExternalOrderIn(BaseModel):
    """An order from a member's HIS (HL7 ORM^O01 / OML^O21), as hl7/mapping.py reads it."""

    patient_id: Id
    ordering_organisation_id: Id
    code: str
    placer_number: str
    ordered_at: datetime
    action: str = "new"  # "new" (ORC-1 NW) or "cancel" (ORC-1 CA)
    ordering_provider: str = ""
    reason: str = ""
    performing_organisation_id: Id | None = None


class OrderIn(BaseModel):
    """A clinician's order. When the patient has recognisable priors of the code, `decision` is needed:
    "use_prior" (with `prior_ref` such as "exam:12", default the newest prior) or "reorder" with a reason."""

    model_config = ConfigDict(extra="forbid")

    patient_id: Id
    code: str = Field(max_length=40)
    decision: str = Field("", max_length=12, description="'' | use_prior | reorder")
    prior_ref: str = Field("", max_length=30, description="lab:<id> or exam:<id>, from the priors list")
    reason_code: str = Field("", max_length=40)
    reason_note: str = Field("", max_length=1000)
    clinical_note: str = Field("", max_length=2000)
    performing_organisation_id: Id | None = None


class PriorOut(BaseModel):
    ref: str
    kind: str
    id: int
    code: str
    name: str
    organisation_id: int
    organisation_name: str
    reported_at: datetime
    performed_at: datetime | None
    value: str
    abnormal_flag: str
    recognition_scope: str
    recognition_mark: str
    valid_until: datetime
    link: str
    images_link: str


class DecisionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    outcome: str
    prior_kind: str
    prior_lab_result_id: int | None
    prior_exam_result_id: int | None
    prior_organisation_id: int
    prior_reported_at: datetime
    prior_scope: str
    reason_code: str | None
    reason_note: str
    price_fen: int
    decided_at: datetime


class OrderOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    number: str
    patient_id: int
    ordering_organisation_id: int
    ordered_by_user_id: int | None
    code: str
    kind: str
    name: str
    status: str
    source: str
    placer_number: str
    ordered_at: datetime


class OrderResult(BaseModel):
    order: OrderOut
    decision: DecisionOut | None
    priors: list[PriorOut]


class RepeatsRowOut(BaseModel):
    organisation_id: int
    organisation_name: str
    month: str
    recognised: int
    repeated: int
    unreasoned: int
    recognition_rate: float | None
    saved_yuan: float
    repeats_by_reason: dict[str, int]


class RepeatsOut(BaseModel):
    start: str
    end: str
    organisation_id: int | None
    recognised: int
    repeated: int
    unreasoned: int
    recognition_rate: float | None
    saved_yuan: float
    repeats_by_reason: dict[str, int]
    rows: list[RepeatsRowOut]


class EqaIn(BaseModel):
    """One external quality assessment result; exactly one of code, category, modality."""

    model_config = ConfigDict(extra="forbid")

    organisation_id: Id
    scope: str = Field(max_length=20, description="national | province | alliance")
    year: int = Field(ge=2000, le=2100)
    passed: bool = True
    code: str = Field("", max_length=40)
    category: str = Field("", max_length=20)
    modality: str = Field("", max_length=16)
    program: str = Field("", max_length=200)


class EqaOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    organisation_id: int
    code: str
    category: str
    modality: str
    scope: str
    year: int
    passed: bool
    program: str
    recorded_at: datetime
