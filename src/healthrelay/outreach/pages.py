"""Outreach pages: the calendar, planning a session or a weekly clinic, a session with its bookings, booking,
a resident's bookings, the public list per township (no login), studios and aid relationships.

Routes parse forms, call service.py / booking.py, and render; a refused form comes back with every problem next
to its field. The activity record, the impact report and the roster have their own modules (included below).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from healthrelay.access import service as access
from healthrelay.accounts.models import Role, User
from healthrelay.core.db import LOCAL_TZ, in_one_transaction, local_today, utcnow
from healthrelay.core.deps import (
    CsrfChecked,
    CurrentUser,
    DbSession,
    OptionalUser,
    client_address,
    user_from_credentials,
)
from healthrelay.core.errors import AccessDenied, DomainError, InvalidInput, NotAuthenticated
from healthrelay.core.ids import IdPath, is_id
from healthrelay.directory.models import Organisation, Practitioner, Specialty, Team, TeamKind, TeamMember
from healthrelay.outreach import activity_pages, booking, impact_pages, roster_pages, service
from healthrelay.outreach import flows as flows  # noqa: F401 - registers the care relationship and the reminder timer
from healthrelay.outreach.models import (
    BOOKABLE_KINDS,
    SESSION_KINDS,
    AidBatch,
    AidRelationship,
    AidRotation,
    OutreachSchedule,
    OutreachSession,
)
from healthrelay.web.forms import FormProblems, messages_by_field, reraise_if_access
from healthrelay.web.templating import render

router = APIRouter(include_in_schema=False)
router.include_router(activity_pages.router)
router.include_router(impact_pages.router)
router.include_router(roster_pages.router)

FormText = Annotated[str, Form()]
STAFF = (Role.CLINICIAN, Role.ORG_ADMIN, Role.ALLIANCE_ADMIN, Role.REMOTE_READER, Role.HEALTH_BUREAU,
         Role.PHARMACIST, Role.DISPATCHER)
WEEKDAYS_ZH = ("周一", "周二", "周三", "周四", "周五", "周六", "周日")


def _staff_only(user: User) -> None:
    if user.role == Role.PATIENT:
        raise AccessDenied("居民请看公开的下沉门诊表 / residents use the public list at /outreach/public")


def _names(db: Session, model: Any, ids: set[int]) -> dict[int, str]:
    ids = {i for i in ids if i}
    if not ids:
        return {}
    return dict(db.execute(select(model.id, model.name).where(model.id.in_(ids))).all())


# ---------------------------------------------------------------------------- calendar

@router.get("/outreach")
def calendar_page(request: Request, db: DbSession, user: CurrentUser, host: str = "", person: str = "",
                  week: str = "") -> Response:
    """The sessions of one week (Monday to Sunday), filterable by host and person."""
    _staff_only(user)
    try:
        monday = date.fromisoformat(week) if week else local_today()
    except ValueError:
        monday = local_today()
    monday -= timedelta(days=monday.weekday())
    start = service.local_dt(monday, "00:00")
    rows = service.sessions_between(db, start=start, end=start + timedelta(days=7),
                                    host_id=int(host) if is_id(host) else None,
                                    practitioner_id=int(person) if is_id(person) else None)
    views = service.session_views(db, rows)
    days: dict[date, list[service.SessionView]] = {monday + timedelta(days=i): [] for i in range(7)}
    for v in views:
        days.setdefault(v.session.starts_at.astimezone(LOCAL_TZ).date(), []).append(v)
    return render(request, "outreach/calendar.html", {
        "days": days, "monday": monday, "prev_week": monday - timedelta(days=7),
        "next_week": monday + timedelta(days=7), "host": host, "person": person,
        "hosts": service.public_hosts(db), "people": service.person_choices(db),
        "may_plan": service.is_planner(user), "weekdays": WEEKDAYS_ZH, "today": local_today()})


# ---------------------------------------------------------------------------- planning

def _plan_form_defaults() -> dict[str, str]:
    day = local_today() + timedelta(days=7)
    return {"kind": "clinic", "title": "", "practitioner_id": "", "host_organisation_id": "", "studio_team_id": "",
            "specialty_id": "", "day": day.isoformat(), "start_time": "08:30", "minutes": "180", "capacity": "20",
            "waitlist_limit": "10", "place": "", "repeat": "", "until": (day + timedelta(weeks=12)).isoformat(),
            "skip": ""}


def _plan_page(request: Request, db: Session, user: User, form: dict[str, str], *,
               invalid: dict[str, str] | None = None, error: str = "", status_code: int = 200) -> Response:
    studios = db.scalars(select(Team).where(Team.kind == TeamKind.EXPERT_STUDIO).order_by(Team.code)).all()
    specialties = db.scalars(select(Specialty).order_by(Specialty.code)).all()
    order = ["kind", "title", "practitioner_id", "host_organisation_id", "studio_team_id", "day", "start_time",
             "minutes", "capacity", "waitlist_limit", "until", "skip"]
    invalid = invalid or {}
    return render(request, "outreach/plan.html", {
        "form": form, "invalid": invalid, "error": error, "kinds": SESSION_KINDS, "hosts": service.public_hosts(db),
        "people": service.person_choices(db), "studios": studios, "specialties": specialties,
        "focus": next((f for f in order if f in invalid), "kind")}, status_code=status_code)


@router.get("/outreach/plan")
def plan_page(request: Request, db: DbSession, user: CurrentUser, host: str = "", person: str = "",
              studio: str = "") -> Response:
    service.require_planner(user)
    form = _plan_form_defaults()
    form.update({"host_organisation_id": host if is_id(host) else "",
                 "practitioner_id": person if is_id(person) else "", "studio_team_id": studio if is_id(studio) else ""})
    return _plan_page(request, db, user, form)


def _parse_int(problems: FormProblems, name: str, value: str, low: int, high: int) -> int:
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        problems.add(name, f"须为 {low} 到 {high} 之间的整数 / a whole number from {low} to {high}")
        return low
    return int(value)


@router.post("/outreach/plan", dependencies=[CsrfChecked])
def plan_submit(request: Request, db: DbSession, user: CurrentUser, kind: FormText = "", title: FormText = "",
                practitioner_id: FormText = "", host_organisation_id: FormText = "", studio_team_id: FormText = "",
                specialty_id: FormText = "", day: FormText = "", start_time: FormText = "", minutes: FormText = "",
                capacity: FormText = "", waitlist_limit: FormText = "", place: FormText = "", repeat: FormText = "",
                until: FormText = "", skip: FormText = "") -> Response:
    service.require_planner(user)
    form = {"kind": kind, "title": title, "practitioner_id": practitioner_id,
            "host_organisation_id": host_organisation_id, "studio_team_id": studio_team_id,
            "specialty_id": specialty_id, "day": day, "start_time": start_time, "minutes": minutes,
            "capacity": capacity, "waitlist_limit": waitlist_limit, "place": place, "repeat": repeat,
            "until": until, "skip": skip}
    try:
        problems = FormProblems()
        person = _required_id(problems, "practitioner_id", practitioner_id)
        host = _required_id(problems, "host_organisation_id", host_organisation_id)
        studio = _optional_id(problems, "studio_team_id", studio_team_id)
        specialty = _optional_id(problems, "specialty_id", specialty_id)
        first_day = problems.day("day", day, required=True)
        try:
            hhmm = service.check_hhmm(start_time)
        except InvalidInput as exc:
            problems.errors += exc.field_errors
            hhmm = "08:30"
        length = _parse_int(problems, "minutes", minutes, 15, service.MAX_SESSION_MINUTES)
        places = _parse_int(problems, "capacity", capacity or "0", 0, service.MAX_CAPACITY)
        waitlist = _parse_int(problems, "waitlist_limit", waitlist_limit or "0", 0, service.MAX_WAITLIST)
        last_day = problems.day("until", until, required=True) if repeat else None
        skipped = [d for d in (problems.day("skip", s) for s in skip.replace("，", ",").split(","))
                   if d is not None]
        problems.raise_if_any()
        assert person is not None and host is not None and first_day is not None
        plan = service.SessionPlan(kind=kind, title=title, practitioner_id=person, host_organisation_id=host,
                                   starts_at=service.local_dt(first_day, hhmm), minutes=length, capacity=places,
                                   waitlist_limit=waitlist, place=place, specialty_id=specialty, studio_team_id=studio)
        if repeat:
            assert last_day is not None
            schedule, sessions = service.publish_schedule(db, by=user, plan=service.SchedulePlan(
                session=plan, weekday=first_day.weekday(), start_time=hhmm, starts_on=first_day, ends_on=last_day,
                skip_dates=skipped))
            return RedirectResponse(f"/outreach/schedules/{schedule.id}?done=published&n={len(sessions)}",
                                    status_code=303)
        row = service.create_session(db, by=user, plan=plan)
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return _plan_page(request, db, user, form, invalid=messages_by_field(exc.field_errors), error=exc.message,
                          status_code=exc.status_code)
    return RedirectResponse(f"/outreach/sessions/{row.id}?done=published", status_code=303)


def _required_id(problems: FormProblems, name: str, value: str) -> int | None:
    if not is_id(value):
        problems.add(name, "请选择 / choose one")
        return None
    return int(value)


def _optional_id(problems: FormProblems, name: str, value: str) -> int | None:
    if not value.strip():
        return None
    return _required_id(problems, name, value)


# ---------------------------------------------------------------------------- schedules

@router.get("/outreach/schedules/{schedule_id}")
def schedule_page(request: Request, schedule_id: IdPath, db: DbSession, user: CurrentUser, done: str = "",
                  error: str = "") -> Response:
    _staff_only(user)
    schedule = db.get(OutreachSchedule, schedule_id)
    if schedule is None:
        from healthrelay.core.errors import NotFound

        raise NotFound("没有这个周期安排 / no such schedule")
    sessions = service.sessions_of_schedule(db, schedule_id=schedule_id)
    return render(request, "outreach/schedule.html", {
        "schedule": schedule, "views": service.session_views(db, sessions), "done": done, "error": error,
        "weekday": WEEKDAYS_ZH[schedule.weekday], "may_manage": service.is_planner(user),
        "host": db.get(Organisation, schedule.host_organisation_id),
        "person": db.get(Practitioner, schedule.practitioner_id)})


@router.post("/outreach/schedules/{schedule_id}/skip", dependencies=[CsrfChecked])
def schedule_skip(request: Request, schedule_id: IdPath, db: DbSession, user: CurrentUser, day: FormText = "",
                  reason: FormText = "") -> Response:
    try:
        problems = FormProblems()
        when = problems.day("day", day, required=True)
        problems.raise_if_any()
        assert when is not None
        service.skip_schedule_date(db, by=user, schedule_id=schedule_id, day=when, reason=reason)
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return schedule_page(request, schedule_id, db, user, error=exc.message)
    return RedirectResponse(f"/outreach/schedules/{schedule_id}?done=skipped", status_code=303)


# ---------------------------------------------------------------------------- one session

def _session_page(request: Request, db: Session, user: User, session: OutreachSession, *, error: str = "",
                  status_code: int = 200) -> Response:
    view = service.session_views(db, [session])[0]
    staff = user.role != Role.PATIENT and service.may_staff_session(db, user, session)
    mine = None
    if user.role == Role.PATIENT and user.patient_id is not None:
        mine = db.scalars(select(booking.OutreachBooking).where(
            booking.OutreachBooking.session_id == session.id,
            booking.OutreachBooking.patient_id == user.patient_id)).first()
    return render(request, "outreach/session.html", {
        "v": view, "s": session, "staff": staff, "may_manage": service.may_manage_session(user, session),
        "bookings": booking.session_bookings(db, by=user, session=session) if staff else [],
        "mine": mine, "mine_position": booking.waitlist_position(db, mine) if mine else None,
        "bookable": session.kind in BOOKABLE_KINDS and session.status == "published" and session.starts_at > utcnow(),
        "started": session.starts_at <= utcnow(), "error": error,
        "done": request.query_params.get("done", ""),
        "studio": db.get(Team, session.studio_team_id) if session.studio_team_id else None},
        status_code=status_code)


@router.get("/outreach/sessions/{session_id}")
def session_page(request: Request, session_id: IdPath, db: DbSession, user: CurrentUser) -> Response:
    return _session_page(request, db, user, service.get_session(db, session_id))


@router.post("/outreach/sessions/{session_id}/cancel", dependencies=[CsrfChecked])
def session_cancel(request: Request, session_id: IdPath, db: DbSession, user: CurrentUser,
                   reason: FormText = "") -> Response:
    try:
        service.cancel_session(db, by=user, session_id=session_id, reason=reason)
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return _session_page(request, db, user, service.get_session(db, session_id), error=exc.message,
                             status_code=exc.status_code)
    return RedirectResponse(f"/outreach/sessions/{session_id}?done=cancelled", status_code=303)


# ---------------------------------------------------------------------------- booking

@router.get("/outreach/sessions/{session_id}/book")
def book_page(request: Request, session_id: IdPath, db: DbSession, user: CurrentUser, error: str = "",
              patient_id: str = "", phone: str = "", status_code: int = 200) -> Response:
    session = service.get_session(db, session_id)
    if user.role == Role.PATIENT and user.patient_id is not None and not phone:
        patient = access.resolve_patient(db, user.patient_id)
        phone = patient.phone
    return render(request, "outreach/book.html", {
        "v": service.session_views(db, [session])[0], "s": session, "error": error, "patient_id": patient_id,
        "phone": phone, "for_self": user.role == Role.PATIENT,
        "open": session.kind in BOOKABLE_KINDS and session.status == "published" and session.starts_at > utcnow()},
        status_code=status_code)


@router.post("/outreach/sessions/{session_id}/book", dependencies=[CsrfChecked])
async def book_submit(request: Request, session_id: IdPath, patient_id: FormText = "", phone: FormText = "",
                      note: FormText = "") -> Response:
    """Book from the form. Like the API, sign-in, booking and commit run in one thread and one transaction
    (core.db.in_one_transaction), so a crowd booking a popular clinic at once queues instead of deadlocking."""
    uid, address = request.session.get("uid"), client_address(request)

    def signed_in(db: Session) -> User:
        user = user_from_credentials(db, authorization=None, session_uid=uid)
        if user is None:
            raise NotAuthenticated("请先登录 / please sign in")
        request.state.user = user
        return user

    def unit(db: Session) -> tuple[Role, str, str]:
        user = signed_in(db)
        if user.role != Role.PATIENT and not is_id(patient_id):
            raise InvalidInput("请填写居民编号 / enter the resident's record number",
                               field_errors=[{"field": "patient_id", "message": "required"}])
        row = booking.book(db, by=user, session_id=session_id,
                           patient_id=int(patient_id) if is_id(patient_id) else None, phone=phone, note=note,
                           client_address=address)
        return user.role, row.status, row.number

    try:
        role, status, number = await run_in_threadpool(in_one_transaction, unit)
    except DomainError as exc:
        if exc.status_code in (401, 403) or (exc.status_code == 404 and "patient" not in exc.message):
            raise
        refused = exc

        def page(db: Session) -> Response:
            return book_page(request, session_id, db, signed_in(db), error=refused.message, patient_id=patient_id,
                             phone=phone, status_code=refused.status_code)
        return await run_in_threadpool(in_one_transaction, page)
    target = "/outreach/my-bookings" if role == Role.PATIENT else f"/outreach/sessions/{session_id}"
    return RedirectResponse(f"{target}?done={status}&number={number}", status_code=303)


@router.get("/outreach/my-bookings")
def my_bookings_page(request: Request, db: DbSession, user: CurrentUser, done: str = "", number: str = "",
                     error: str = "") -> Response:
    if user.role != Role.PATIENT or user.patient_id is None:
        raise AccessDenied("只有居民账号有“我的预约” / only resident accounts have bookings of their own")
    patient = access.resolve_patient(db, user.patient_id)
    rows = booking.my_bookings(db, patient_id=patient.id)
    views = {v.session.id: v for v in service.session_views(db, [s for _, s in rows])}
    return render(request, "outreach/my_bookings.html", {
        "rows": [(b, views[s.id], booking.waitlist_position(db, b)) for b, s in rows], "done": done,
        "number": number[:30], "error": error, "now": utcnow()})


@router.post("/outreach/bookings/{booking_id}/cancel", dependencies=[CsrfChecked])
def booking_cancel(request: Request, booking_id: IdPath, db: DbSession, user: CurrentUser,
                   reason: FormText = "") -> Response:
    try:
        row = booking.cancel(db, by=user, booking_id=booking_id, reason=reason, client_address=client_address(request))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        if user.role == Role.PATIENT:
            return my_bookings_page(request, db, user, error=exc.message)
        row = booking.get_booking(db, booking_id)
        return _session_page(request, db, user, service.get_session(db, row.session_id), error=exc.message,
                             status_code=exc.status_code)
    if user.role == Role.PATIENT:
        return RedirectResponse("/outreach/my-bookings?done=cancelled", status_code=303)
    return RedirectResponse(f"/outreach/sessions/{row.session_id}?done=booking_cancelled", status_code=303)


@router.post("/outreach/bookings/{booking_id}/mark", dependencies=[CsrfChecked])
def booking_mark(request: Request, booking_id: IdPath, db: DbSession, user: CurrentUser,
                 attended: FormText = "") -> Response:
    try:
        row = booking.mark(db, by=user, booking_id=booking_id, attended=attended == "1",
                           client_address=client_address(request))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        row = booking.get_booking(db, booking_id)
        return _session_page(request, db, user, service.get_session(db, row.session_id), error=exc.message,
                             status_code=exc.status_code)
    return RedirectResponse(f"/outreach/sessions/{row.session_id}?done=marked", status_code=303)


# ---------------------------------------------------------------------------- public (no login)

@router.get("/outreach/public")
def public_index(request: Request, db: DbSession, user: OptionalUser) -> Response:
    """Every place with upcoming expert sessions, and how many (no login, no patient data)."""
    now = utcnow()
    counts = dict(db.execute(select(OutreachSession.host_organisation_id, func.count()).where(
        OutreachSession.status == "published", OutreachSession.ends_at > now,
        OutreachSession.starts_at < now + timedelta(days=service.PUBLIC_DAYS))
        .group_by(OutreachSession.host_organisation_id)).all())
    hosts = [h for h in service.public_hosts(db) if counts.get(h.id)]
    return render(request, "outreach/public_index.html", {"hosts": hosts, "counts": counts})


@router.get("/outreach/public/{code}")
def public_page(request: Request, code: str, db: DbSession, user: OptionalUser) -> Response:
    """A township's upcoming expert sessions: who comes, when, places left; booking needs a login."""
    host = service.public_host(db, code[:40])
    views = service.session_views(db, service.upcoming(db, host_ids=[host.id]))
    return render(request, "outreach/public.html", {"host": host, "views": views, "bookable": BOOKABLE_KINDS})


# ---------------------------------------------------------------------------- studios and aid

@router.get("/outreach/studios")
def studios_page(request: Request, db: DbSession, user: CurrentUser) -> Response:
    _staff_only(user)
    teams = db.scalars(select(Team).where(Team.kind == TeamKind.EXPERT_STUDIO).order_by(Team.code)).all()
    today = local_today()
    agreements = {t.id: service.agreements_of(db, t.id) for t in teams}
    year_start = service.local_dt(date(today.year, 1, 1), "00:00")
    held = dict(db.execute(select(OutreachSession.studio_team_id, func.count()).where(
        OutreachSession.status == "done", OutreachSession.starts_at >= year_start,
        OutreachSession.studio_team_id.is_not(None)).group_by(OutreachSession.studio_team_id)).all())
    orgs = _names(db, Organisation, {t.organisation_id for t in teams} | {t.home_organisation_id or 0 for t in teams})
    specs = _names(db, Specialty, {t.specialty_id or 0 for t in teams})
    return render(request, "outreach/studios.html", {
        "teams": teams, "agreements": agreements, "held": held, "orgs": orgs, "specs": specs, "today": today})


def _studio_page(request: Request, db: Session, user: User, team_id: int, *, form: dict[str, str] | None = None,
                 invalid: dict[str, str] | None = None, error: str = "", status_code: int = 200) -> Response:
    _staff_only(user)
    team = service.studio(db, team_id)
    members = db.execute(select(TeamMember, Practitioner).join(
        Practitioner, Practitioner.id == TeamMember.practitioner_id).where(TeamMember.team_id == team.id)
        .order_by(TeamMember.role != "leader", TeamMember.id)).all()
    today = local_today()
    return render(request, "outreach/studio.html", {
        "team": team, "members": members, "agreements": service.agreements_of(db, team.id), "today": today,
        "views": service.session_views(db, service.upcoming(db, studio_team_id=team.id, days=90)),
        "orgs": _names(db, Organisation, {team.organisation_id, team.home_organisation_id or 0}),
        "may_plan": service.is_planner(user), "invalid": invalid or {}, "error": error,
        "form": form or {"starts_on": today.isoformat(), "ends_on": today.replace(year=today.year + 1).isoformat(),
                         "sessions_per_month": "4", "goals": ""}}, status_code=status_code)


@router.get("/outreach/studios/{team_id}")
def studio_page(request: Request, team_id: IdPath, db: DbSession, user: CurrentUser) -> Response:
    return _studio_page(request, db, user, team_id)


@router.post("/outreach/studios/{team_id}/agreements", dependencies=[CsrfChecked])
def agreement_submit(request: Request, team_id: IdPath, db: DbSession, user: CurrentUser, starts_on: FormText = "",
                     ends_on: FormText = "", sessions_per_month: FormText = "", goals: FormText = "") -> Response:
    form = {"starts_on": starts_on, "ends_on": ends_on, "sessions_per_month": sessions_per_month, "goals": goals}
    try:
        problems = FormProblems()
        start = problems.day("starts_on", starts_on, required=True)
        end = problems.day("ends_on", ends_on, required=True)
        per_month = _parse_int(problems, "sessions_per_month", sessions_per_month or "0", 0, 200)
        problems.raise_if_any()
        assert start is not None and end is not None
        service.add_agreement(db, by=user, team_id=team_id, starts_on=start, ends_on=end,
                              sessions_per_month=per_month, goals=goals)
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return _studio_page(request, db, user, team_id, form=form, invalid=messages_by_field(exc.field_errors),
                            error=exc.message, status_code=exc.status_code)
    return RedirectResponse(f"/outreach/studios/{team_id}?done=agreement", status_code=303)


@router.get("/outreach/aid")
def aid_page(request: Request, db: DbSession, user: CurrentUser) -> Response:
    """Aid relationships (对口帮扶) with their batches and who is posted where; planners add to them."""
    return _aid_page(request, db, user)


def _aid_page(request: Request, db: Session, user: User, *, form: str = "", values: dict[str, str] | None = None,
              invalid: dict[str, str] | None = None, error: str = "", status_code: int = 200) -> Response:
    _staff_only(user)
    relationships = db.scalars(select(AidRelationship).order_by(AidRelationship.starts_on)).all()
    batches = db.scalars(select(AidBatch).order_by(AidBatch.relationship_id, AidBatch.number)).all()
    rotations = db.scalars(select(AidRotation).order_by(AidRotation.starts_on, AidRotation.id)).all()
    by_batch: dict[int, list[AidRotation]] = {}
    for r in rotations:
        by_batch.setdefault(r.batch_id, []).append(r)
    org_ids = {r.supporting_organisation_id for r in relationships}
    org_ids |= {r.supported_organisation_id for r in relationships}
    orgs = _names(db, Organisation, org_ids | {r.posted_organisation_id for r in rotations})
    people = _names(db, Practitioner, {r.practitioner_id for r in rotations})
    may_plan = service.is_planner(user)
    return render(request, "outreach/aid.html", {
        "relationships": relationships, "batches": batches, "by_batch": by_batch, "orgs": orgs, "people": people,
        "today": local_today(), "may_plan": may_plan, "form": form, "values": values or {}, "invalid": invalid or {},
        "error": error, "hospitals": _hospitals(db) if may_plan else [],
        "persons": service.person_choices(db) if may_plan else []}, status_code=status_code)


def _hospitals(db: Session) -> list[Organisation]:
    from healthrelay.directory.models import OrgLevel

    return list(db.scalars(select(Organisation).where(Organisation.level.in_((
        OrgLevel.PROVINCIAL, OrgLevel.TERTIARY, OrgLevel.SECONDARY, OrgLevel.TOWNSHIP, OrgLevel.COMMUNITY)))
        .order_by(Organisation.level, Organisation.code)))


def _aid_form(request: Request, db: Session, user: User, form: str, values: dict[str, str], action: Any) -> Response:
    """Run one of the aid forms; on a refusal the page comes back with the form open and its fields marked."""
    try:
        problems = FormProblems()
        action(problems)
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return _aid_page(request, db, user, form=form, values=values, invalid=messages_by_field(exc.field_errors),
                         error=exc.message, status_code=exc.status_code)
    return RedirectResponse(f"/outreach/aid?done={form}", status_code=303)


@router.post("/outreach/aid", dependencies=[CsrfChecked])
def aid_create(request: Request, db: DbSession, user: CurrentUser, code: FormText = "", name: FormText = "",
               supporting_organisation_id: FormText = "", supported_organisation_id: FormText = "",
               starts_on: FormText = "", ends_on: FormText = "", goals: FormText = "") -> Response:
    values = {"code": code, "name": name, "supporting_organisation_id": supporting_organisation_id,
              "supported_organisation_id": supported_organisation_id, "starts_on": starts_on, "ends_on": ends_on,
              "goals": goals}

    def act(problems: FormProblems) -> None:
        helping = _required_id(problems, "supporting_organisation_id", supporting_organisation_id)
        helped = _required_id(problems, "supported_organisation_id", supported_organisation_id)
        start = problems.day("starts_on", starts_on, required=True)
        end = problems.day("ends_on", ends_on, required=True)
        problems.raise_if_any()
        assert helping and helped and start and end
        service.create_aid_relationship(db, by=user, code=code, name=name, supporting_organisation_id=helping,
                                        supported_organisation_id=helped, starts_on=start, ends_on=end, goals=goals)
    return _aid_form(request, db, user, "aid", values, act)


@router.post("/outreach/aid/{relationship_id}/batches", dependencies=[CsrfChecked])
def aid_batch(request: Request, relationship_id: IdPath, db: DbSession, user: CurrentUser, number: FormText = "",
              starts_on: FormText = "", ends_on: FormText = "", goals: FormText = "") -> Response:
    values = {"relationship_id": str(relationship_id), "number": number, "starts_on": starts_on, "ends_on": ends_on,
              "goals": goals}

    def act(problems: FormProblems) -> None:
        n = _parse_int(problems, "number", number, 1, 999)
        start = problems.day("starts_on", starts_on, required=True)
        end = problems.day("ends_on", ends_on, required=True)
        problems.raise_if_any()
        assert start and end
        service.add_batch(db, by=user, relationship_id=relationship_id, number=n, starts_on=start, ends_on=end,
                          goals=goals)
    return _aid_form(request, db, user, f"batch-{relationship_id}", values, act)


@router.post("/outreach/batches/{batch_id}/rotations", dependencies=[CsrfChecked])
def aid_rotation(request: Request, batch_id: IdPath, db: DbSession, user: CurrentUser, practitioner_id: FormText = "",
                 posted_organisation_id: FormText = "", starts_on: FormText = "", ends_on: FormText = "",
                 role: FormText = "", goals: FormText = "") -> Response:
    values = {"practitioner_id": practitioner_id, "posted_organisation_id": posted_organisation_id,
              "starts_on": starts_on, "ends_on": ends_on, "role": role, "goals": goals}

    def act(problems: FormProblems) -> None:
        person = _required_id(problems, "practitioner_id", practitioner_id)
        posted = _required_id(problems, "posted_organisation_id", posted_organisation_id)
        start = problems.day("starts_on", starts_on, required=True)
        end = problems.day("ends_on", ends_on, required=True)
        problems.raise_if_any()
        assert person and posted and start and end
        service.add_rotation(db, by=user, batch_id=batch_id, practitioner_id=person, posted_organisation_id=posted,
                             starts_on=start, ends_on=end, role=role, goals=goals)
    return _aid_form(request, db, user, f"rotation-{batch_id}", values, act)
