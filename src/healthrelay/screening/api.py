"""JSON API of the screening domain (mounted under /api/v1). Thin: every rule lives in service.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, UploadFile, status
from starlette.concurrency import run_in_threadpool

from healthrelay.core.deps import CurrentUser, DbSession
from healthrelay.core.errors import InvalidInput, field_error
from healthrelay.core.ids import IdPath
from healthrelay.screening import service
from healthrelay.screening.schemas import (
    AttendanceOut,
    CountsIn,
    EventDetailOut,
    EventIn,
    EventOut,
    ImportOut,
    RegisterIn,
    ResultIn,
    ResultOut,
    ServiceOut,
    StatusIn,
)

router = APIRouter(prefix="/screening", tags=["screening"])


@router.get("/services", response_model=list[ServiceOut])
def services(db: DbSession, user: CurrentUser) -> list[ServiceOut]:
    return [ServiceOut.model_validate(s) for s in service.services_of(db)]


@router.get("/events", response_model=list[EventOut])
def events(db: DbSession, user: CurrentUser) -> list[EventOut]:
    return [EventOut.model_validate(e) for e in service.visible_events(db, user=user)]


@router.post("/events", response_model=EventOut, status_code=status.HTTP_201_CREATED)
def plan(body: EventIn, db: DbSession, user: CurrentUser) -> EventOut:
    for name, value in (("starts_at", body.starts_at), ("ends_at", body.ends_at)):
        if value.tzinfo is None:
            raise InvalidInput("时间须带时区 / times must carry a zone offset",
                               field_errors=[field_error(name, "add +08:00 or Z")])
    event = service.plan_event(db, by=user, plan=service.EventPlan(**body.model_dump()))
    return EventOut.model_validate(event)


@router.get("/events/{event_id}", response_model=EventDetailOut)
def event(event_id: IdPath, db: DbSession, user: CurrentUser) -> EventDetailOut:
    found = service.event_for_figures(db, user=user, event_id=event_id)
    counts = service.event_counts(db, event_id=event_id)
    return EventDetailOut.model_validate(found).model_copy(update={"counts": counts})


@router.post("/events/{event_id}/status", response_model=EventOut)
def set_status(event_id: IdPath, body: StatusIn, db: DbSession, user: CurrentUser) -> EventOut:
    return EventOut.model_validate(service.set_status(db, by=user, event_id=event_id, status=body.status))


@router.post("/events/{event_id}/counts", response_model=EventOut)
def set_counts(event_id: IdPath, body: CountsIn, db: DbSession, user: CurrentUser) -> EventOut:
    return EventOut.model_validate(service.set_counts(db, by=user, event_id=event_id, **body.model_dump()))


@router.post("/events/{event_id}/attendances", response_model=AttendanceOut, status_code=status.HTTP_201_CREATED)
def register(event_id: IdPath, body: RegisterIn, db: DbSession, user: CurrentUser) -> AttendanceOut:
    """Register a resident at the event; 409 `likely_duplicates` lists the candidates to pick from."""
    row = service.quick_register(db, by=user, event_id=event_id, **body.model_dump())
    return AttendanceOut.model_validate(row)


@router.post("/attendances/{attendance_id}/results", response_model=ResultOut)
def record_result(attendance_id: IdPath, body: ResultIn, db: DbSession, user: CurrentUser) -> ResultOut:
    row = service.record_result(db, by=user, attendance_id=attendance_id, service_code=body.service_code,
                                values=body.values)
    return ResultOut.model_validate(row)


@router.post("/events/{event_id}/imports", response_model=ImportOut, status_code=status.HTTP_201_CREATED)
async def import_sheet(event_id: IdPath, db: DbSession, user: CurrentUser,
                       file: Annotated[UploadFile, File()]) -> ImportOut:
    content = await file.read(service.MAX_IMPORT_BYTES + 1)
    record = await run_in_threadpool(service.import_school_sheet, db, by=user, event_id=event_id,
                                     filename=file.filename or "", content=content)
    return ImportOut.model_validate(record)
