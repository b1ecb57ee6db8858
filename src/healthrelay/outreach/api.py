"""JSON API of the outreach domain (mounted under /api/v1). Thin: the rules live in service.py and booking.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from healthrelay.access import service as access
from healthrelay.accounts.models import Role
from healthrelay.core.db import in_one_transaction
from healthrelay.core.deps import CurrentUser, DbSession, client_address, user_from_credentials
from healthrelay.core.errors import AccessDenied, InvalidInput, NotAuthenticated, NotFound, field_error
from healthrelay.core.ids import MAX_ID, IdPath
from healthrelay.outreach import activity_api, booking, roster_api, service
from healthrelay.outreach import flows as flows  # noqa: F401 - registers the care relationship and the reminder timer
from healthrelay.outreach.models import BOOKABLE_KINDS, AidBatch, AidRelationship, OutreachSchedule
from healthrelay.outreach.schemas import (
    AgreementIn,
    AgreementOut,
    AidIn,
    AidOut,
    BatchIn,
    BatchOut,
    BookingIn,
    BookingOut,
    CancelBookingIn,
    MarkIn,
    PublicSessionOut,
    ReasonIn,
    RotationIn,
    RotationOut,
    ScheduleIn,
    ScheduleOut,
    SessionIn,
    SessionOut,
    SkipIn,
)

OptionalIdQuery = Annotated[int | None, Query(ge=1, le=MAX_ID)]

router = APIRouter(prefix="/outreach", tags=["outreach"])
router.include_router(activity_api.router)
router.include_router(roster_api.router)


def _aware(name: str, value: object) -> None:
    if getattr(value, "tzinfo", 1) is None:
        raise InvalidInput("时间须带时区 / times must carry a zone offset",
                           field_errors=[field_error(name, "add +08:00 or Z")])


# ---------------------------------------------------------------------------- public (no login)

def public_views(db: DbSession, code: str) -> list[PublicSessionOut]:
    host = service.public_host(db, code)
    return [PublicSessionOut(
        id=v.session.id, number=v.session.number, kind=v.session.kind, title=v.session.title, host=v.host,
        place=v.session.place, person=v.person, person_grade=v.person_grade, person_home=v.person_home,
        specialty=v.specialty, studio=v.studio, starts_at=v.session.starts_at, ends_at=v.session.ends_at,
        bookable=v.session.kind in BOOKABLE_KINDS, places_left=v.places_left,
        waitlist_open=v.session.waitlist_count < v.session.waitlist_limit)
        for v in service.session_views(db, service.upcoming(db, host_ids=[host.id]))]


@router.get("/public/{code}", response_model=list[PublicSessionOut])
def public_sessions(code: str, db: DbSession) -> list[PublicSessionOut]:
    """A township's upcoming expert sessions for the next eight weeks; anyone may read it."""
    return public_views(db, code)


# ---------------------------------------------------------------------------- sessions and schedules

@router.post("/sessions", response_model=SessionOut, status_code=status.HTTP_201_CREATED)
def plan_session(body: SessionIn, db: DbSession, user: CurrentUser) -> SessionOut:
    _aware("starts_at", body.starts_at)
    row = service.create_session(db, by=user, plan=service.SessionPlan(**body.model_dump()))
    return SessionOut.model_validate(row)


@router.get("/sessions", response_model=list[SessionOut])
def list_sessions(db: DbSession, user: CurrentUser, host_organisation_id: OptionalIdQuery = None,
                  practitioner_id: OptionalIdQuery = None,
                  days: Annotated[int, Query(ge=1, le=366)] = 56) -> list[SessionOut]:
    if user.role == Role.PATIENT:
        raise AccessDenied("居民请看公开的下沉门诊表 / residents use the public list")
    rows = service.upcoming(db, host_ids=[host_organisation_id] if host_organisation_id else None,
                            practitioner_id=practitioner_id, days=days,
                            statuses=("published", "done"))
    return [SessionOut.model_validate(r) for r in rows]


@router.get("/sessions/{session_id}", response_model=SessionOut)
def get_session(session_id: IdPath, db: DbSession, user: CurrentUser) -> SessionOut:
    return SessionOut.model_validate(service.get_session(db, session_id))


@router.post("/sessions/{session_id}/cancel", response_model=SessionOut)
def cancel_session(session_id: IdPath, body: ReasonIn, db: DbSession, user: CurrentUser) -> SessionOut:
    return SessionOut.model_validate(service.cancel_session(db, by=user, session_id=session_id, reason=body.reason))


@router.post("/schedules", response_model=ScheduleOut, status_code=status.HTTP_201_CREATED)
def publish_schedule(body: ScheduleIn, db: DbSession, user: CurrentUser) -> ScheduleOut:
    data = body.model_dump()
    plan = service.SchedulePlan(
        session=service.SessionPlan(**{k: data[k] for k in SessionIn.model_fields if k != "starts_at"},
                                    starts_at=service.local_dt(body.starts_on, "00:00")),
        weekday=body.weekday, start_time=body.start_time, starts_on=body.starts_on, ends_on=body.ends_on,
        skip_dates=body.skip_dates)
    schedule, sessions = service.publish_schedule(db, by=user, plan=plan)
    out = ScheduleOut.model_validate(schedule)
    return out.model_copy(update={"sessions": [SessionOut.model_validate(s) for s in sessions]})


@router.post("/schedules/{schedule_id}/skip", response_model=ScheduleOut)
def skip_date(schedule_id: IdPath, body: SkipIn, db: DbSession, user: CurrentUser) -> ScheduleOut:
    schedule = service.skip_schedule_date(db, by=user, schedule_id=schedule_id, day=body.day, reason=body.reason)
    return ScheduleOut.model_validate(schedule)


@router.get("/schedules/{schedule_id}", response_model=ScheduleOut)
def get_schedule(schedule_id: IdPath, db: DbSession, user: CurrentUser) -> ScheduleOut:
    schedule = db.get(OutreachSchedule, schedule_id)
    if schedule is None:
        raise NotFound("没有这个周期安排 / no such schedule")
    sessions = service.sessions_of_schedule(db, schedule_id=schedule_id)
    return ScheduleOut.model_validate(schedule).model_copy(
        update={"sessions": [SessionOut.model_validate(s) for s in sessions]})


# ---------------------------------------------------------------------------- bookings

def _booking_out(db: Session, row: booking.OutreachBooking) -> BookingOut:
    return BookingOut.model_validate(row).model_copy(update={"waitlist_position": booking.waitlist_position(db, row)})


@router.post("/sessions/{session_id}/bookings", response_model=BookingOut, status_code=status.HTTP_201_CREATED)
async def book(session_id: IdPath, body: BookingIn, request: Request) -> BookingOut:
    """A place, or a waitlist place (`status` says which); 409 `session_full` when both are full.

    Sign-in, booking and commit run in one thread and one transaction (core.db.in_one_transaction): hundreds of
    residents booking a popular clinic at the same minute must queue for the lock, not deadlock the thread pool.
    """
    authorization, uid = request.headers.get("authorization"), request.session.get("uid")
    address = client_address(request)

    def unit(db: Session) -> BookingOut:
        user = user_from_credentials(db, authorization=authorization, session_uid=uid)
        if user is None:
            raise NotAuthenticated("请先登录 / please sign in")
        row = booking.book(db, by=user, session_id=session_id, patient_id=body.patient_id, phone=body.phone,
                           note=body.note, client_address=address)
        return _booking_out(db, row)

    return await run_in_threadpool(in_one_transaction, unit)


@router.get("/sessions/{session_id}/bookings", response_model=list[BookingOut])
def session_bookings(session_id: IdPath, db: DbSession, user: CurrentUser) -> list[BookingOut]:
    rows = booking.session_bookings(db, by=user, session=service.get_session(db, session_id))
    return [BookingOut.model_validate(r.booking).model_copy(update={"waitlist_position": r.waitlist_position})
            for r in rows]


@router.get("/bookings/mine", response_model=list[BookingOut])
def my_bookings(db: DbSession, user: CurrentUser) -> list[BookingOut]:
    if user.role != Role.PATIENT or user.patient_id is None:
        raise AccessDenied("只有居民账号有“我的预约” / only resident accounts have bookings of their own")
    patient = access.resolve_patient(db, user.patient_id)
    return [_booking_out(db, b) for b, _ in booking.my_bookings(db, patient_id=patient.id)]


@router.post("/bookings/{booking_id}/cancel", response_model=BookingOut)
def cancel_booking(booking_id: IdPath, body: CancelBookingIn, request: Request, db: DbSession,
                   user: CurrentUser) -> BookingOut:
    row = booking.cancel(db, by=user, booking_id=booking_id, reason=body.reason,
                         client_address=client_address(request))
    return _booking_out(db, row)


@router.post("/bookings/{booking_id}/mark", response_model=BookingOut)
def mark_booking(booking_id: IdPath, body: MarkIn, request: Request, db: DbSession, user: CurrentUser) -> BookingOut:
    row = booking.mark(db, by=user, booking_id=booking_id, attended=body.attended,
                       client_address=client_address(request))
    return _booking_out(db, row)


# ---------------------------------------------------------------------------- studios and aid

@router.get("/studios/{team_id}/agreements", response_model=list[AgreementOut])
def agreements(team_id: IdPath, db: DbSession, user: CurrentUser) -> list[AgreementOut]:
    service.studio(db, team_id)
    return [AgreementOut.model_validate(a) for a in service.agreements_of(db, team_id)]


@router.post("/studios/{team_id}/agreements", response_model=AgreementOut, status_code=status.HTTP_201_CREATED)
def add_agreement(team_id: IdPath, body: AgreementIn, db: DbSession, user: CurrentUser) -> AgreementOut:
    return AgreementOut.model_validate(service.add_agreement(db, by=user, team_id=team_id, **body.model_dump()))


@router.post("/aid", response_model=AidOut, status_code=status.HTTP_201_CREATED)
def create_aid(body: AidIn, db: DbSession, user: CurrentUser) -> AidOut:
    return AidOut.model_validate(service.create_aid_relationship(db, by=user, **body.model_dump()))


@router.get("/aid", response_model=list[AidOut])
def list_aid(db: DbSession, user: CurrentUser) -> list[AidOut]:
    return [AidOut.model_validate(a) for a in db.query(AidRelationship).order_by(AidRelationship.starts_on).all()]


@router.post("/aid/{relationship_id}/batches", response_model=BatchOut, status_code=status.HTTP_201_CREATED)
def add_batch(relationship_id: IdPath, body: BatchIn, db: DbSession, user: CurrentUser) -> BatchOut:
    return BatchOut.model_validate(service.add_batch(db, by=user, relationship_id=relationship_id, **body.model_dump()))


@router.post("/batches/{batch_id}/rotations", response_model=RotationOut, status_code=status.HTTP_201_CREATED)
def add_rotation(batch_id: IdPath, body: RotationIn, db: DbSession, user: CurrentUser) -> RotationOut:
    if db.get(AidBatch, batch_id) is None:
        raise NotFound("没有这个批次 / no such batch")
    return RotationOut.model_validate(service.add_rotation(db, by=user, batch_id=batch_id, **body.model_dump()))
