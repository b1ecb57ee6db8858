"""JSON API of the results repository (mounted under /api/v1). Thin: every rule lives in service.py."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from sqlalchemy.orm import Session

from healthrelay.core.deps import CurrentUser, DbSession, client_address
from healthrelay.core.errors import InvalidInput, field_error
from healthrelay.results import service
from healthrelay.results.models import EXAM, LAB, ExamResult, LabResult
from healthrelay.results.schemas import (
    ExamResultIn,
    ExamResultOut,
    LabResultIn,
    LabResultOut,
    PatientResultsOut,
    ResultCodeOut,
)
from healthrelay.teleconsult.reports import hr_mark

router = APIRouter(tags=["results"])


def lab_out(row: LabResult, names: dict[int, str]) -> LabResultOut:
    return LabResultOut.model_validate(row).model_copy(update={
        "organisation_name": names.get(row.organisation_id, ""), "hr_mark": hr_mark(row.recognition_scope)})


def exam_out(db: Session, row: ExamResult, names: dict[int, str]) -> ExamResultOut:
    return ExamResultOut.model_validate(row).model_copy(update={
        "organisation_name": names.get(row.organisation_id, ""), "hr_mark": hr_mark(row.recognition_scope),
        "links": service.exam_links(db, row)})


@router.get("/patients/{patient_id}/results", response_model=PatientResultsOut)
def patient_results(request: Request, db: DbSession, user: CurrentUser, patient_id: int, kind: str = "",
                    organisation_id: int | None = None, test_code: Annotated[str, Query(max_length=40)] = "",
                    date_from: Annotated[date | None, Query(alias="from")] = None,
                    date_to: Annotated[date | None, Query(alias="to")] = None) -> PatientResultsOut:
    """Every lab and examination result of the patient from every member, newest first (need-to-know)."""
    if kind not in ("", LAB, EXAM):
        raise InvalidInput("kind 须为 lab 或 exam / kind must be lab or exam",
                           field_errors=[field_error("kind", "lab | exam")])
    filters = service.ResultFilters(kind=kind, organisation_id=organisation_id, date_from=date_from,
                                    date_to=date_to, test_code=test_code.strip().upper())
    found = service.patient_results(db, user=user, patient_id=patient_id, filters=filters,
                                    client_address=client_address(request))
    return PatientResultsOut(patient_id=found.patient.id,
                             lab=[lab_out(r, found.organisations) for r in found.labs],
                             exam=[exam_out(db, r, found.organisations) for r in found.exams])


@router.post("/results/lab", response_model=LabResultOut, status_code=status.HTTP_201_CREATED)
def create_lab(body: LabResultIn, db: DbSession, user: CurrentUser) -> LabResultOut:
    """Enter a lab result of your organisation (a resend with the same filler number returns the stored one)."""
    row = service.record_lab_result(db, data=body, source="entered", by=user)
    return lab_out(row, service.organisation_names(db, {row.organisation_id}))


@router.post("/results/exam", response_model=ExamResultOut, status_code=status.HTTP_201_CREATED)
def create_exam(body: ExamResultIn, db: DbSession, user: CurrentUser) -> ExamResultOut:
    """Enter an examination report of your organisation."""
    row = service.record_exam_result(db, data=body, source="entered", by=user)
    return exam_out(db, row, service.organisation_names(db, {row.organisation_id}))


@router.get("/results/codes", response_model=list[ResultCodeOut])
def codes(db: DbSession, user: CurrentUser, kind: str = "", q: Annotated[str, Query(max_length=60)] = "",
          limit: Annotated[int, Query(ge=1, le=200)] = 100) -> list[ResultCodeOut]:
    """The test and examination dictionary; `q` searches code, aliases, names and pinyin."""
    if kind not in ("", LAB, EXAM):
        raise InvalidInput("kind 须为 lab 或 exam / kind must be lab or exam",
                           field_errors=[field_error("kind", "lab | exam")])
    return [ResultCodeOut.model_validate(c) for c in service.search_codes(db, kind=kind, q=q, limit=limit)]
