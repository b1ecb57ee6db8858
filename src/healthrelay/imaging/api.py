"""JSON API of the imaging index (mounted under /api/v1): the studies list, one study for the viewer, and
linking a flagged study to a resident. Thin: the rules live in imaging/studies.py; images come from /dicomweb.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from healthrelay.core.deps import CurrentUser, DbSession, client_address
from healthrelay.imaging import studies
from healthrelay.imaging.schemas import LinkPatientIn, StudyDetail, StudyPage

router = APIRouter(prefix="/imaging", tags=["imaging"])

StudyUid = Annotated[str, Path(max_length=64, pattern=r"^[0-9.]+$")]


@router.get("/studies", response_model=StudyPage)
def list_studies(request: Request, db: DbSession, user: CurrentUser, unmatched: bool = False,
                 modality: Annotated[str, Query(max_length=16)] = "", organisation_id: int | None = None,
                 date_from: date | None = None, date_to: date | None = None, patient_id: int | None = None,
                 cursor: Annotated[str, Query(max_length=80)] = "",
                 limit: Annotated[int, Query(ge=1, le=studies.MAX_PAGE)] = studies.DEFAULT_PAGE) -> StudyPage:
    """Recent studies the caller may read, newest received first; `unmatched=true` keeps the flagged ones.
    Page with `cursor` = the previous page's `next_cursor`."""
    filters = studies.StudyFilters(unmatched=unmatched, modality=studies.check_modality(modality),
                                   organisation_id=organisation_id, date_from=date_from, date_to=date_to,
                                   patient_id=patient_id)
    return studies.list_studies(db, user=user, filters=filters, cursor=cursor, limit=limit,
                                client_address=client_address(request))


@router.get("/studies/{study_uid}", response_model=StudyDetail)
def study(study_uid: StudyUid, request: Request, db: DbSession, user: CurrentUser) -> StudyDetail:
    """The study with its series (instances in viewing order, with what the viewer needs to draw and
    measure) and the patient's prior studies from every member, newest first."""
    return studies.study_detail(db, user=user, study_uid=study_uid, client_address=client_address(request))


@router.post("/studies/{study_uid}/patient", response_model=StudyDetail)
def link_patient(study_uid: StudyUid, body: LinkPatientIn, request: Request, db: DbSession,
                 user: CurrentUser) -> StudyDetail:
    """Link a flagged (unmatched) study to a resident by hand; its consult request gets the patient too."""
    found = studies.link_patient(db, by=user, study_uid=study_uid, patient_id=body.patient_id, note=body.note,
                                 client_address=client_address(request))
    return studies.detail_of(db, user=user, study=found)
