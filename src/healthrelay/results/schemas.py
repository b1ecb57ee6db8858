"""What goes into the results repository (from the API, the HL7 mapping and the remote diagnosis centre) and what
comes out of the API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class LabResultIn(BaseModel):
    patient_id: int
    organisation_id: int  # the performing lab
    test_code: str  # a code of result_codes or one of its aliases
    test_name: str = ""
    value: str
    unit: str = ""
    reference_range: str = ""
    abnormal_flag: str = ""  # "" = computed from the reference range
    specimen: str = ""
    collected_at: datetime | None = None
    reported_at: datetime
    status: str = "final"
    order_number: str = ""
    filler_number: str = ""
    ordering_organisation_id: int | None = None
    ordered_by_user_id: int | None = None


class ExamResultIn(BaseModel):
    patient_id: int
    organisation_id: int  # where the examination was performed
    exam_code: str = ""  # "" = found from modality and body part
    modality: str = ""
    body_part: str = ""
    exam_name: str = ""
    performed_at: datetime
    reported_at: datetime
    findings: str = ""
    impression: str = ""
    study_instance_uid: str = ""
    consult_request_id: int | None = None
    order_number: str = ""
    filler_number: str = ""
    ordering_organisation_id: int | None = None
    critical: bool = False


class ResultCodeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    code: str
    kind: str
    name_zh: str
    name_en: str
    category: str
    modality: str
    body_part: str
    unit: str
    reference_range: str
    critical_low: float | None
    critical_high: float | None
    loinc: str
    aliases: list[str]


class LabResultOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    patient_id: int
    organisation_id: int
    organisation_name: str = ""
    ordering_organisation_id: int | None
    order_number: str
    filler_number: str
    test_code: str
    test_name: str
    value_text: str
    value_numeric: float | None
    unit: str
    reference_range: str
    abnormal_flag: str
    specimen: str
    collected_at: datetime | None
    reported_at: datetime
    status: str
    critical: bool
    recognition_scope: str
    hr_mark: str = ""
    source: str
    created_at: datetime


class ExamResultOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    patient_id: int
    organisation_id: int
    organisation_name: str = ""
    ordering_organisation_id: int | None
    exam_code: str
    exam_name: str
    category: str
    modality: str
    body_part: str
    performed_at: datetime
    reported_at: datetime
    findings: str
    impression: str
    recognition_scope: str
    hr_mark: str = ""
    study_instance_uid: str
    consult_request_id: int | None
    order_number: str
    filler_number: str
    critical: bool
    source: str
    links: dict[str, str] = {}
    created_at: datetime


class PatientResultsOut(BaseModel):
    patient_id: int
    lab: list[LabResultOut]
    exam: list[ExamResultOut]
