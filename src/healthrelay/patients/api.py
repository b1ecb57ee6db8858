"""JSON API of the master patient index (mounted under /api/v1)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from healthrelay.core.deps import CurrentUser, DbSession, client_address
from healthrelay.patients import service
from healthrelay.patients.schemas import (
    CandidateOut,
    IdentifierCreate,
    IdentifierOut,
    MergeCreate,
    MergeOut,
    PatientCreate,
    PatientOut,
    PatientUpdate,
    SearchRow,
    UndoMerge,
)

router = APIRouter(prefix="/patients", tags=["patients"])

_CONFLICTS = {409: {"description": "likely duplicates (with `candidates`) or a number already on file "
                                   "(with `existing_patient_id`)"}}


@router.post("", response_model=PatientOut, status_code=status.HTTP_201_CREATED, responses=_CONFLICTS)
def register(body: PatientCreate, request: Request, db: DbSession, user: CurrentUser) -> PatientOut:
    """Register a resident at the caller's organisation. 409 `likely_duplicates` lists the
    candidates with scores and reasons; send again with `"confirm_not_duplicate": true`."""
    address = client_address(request)
    patient = service.register(db, by=user, data=body, confirm_not_duplicate=body.confirm_not_duplicate,
                               client_address=address)
    return service.view(db, user=user, patient=patient, purpose="registration")


@router.get("", response_model=list[SearchRow])
def search(request: Request, db: DbSession, user: CurrentUser,
           q: Annotated[str, Query(max_length=60)] = "",
           limit: Annotated[int, Query(ge=1, le=service.MAX_SEARCH_RESULTS)] = 50) -> list[SearchRow]:
    return service.search(db, user=user, q=q, limit=limit, client_address=client_address(request))


@router.post("/merges", response_model=MergeOut, status_code=status.HTTP_201_CREATED)
def merge(body: MergeCreate, request: Request, db: DbSession, user: CurrentUser) -> MergeOut:
    record = service.merge(db, by=user, survivor_id=body.survivor_id, merged_id=body.merged_id, reason=body.reason,
                           client_address=client_address(request))
    return service.merge_out(db, record)


@router.post("/merges/{merge_id}/undo", response_model=MergeOut)
def undo_merge(merge_id: int, body: UndoMerge, request: Request, db: DbSession, user: CurrentUser) -> MergeOut:
    record = service.undo_merge(db, by=user, merge_id=merge_id, reason=body.reason,
                                client_address=client_address(request))
    return service.merge_out(db, record)


@router.get("/{patient_id}", response_model=PatientOut)
def get_patient(patient_id: int, request: Request, db: DbSession, user: CurrentUser) -> PatientOut:
    """403 `no_care_relationship` (with `patient_id`) without a care relationship or break-glass grant."""
    return service.get(db, user=user, patient_id=patient_id, client_address=client_address(request))


@router.patch("/{patient_id}", response_model=PatientOut)
def update_patient(patient_id: int, body: PatientUpdate, request: Request, db: DbSession,
                   user: CurrentUser) -> PatientOut:
    address = client_address(request)
    patient = service.update(db, by=user, patient_id=patient_id, data=body, client_address=address)
    return service.view(db, user=user, patient=patient)


@router.post("/{patient_id}/identifiers", response_model=IdentifierOut, status_code=status.HTTP_201_CREATED)
def add_identifier(patient_id: int, body: IdentifierCreate, request: Request, db: DbSession,
                   user: CurrentUser) -> IdentifierOut:
    ident = service.add_identifier(db, by=user, patient_id=patient_id, kind=body.type, value=body.value,
                                   issuer_organisation_id=body.issuer_organisation_id,
                                   client_address=client_address(request))
    shown = service.view(db, user=user, patient=service.resolve_patient(db, patient_id))
    return next(i for i in shown.identifiers if i.id == ident.id)


@router.get("/{patient_id}/duplicates", response_model=list[CandidateOut])
def duplicates(patient_id: int, request: Request, db: DbSession, user: CurrentUser) -> list[CandidateOut]:
    return service.duplicates(db, user=user, patient_id=patient_id, client_address=client_address(request))
