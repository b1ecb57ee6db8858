"""JSON API of referrals (mounted under /api/v1). Thin: every rule lives in service.py."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile, status
from starlette.concurrency import run_in_threadpool

from healthrelay.core.config import get_settings
from healthrelay.core.deps import CurrentUser, DbSession, client_address
from healthrelay.core.errors import InvalidInput, field_error
from healthrelay.referrals import icd10, service
from healthrelay.referrals.models import Direction, Referral, ReferralAttachment, State
from healthrelay.referrals.schemas import (
    AcceptIn,
    AttachmentOut,
    CompleteIn,
    DeclineIn,
    DownReferralCreate,
    EscalationOut,
    FollowUpDoneIn,
    FollowUpTaskOut,
    Icd10Out,
    ReasonIn,
    RedirectIn,
    ReferralCreate,
    ReferralDetail,
    ReferralFull,
    ReferralOut,
    SendBackUpIn,
    TargetSuggestionOut,
)

router = APIRouter(prefix="/referrals", tags=["referrals"])


def _out(referral: Referral) -> ReferralOut:
    return ReferralOut.model_validate(referral).model_copy(update={"overdue": service.is_overdue(referral)})


def _detail(referral: Referral) -> ReferralDetail:
    return ReferralDetail.model_validate(referral).model_copy(update={"overdue": service.is_overdue(referral)})


@router.post("", response_model=ReferralDetail, status_code=status.HTTP_201_CREATED)
def create(body: ReferralCreate, request: Request, db: DbSession, user: CurrentUser) -> ReferralDetail:
    """An upward referral (上转) as a draft, or sent at once with `"send": true`."""
    address = client_address(request)
    data = service.ReferralInput(**body.model_dump(exclude={"send"}))
    referral = service.create_draft(db, by=user, data=data, client_address=address)
    if body.send:
        referral = service.send(db, by=user, referral_id=referral.id, client_address=address)
    return _detail(referral)


@router.get("", response_model=list[ReferralOut])
def worklist(request: Request, db: DbSession, user: CurrentUser, direction: Direction | None = None,
             state: State | None = None, to_organisation: int | None = None, to_department: int | None = None,
             limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[ReferralOut]:
    """Referrals to or from the caller's organisation, overdue ones first."""
    rows = service.worklist(db, user=user, direction=direction, state=state, to_organisation_id=to_organisation,
                            to_department_id=to_department, limit=limit, client_address=client_address(request))
    return [_out(r) for r in rows]


@router.get("/follow-up-tasks", response_model=list[FollowUpTaskOut])
def follow_up_tasks(organisation_id: int, request: Request, db: DbSession, user: CurrentUser,
                    open_only: bool = True) -> list[FollowUpTaskOut]:
    rows = service.follow_up_tasks(db, user=user, organisation_id=organisation_id, open_only=open_only,
                                   client_address=client_address(request))
    return [FollowUpTaskOut.model_validate(r) for r in rows]


@router.post("/down", response_model=ReferralDetail, status_code=status.HTTP_201_CREATED)
def send_down(body: DownReferralCreate, request: Request, db: DbSession, user: CurrentUser) -> ReferralDetail:
    data = service.ReferralInput(**body.model_dump(exclude={"care_plan"}),
                                 care_plan=body.care_plan.model_dump(mode="json"))
    return _detail(service.send_down(db, by=user, data=data, client_address=client_address(request)))


@router.get("/icd10", response_model=list[Icd10Out])
def icd10_search(q: Annotated[str, Query(min_length=1, max_length=40)], user: CurrentUser,
                 limit: Annotated[int, Query(ge=1, le=50)] = 10) -> list[Icd10Out]:
    """Diagnosis codes by code, Chinese name, pinyin initials (gxy = 高血压) or English words."""
    return [Icd10Out(code=e.code, name_zh=e.name_zh, name_en=e.name_en) for e in icd10.search(q, limit)]


@router.get("/suggested-targets", response_model=list[TargetSuggestionOut])
def suggested_targets(patient_id: int, request: Request, db: DbSession, user: CurrentUser,
                      specialty_id: int | None = None, capability: str | None = None) -> list[TargetSuggestionOut]:
    """Where this patient could go: alliance hospitals with the specialty, county before province, nearest first."""
    rows = service.suggest_targets(db, user=user, patient_id=patient_id, specialty_id=specialty_id,
                                   capability=capability)
    return [TargetSuggestionOut(organisation_id=s.organisation.id, organisation_name=s.organisation.name,
                                level=str(s.organisation.level), distance_km=s.distance_km,
                                departments=s.departments, reasons=s.reasons) for s in rows]


@router.post("/follow-up-tasks/{task_id}/done", response_model=FollowUpTaskOut)
def follow_up_done(task_id: int, body: FollowUpDoneIn, request: Request, db: DbSession,
                   user: CurrentUser) -> FollowUpTaskOut:
    task = service.complete_follow_up(db, by=user, task_id=task_id, note=body.note,
                                      client_address=client_address(request))
    return FollowUpTaskOut.model_validate(task)


def attachment_response(row: ReferralAttachment, content: bytes) -> Response:
    """A download, never rendered inline: the browser must not interpret a file a township uploaded."""
    return Response(content, media_type=row.content_type, headers={
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(row.filename)}",
        "X-Content-Type-Options": "nosniff"})


@router.get("/attachments/{attachment_id}")
def download_attachment(attachment_id: int, request: Request, db: DbSession, user: CurrentUser) -> Response:
    return attachment_response(*service.read_attachment(db, user=user, attachment_id=attachment_id,
                                                        client_address=client_address(request)))


@router.get("/{referral_id}", response_model=ReferralFull)
def get(referral_id: int, request: Request, db: DbSession, user: CurrentUser) -> ReferralFull:
    referral = service.get_for(db, user=user, referral_id=referral_id, client_address=client_address(request))
    return ReferralFull.model_validate(referral).model_copy(update={
        "overdue": service.is_overdue(referral),
        "attachments": [AttachmentOut.model_validate(a) for a in service.attachments_of(db, referral)],
        "escalations": [EscalationOut.model_validate(e) for e in service.escalations_of(db, referral)]})


@router.post("/{referral_id}/attachments", response_model=AttachmentOut, status_code=status.HTTP_201_CREATED)
async def attach(referral_id: int, request: Request, db: DbSession, user: CurrentUser,
                 file: Annotated[UploadFile, File()], description: Annotated[str, Form(max_length=200)] = ""
                 ) -> AttachmentOut:
    """A result or document (PDF, JPEG, PNG, WebP, DICOM) up to the configured size."""
    limit = get_settings().attachment_max_bytes
    content = await file.read(limit + 1)
    if len(content) > limit:
        raise InvalidInput(f"文件超过 {limit // (1024 * 1024)} MB 上限 / file is over the "
                           f"{limit // (1024 * 1024)} MB limit", field_errors=[field_error("file", "too large")])
    row = await run_in_threadpool(  # off the event loop, so a wait for SQLite's write lock stalls nobody else
        service.add_attachment, db, by=user, referral_id=referral_id, filename=file.filename or "",
        content=content, description=description, client_address=client_address(request))
    return AttachmentOut.model_validate(row)


@router.post("/{referral_id}/send", response_model=ReferralDetail)
def send(referral_id: int, request: Request, db: DbSession, user: CurrentUser) -> ReferralDetail:
    return _detail(service.send(db, by=user, referral_id=referral_id, client_address=client_address(request)))


@router.post("/{referral_id}/accept", response_model=ReferralDetail)
def accept(referral_id: int, body: AcceptIn, request: Request, db: DbSession, user: CurrentUser) -> ReferralDetail:
    return _detail(service.accept(db, by=user, referral_id=referral_id, appointment_at=body.appointment_at,
                                  bed=body.bed, client_address=client_address(request)))


@router.post("/{referral_id}/decline", response_model=ReferralDetail)
def decline(referral_id: int, body: DeclineIn, request: Request, db: DbSession, user: CurrentUser) -> ReferralDetail:
    return _detail(service.decline(
        db, by=user, referral_id=referral_id, reason=body.reason,
        suggested_alternative_organisation_id=body.suggested_alternative_organisation_id,
        client_address=client_address(request)))


@router.post("/{referral_id}/redirect", response_model=ReferralDetail)
def redirect(referral_id: int, body: RedirectIn, request: Request, db: DbSession,
             user: CurrentUser) -> ReferralDetail:
    return _detail(service.redirect(db, by=user, referral_id=referral_id, to_organisation_id=body.to_organisation_id,
                                    to_department_id=body.to_department_id, reason=body.reason,
                                    client_address=client_address(request)))


@router.post("/{referral_id}/arrive", response_model=ReferralDetail)
def arrive(referral_id: int, request: Request, db: DbSession, user: CurrentUser) -> ReferralDetail:
    return _detail(service.mark_arrived(db, by=user, referral_id=referral_id, client_address=client_address(request)))


@router.post("/{referral_id}/complete", response_model=ReferralDetail)
def complete(referral_id: int, body: CompleteIn, request: Request, db: DbSession,
             user: CurrentUser) -> ReferralDetail:
    return _detail(service.complete(db, by=user, referral_id=referral_id, outcome=body.outcome,
                                    client_address=client_address(request)))


@router.post("/{referral_id}/cancel", response_model=ReferralDetail)
def cancel(referral_id: int, body: ReasonIn, request: Request, db: DbSession, user: CurrentUser) -> ReferralDetail:
    return _detail(service.cancel(db, by=user, referral_id=referral_id, reason=body.reason,
                                  client_address=client_address(request)))


@router.post("/{referral_id}/send-back-up", response_model=ReferralDetail, status_code=status.HTTP_201_CREATED)
def send_back_up(referral_id: int, body: SendBackUpIn, request: Request, db: DbSession,
                 user: CurrentUser) -> ReferralDetail:
    """A worsening patient goes back up to the hospital that sent them down, with the history."""
    return _detail(service.send_back_up(db, by=user, down_referral_id=referral_id, reason=body.reason,
                                        urgency=body.urgency, consent_kind=body.consent_kind,
                                        to_department_id=body.to_department_id,
                                        client_address=client_address(request)))
