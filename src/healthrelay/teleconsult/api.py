"""JSON API of consultation requests (mounted under /api/v1). Thin: every rule lives in service.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from sqlalchemy.orm import Session

from healthrelay.core.deps import CurrentUser, DbSession, client_address
from healthrelay.core.errors import InvalidInput, field_error
from healthrelay.imaging.models import ImagingStudy
from healthrelay.teleconsult import flows as flows  # noqa: F401 - registers the escalation timer handler
from healthrelay.teleconsult import service
from healthrelay.teleconsult.models import ConsultKind, ConsultRequest, ConsultState, Priority
from healthrelay.teleconsult.schemas import (
    CentreOut,
    EscalationOut,
    ReasonIn,
    ReassignIn,
    RequestCreate,
    RequestDetail,
    RequestOut,
    StudyRef,
    WorklistItem,
)

# No prefix: every path is spelled out, like pages.py, so the report routes included at the bottom
# (reports_api.py) say their own full paths too.
router = APIRouter(tags=["teleconsult"])


def _study_refs(studies: list[ImagingStudy]) -> list[StudyRef]:
    return [StudyRef(study_instance_uid=s.study_instance_uid, modalities=s.modalities_in_study,
                     description=s.description, study_date=s.study_date,
                     number_of_instances=s.number_of_instances, viewer_url=service.viewer_url(s)) for s in studies]


def _out(request: ConsultRequest) -> RequestOut:
    return RequestOut.model_validate(request).model_copy(update={"overdue": service.is_overdue(request)})


def _detail(db: Session, request: ConsultRequest) -> RequestDetail:
    return RequestDetail.model_validate(request).model_copy(update={
        "overdue": service.is_overdue(request),
        "studies": _study_refs(service.studies_of(db, request)),
        "escalations": [EscalationOut.model_validate(e) for e in service.escalations_of(db, request)]})


@router.post("/teleconsult/requests", response_model=RequestDetail, status_code=status.HTTP_201_CREATED)
def create(body: RequestCreate, request: Request, db: DbSession, user: CurrentUser) -> RequestDetail:
    """Ask a reading centre of one of your alliances for a read; the patient's written consent is required."""
    data = service.RequestInput(**body.model_dump())
    consult = service.create_request(db, by=user, data=data, created_via="api", client_address=client_address(request))
    return _detail(db, consult)


@router.get("/teleconsult/requests", response_model=list[RequestOut])
def list_requests(request: Request, db: DbSession, user: CurrentUser, side: str = "sent",
                  state: Annotated[list[ConsultState] | None, Query()] = None,
                  limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[RequestOut]:
    """What your organisation asked for (`side=sent`) or its centres received (`side=received`), newest first."""
    rows = service.list_requests(db, user=user, side=side, states=state or (), limit=limit,
                                 client_address=client_address(request))
    return [_out(r) for r in rows]


@router.get("/teleconsult/worklist", response_model=list[WorklistItem])
def worklist(request: Request, db: DbSession, user: CurrentUser, centre_id: int | None = None, modality: str = "",
             inviting_organisation_id: int | None = None, priority: Priority | None = None,
             kind: ConsultKind | None = None, mine: bool = False, unclaimed: bool = False,
             limit: Annotated[int, Query(ge=1, le=500)] = service.WORKLIST_LIMIT) -> list[WorklistItem]:
    """The reading worklist of your centre(s): open requests by deadline, overdue first."""
    if len(modality) > 16:
        raise InvalidInput("modality 过长 / modality too long", field_errors=[field_error("modality", "at most 16")])
    rows = service.worklist(db, user=user, centre_id=centre_id, modality=modality,
                            inviting_organisation_id=inviting_organisation_id, priority=priority, kind=kind,
                            mine=mine, unclaimed=unclaimed, limit=limit, client_address=client_address(request))
    info = service.describe(db, rows)
    return [WorklistItem.model_validate(r).model_copy(update={
        "overdue": service.is_overdue(r), "patient_masked_name": info[r.id].patient_masked_name,
        "inviting_organisation_name": info[r.id].inviting_organisation_name,
        "claimed_by_name": info[r.id].claimed_by_name, "modalities": info[r.id].modalities,
        "studies": _study_refs(info[r.id].studies), "minutes_left": service.minutes_left(r)}) for r in rows]


@router.get("/teleconsult/centres", response_model=list[CentreOut])
def centres(db: DbSession, user: CurrentUser, scope: str = "send", kind: ConsultKind | None = None) -> list[CentreOut]:
    """Centres you may invite (`scope=send`), or the centres you read for (`scope=read`)."""
    if scope not in ("send", "read"):
        raise InvalidInput("scope 须为 send 或 read / scope must be send or read",
                           field_errors=[field_error("scope", "send | read")])
    rows = (service.sendable_centres(db, user=user, kind=kind) if scope == "send"
            else [c for c in service.centres_read_by(db, user) if kind is None or c.kind == kind])
    return [CentreOut(id=c.id, code=c.code, name=c.name, kind=c.kind, organisation_id=c.organisation_id,
                      organisation_name=service.organisation_name(db, c.organisation_id),
                      department_id=c.department_id) for c in rows]


@router.get("/teleconsult/requests/{request_id}", response_model=RequestDetail)
def get(request_id: int, request: Request, db: DbSession, user: CurrentUser) -> RequestDetail:
    consult = service.get_request_for(db, request_id=request_id, user=user, client_address=client_address(request))
    return _detail(db, consult)


@router.post("/teleconsult/requests/{request_id}/accept", response_model=RequestDetail)
def accept(request_id: int, request: Request, db: DbSession, user: CurrentUser) -> RequestDetail:
    return _detail(db, service.accept(db, by=user, request_id=request_id, client_address=client_address(request)))


@router.post("/teleconsult/requests/{request_id}/decline", response_model=RequestDetail)
def decline(request_id: int, body: ReasonIn, request: Request, db: DbSession, user: CurrentUser) -> RequestDetail:
    return _detail(db, service.decline(db, by=user, request_id=request_id, reason=body.reason,
                                       client_address=client_address(request)))


@router.post("/teleconsult/requests/{request_id}/cancel", response_model=RequestDetail)
def cancel(request_id: int, body: ReasonIn, request: Request, db: DbSession, user: CurrentUser) -> RequestDetail:
    return _detail(db, service.cancel(db, by=user, request_id=request_id, reason=body.reason,
                                      client_address=client_address(request)))


@router.post("/teleconsult/requests/{request_id}/claim", response_model=RequestDetail)
def claim(request_id: int, request: Request, db: DbSession, user: CurrentUser) -> RequestDetail:
    """Take the request off the pool (accepting it if still requested); the first claim wins, others get 409."""
    return _detail(db, service.claim(db, by=user, request_id=request_id, client_address=client_address(request)))


@router.post("/teleconsult/requests/{request_id}/release", response_model=RequestDetail)
def release(request_id: int, body: ReasonIn, request: Request, db: DbSession, user: CurrentUser) -> RequestDetail:
    return _detail(db, service.release(db, by=user, request_id=request_id, reason=body.reason,
                                       client_address=client_address(request)))


@router.post("/teleconsult/requests/{request_id}/reassign", response_model=RequestDetail)
def reassign(request_id: int, body: ReassignIn, request: Request, db: DbSession, user: CurrentUser) -> RequestDetail:
    return _detail(db, service.reassign(db, by=user, request_id=request_id, to_user_id=body.to_user_id,
                                        reason=body.reason, client_address=client_address(request)))


# Reports and critical results (teleconsult/reports_api.py): /api/v1/teleconsult/requests/{id}/report ...
from healthrelay.teleconsult import reports_api  # noqa: E402

router.include_router(reports_api.router)
