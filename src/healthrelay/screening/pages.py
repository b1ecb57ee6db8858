"""Screening pages, tablet-first and tolerant of a slow connection.

Each registration form carries a client token made when the page is drawn; a submit that timed out can be sent
again and still makes one attendance. Buttons disable while sending. Pages are small: the event page lists the
latest 200 people, results are one short form per service. Rules live in service.py; routes parse, call, render.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from healthrelay.access import service as access
from healthrelay.accounts.models import User
from healthrelay.core.db import LOCAL_TZ, utcnow
from healthrelay.core.deps import CsrfChecked, CurrentUser, DbSession
from healthrelay.core.errors import DomainError, InvalidInput, NotFound, field_error
from healthrelay.core.ids import IdPath
from healthrelay.directory.models import Area, AreaLevel, Organisation, Team, TeamKind
from healthrelay.patients import service as patients
from healthrelay.patients.service import LikelyDuplicates
from healthrelay.screening import service
from healthrelay.screening.models import EVENT_KINDS, ScreeningAttendance, ScreeningEvent, ScreeningImport
from healthrelay.web.forms import LOCAL_INPUT, FormProblems, messages_by_field, parse_local, reraise_if_access
from healthrelay.web.templating import render

router = APIRouter(include_in_schema=False)

FormText = Annotated[str, Form()]
FormList = Annotated[list[str], Form()]
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def _local_input(value: datetime) -> str:
    return value.astimezone(LOCAL_TZ).strftime(LOCAL_INPUT)


# ---------------------------------------------------------------------------- events list and plan form

def _plan_choices(db: Session, user: User) -> dict[str, Any]:
    """The plan form's choices: the host organisation's family-doctor teams (an event's team is one of them)."""
    teams = db.query(Team).filter(Team.kind == TeamKind.FAMILY_DOCTOR, Team.organisation_id == user.organisation_id)
    villages = db.query(Area).filter(Area.level.in_((AreaLevel.VILLAGE, AreaLevel.TOWNSHIP))).order_by(Area.code)
    return {"teams": teams.order_by(Team.name).limit(200).all(), "areas": villages.limit(1000).all(),
            "services": service.services_of(db), "kinds": EVENT_KINDS}


def _list_page(request: Request, db: Session, user: User, *, form: dict[str, Any],
               invalid: dict[str, str] | None = None, error: str = "", status_code: int = 200) -> Response:
    may_plan = user.role in service.STAFF_ROLES and user.organisation_id is not None
    invalid = invalid or {}
    order = ["kind", "title", "starts_at", "ends_at", "place", "area_id", "team_id", "services"]
    events = service.visible_events(db, user=user)
    hosts = {e.host_organisation_id for e in events}
    names = dict(db.query(Organisation.id, Organisation.name).filter(Organisation.id.in_(hosts)).all()) if hosts else {}
    return render(request, "screening/screening_events.html", {
        "events": events, "may_plan": may_plan, "form": form, "invalid": invalid,
        "error": error, "focus": next((f for f in order if f in invalid), "kind"), "names": names,
        **(_plan_choices(db, user) if may_plan else {})}, status_code=status_code)


@router.get("/screening")
def events_page(request: Request, db: DbSession, user: CurrentUser) -> Response:
    start = (utcnow() + timedelta(days=7)).astimezone(LOCAL_TZ).replace(hour=8, minute=0, second=0, microsecond=0)
    return _list_page(request, db, user, form={
        "kind": "free_clinic", "title": "", "starts_at": _local_input(start),
        "ends_at": _local_input(start + timedelta(hours=8)), "place": "", "area_id": "", "team_id": "",
        "departments": "", "services": ["bp", "glucose", "consultation"], "notes": ""})


@router.post("/screening", dependencies=[CsrfChecked])
def plan_submit(request: Request, db: DbSession, user: CurrentUser, kind: FormText = "", title: FormText = "",
                starts_at: FormText = "", ends_at: FormText = "", place: FormText = "", area_id: FormText = "",
                team_id: FormText = "", departments: FormText = "", notes: FormText = "",
                services: FormList = []) -> Response:  # noqa: B006
    form = {"kind": kind, "title": title, "starts_at": starts_at, "ends_at": ends_at, "place": place,
            "area_id": area_id, "team_id": team_id, "departments": departments, "services": services, "notes": notes}
    try:
        problems = FormProblems()
        times: dict[str, datetime | None] = {}
        for name, value in (("starts_at", starts_at), ("ends_at", ends_at)):
            try:
                times[name] = parse_local(value, name)
            except InvalidInput as exc:
                problems.errors += exc.field_errors
                times[name] = None
        area = problems.opt_int("area_id", area_id)
        team = problems.opt_int("team_id", team_id)
        if user.organisation_id is None:
            problems.add("kind", "您的账号不属于任何机构 / your account belongs to no organisation")
        problems.raise_if_any()
        assert times["starts_at"] is not None and times["ends_at"] is not None and user.organisation_id is not None
        event = service.plan_event(db, by=user, plan=service.EventPlan(
            kind=kind, title=title, host_organisation_id=user.organisation_id, starts_at=times["starts_at"],
            ends_at=times["ends_at"], services=services, team_id=team, place=place, area_id=area,
            departments=[d for d in departments.replace("，", ",").split(",")], notes=notes))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return _list_page(request, db, user, form=form, invalid=messages_by_field(exc.field_errors),
                          error=exc.message, status_code=exc.status_code)
    return RedirectResponse(f"/screening/events/{event.id}?done=planned", status_code=303)


# ---------------------------------------------------------------------------- one event

def _event_page(request: Request, db: Session, user: User, event: ScreeningEvent, *,
                invalid: dict[str, str] | None = None, error: str = "", status_code: int = 200) -> Response:
    runner = service.may_run(db, user, event)
    names = {s.code: s for s in service.services_of(db)}
    return render(request, "screening/screening_event.html", {
        "event": event, "runner": runner, "counts": service.event_counts(db, event_id=event.id),
        "people": service.attendance_rows(db, event_id=event.id) if runner else [], "services": names,
        "host": db.get(Organisation, event.host_organisation_id),
        "team": db.get(Team, event.team_id) if event.team_id else None,
        "area": db.get(Area, event.area_id) if event.area_id else None,
        "imports": db.query(ScreeningImport).filter(ScreeningImport.event_id == event.id)
        .order_by(ScreeningImport.id.desc()).limit(10).all(),
        "invalid": invalid or {}, "error": error, "done": request.query_params.get("done", "")},
        status_code=status_code)


@router.get("/screening/events/{event_id:int}")
def event_page(request: Request, db: DbSession, user: CurrentUser, event_id: IdPath) -> Response:
    return _event_page(request, db, user, service.event_for_figures(db, user=user, event_id=event_id))


@router.post("/screening/events/{event_id:int}/status", dependencies=[CsrfChecked])
def status_submit(db: DbSession, user: CurrentUser, event_id: IdPath, status: FormText = "") -> Response:
    service.set_status(db, by=user, event_id=event_id, status=status)
    return RedirectResponse(f"/screening/events/{event_id}?done={status}", status_code=303)


@router.post("/screening/events/{event_id:int}/counts", dependencies=[CsrfChecked])
def counts_submit(request: Request, db: DbSession, user: CurrentUser, event_id: IdPath, leaflets_given: FormText = "",
                  medicines_given: FormText = "", medicines_value: FormText = "") -> Response:
    event = service.event_for_figures(db, user=user, event_id=event_id)
    try:
        problems = FormProblems()
        leaflets = problems.opt_int("leaflets_given", leaflets_given) or 0
        medicines = problems.opt_int("medicines_given", medicines_given) or 0
        value_fen = 0
        if medicines_value.strip():
            try:
                value_fen = round(float(medicines_value) * 100)
            except (ValueError, OverflowError):  # "abc", "nan", "inf"
                problems.add("medicines_value", "须为金额（元）/ must be an amount in yuan")
        problems.raise_if_any()
        service.set_counts(db, by=user, event_id=event_id, leaflets_given=leaflets, medicines_given=medicines,
                           medicines_value_fen=value_fen)
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return _event_page(request, db, user, event, invalid=messages_by_field(exc.field_errors), error=exc.message,
                           status_code=exc.status_code)
    return RedirectResponse(f"/screening/events/{event_id}?done=counts", status_code=303)


@router.get("/screening/events/{event_id:int}/report.xlsx")
def report_xlsx(db: DbSession, user: CurrentUser, event_id: IdPath) -> Response:
    event = service.event_for_figures(db, user=user, event_id=event_id)
    return Response(service.report_sheet(db, event_id=event_id), media_type=XLSX,
                    headers={"Content-Disposition": f'attachment; filename="screening-{event.number}.xlsx"'})


# ---------------------------------------------------------------------------- quick registration

def _register_page(request: Request, db: Session, event: ScreeningEvent, *, form: dict[str, Any],
                   invalid: dict[str, str] | None = None, error: str = "", candidates: list[Any] | None = None,
                   status_code: int = 200) -> Response:
    invalid = invalid or {}
    order = ["resident_id", "name", "sex", "birth_date", "phone", "village"]
    return render(request, "screening/screening_register.html", {
        "event": event, "form": form, "invalid": invalid, "error": error, "candidates": candidates or [],
        "villages": patients.village_choices(db), "focus": next((f for f in order if f in invalid), "resident_id"),
        "done": request.query_params.get("done", "")}, status_code=status_code)


@router.get("/screening/events/{event_id:int}/register")
def register_page(request: Request, db: DbSession, user: CurrentUser, event_id: IdPath) -> Response:
    event = service.get_event(db, event_id)
    service.require_runner(db, user, event)
    return _register_page(request, db, event, form={
        "client_token": service.new_client_token(), "resident_id": "", "name": "", "sex": "", "birth_date": "",
        "phone": "", "village": str(event.area_id or "")})


@router.post("/screening/events/{event_id:int}/register", dependencies=[CsrfChecked])
def register_submit(request: Request, db: DbSession, user: CurrentUser, event_id: IdPath, client_token: FormText = "",
                    resident_id: FormText = "", name: FormText = "", sex: FormText = "", birth_date: FormText = "",
                    phone: FormText = "", village: FormText = "", patient_id: FormText = "",
                    confirm_new: FormText = "") -> Response:
    event = service.get_event(db, event_id)
    service.require_runner(db, user, event)
    form = {"client_token": client_token, "resident_id": resident_id, "name": name, "sex": sex,
            "birth_date": birth_date, "phone": phone, "village": village}
    try:
        problems = FormProblems()
        born = None
        if birth_date.strip():
            try:
                born = date.fromisoformat(birth_date.strip())
            except ValueError:
                problems.add("birth_date", "日期格式应为 年-月-日 / the date must read YYYY-MM-DD")
        area = problems.opt_int("village", village)
        chosen = problems.opt_int("patient_id", patient_id)
        problems.raise_if_any()
        attendance = service.quick_register(db, by=user, event_id=event_id, client_token=client_token,
                                            resident_id=resident_id, name=name, sex=sex, birth_date=born,
                                            phone=phone, village=area, patient_id=chosen,
                                            confirm_new=confirm_new == "1")
    except LikelyDuplicates as exc:
        db.rollback()
        return _register_page(request, db, event, form=form, error=exc.message, candidates=exc.candidates,
                              status_code=409)
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        fields = {"area_id": "village", "client_token": "name"}
        return _register_page(request, db, event, form=form, error=exc.message,
                              invalid=messages_by_field(exc.field_errors, fields), status_code=exc.status_code)
    return RedirectResponse(f"/screening/events/{event_id}/attendances/{attendance.id}?done=registered",
                            status_code=303)


# ---------------------------------------------------------------------------- results of one person

def _attendance_page(request: Request, db: Session, user: User, event: ScreeningEvent, attendance_id: int, *,
                     forms: dict[str, dict[str, str]] | None = None, invalid: dict[str, str] | None = None,
                     error: str = "", failed: str = "", status_code: int = 200) -> Response:
    attendance = service.get_attendance(db, user=user, event_id=event.id, attendance_id=attendance_id)
    record = patients.view(db, user=user, patient=access.resolve_patient(db, attendance.patient_id))
    results = service.results_of(db, attendance.id)
    offered = [s for s in service.services_of(db) if s.code in event.services]
    values = {s.code: {k: str(v) for k, v in (results[s.code].values if s.code in results else {}).items()}
              for s in offered}
    values.update(forms or {})
    return render(request, "screening/screening_attendance.html", {
        "event": event, "attendance": attendance, "patient": record, "offered": offered, "results": results,
        "values": values, "invalid": invalid or {}, "error": error, "failed": failed,
        "focus_service": failed or next((s.code for s in offered if s.code not in results), ""),
        "done": request.query_params.get("done", "")}, status_code=status_code)


@router.get("/screening/events/{event_id:int}/attendances/{attendance_id:int}")
def attendance_page(request: Request, db: DbSession, user: CurrentUser, event_id: IdPath,
                    attendance_id: IdPath) -> Response:
    event = service.get_event(db, event_id)
    return _attendance_page(request, db, user, event, attendance_id)


@router.post("/screening/events/{event_id:int}/attendances/{attendance_id:int}/results/{code}",
             dependencies=[CsrfChecked])
async def result_submit(request: Request, db: DbSession, user: CurrentUser, event_id: IdPath, attendance_id: IdPath,
                        code: str) -> Response:
    form = await request.form()
    values = {k: str(v) for k, v in form.items() if k != "csrf_token"}
    return await run_in_threadpool(_result_submit, request, db, user, event_id, attendance_id, code, values)


def _result_submit(request: Request, db: Session, user: User, event_id: int, attendance_id: int, code: str,
                   values: dict[str, str]) -> Response:
    event = service.get_event(db, event_id)
    attendance = db.get(ScreeningAttendance, attendance_id)
    if attendance is None or attendance.event_id != event.id:  # record_result checks the runner and the access
        raise NotFound(f"本次活动没有编号为 {attendance_id} 的登记 / no attendance {attendance_id} at this event")
    try:
        service.record_result(db, by=user, attendance_id=attendance.id, service_code=code, values=values)
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        invalid = {f"{code}.{k}": v for k, v in messages_by_field(exc.field_errors).items()}
        return _attendance_page(request, db, user, event, attendance_id, forms={code: values}, invalid=invalid,
                                error=exc.message, failed=code, status_code=exc.status_code)
    return RedirectResponse(f"/screening/events/{event_id}/attendances/{attendance_id}?done={code}#svc-{code}",
                            status_code=303)


# ---------------------------------------------------------------------------- school sheet import

def _import_page(request: Request, event: ScreeningEvent, *,
                 record: ScreeningImport | None = None, invalid: dict[str, str] | None = None, error: str = "",
                 status_code: int = 200) -> Response:
    return render(request, "screening/screening_import.html", {
        "event": event, "record": record, "invalid": invalid or {}, "error": error,
        "max_rows": service.MAX_IMPORT_ROWS}, status_code=status_code)


@router.get("/screening/events/{event_id:int}/import")
def import_page(request: Request, db: DbSession, user: CurrentUser, event_id: IdPath) -> Response:
    event = service.get_event(db, event_id)
    service.require_runner(db, user, event)
    return _import_page(request, event)


@router.get("/screening/events/{event_id:int}/import/example.xlsx")
def import_example(db: DbSession, user: CurrentUser, event_id: IdPath) -> Response:
    from healthrelay.screening.sheets import make_school_sheet

    service.require_runner(db, user, service.get_event(db, event_id))
    return Response(make_school_sheet(3, seed=1), media_type=XLSX,
                    headers={"Content-Disposition": 'attachment; filename="school-sheet-example.xlsx"'})


@router.post("/screening/events/{event_id:int}/import", dependencies=[CsrfChecked])
async def import_submit(request: Request, db: DbSession, user: CurrentUser, event_id: IdPath,
                        file: Annotated[UploadFile | str, File()] = "") -> Response:
    content, filename = b"", ""
    if not isinstance(file, str):
        content = await file.read(service.MAX_IMPORT_BYTES + 1)
        filename = file.filename or ""
    # The database work runs in the thread pool (see "Async routes" in docs/architecture.md).
    return await run_in_threadpool(_import_submit, request, db, user, event_id, filename, content)


def _import_submit(request: Request, db: Session, user: User, event_id: int, filename: str,
                   content: bytes) -> Response:
    event = service.get_event(db, event_id)
    service.require_runner(db, user, event)
    try:
        if not content:
            raise InvalidInput("请选择文件 / choose a file", field_errors=[field_error("file", "required")])
        record = service.import_school_sheet(db, by=user, event_id=event_id, filename=filename, content=content)
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return _import_page(request, event, invalid=messages_by_field(exc.field_errors), error=exc.message,
                            status_code=exc.status_code)
    return _import_page(request, event, record=record)


@router.get("/screening/events/{event_id:int}/imports/{import_id:int}/errors.xlsx")
def import_errors(db: DbSession, user: CurrentUser, event_id: IdPath, import_id: IdPath) -> Response:
    service.require_runner(db, user, service.get_event(db, event_id))
    record = db.get(ScreeningImport, import_id)
    if record is None or record.event_id != event_id:
        raise NotFound(f"没有编号为 {import_id} 的导入 / no import {import_id}")
    return Response(service.error_sheet(record), media_type=XLSX,
                    headers={"Content-Disposition": f'attachment; filename="import-{import_id}-errors.xlsx"'})
