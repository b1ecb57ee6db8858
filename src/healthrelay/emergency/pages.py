"""Emergency pages: the dispatch board, the call intake, the call page, the crew page and the 1030 metrics.

Server-rendered and usable without JavaScript; htmx refreshes the board on live events (hr-live, from
/static/live.js) with a 15 s poll as fallback; /static/dispatch.js ticks the waiting clocks, draws the map,
searches villages and patients as the dispatcher types, and hands the crew page the phone's position.
Every rule lives in service.py; routes parse forms, call it and render what it answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from healthrelay.accounts.models import User
from healthrelay.core.db import utcnow
from healthrelay.core.deps import CsrfChecked, CurrentUser, DbSession, client_address
from healthrelay.core.errors import DomainError, InvalidInput
from healthrelay.directory.models import Organisation
from healthrelay.emergency import coverage_pages, metrics, service
from healthrelay.emergency import dispatch as ranking
from healthrelay.emergency.models import (
    Ambulance,
    CallCategory,
    CallState,
    EmergencyCall,
)
from healthrelay.web.forms import FormProblems, messages_by_field, reraise_if_access
from healthrelay.web.templating import render

router = APIRouter(include_in_schema=False)
router.include_router(coverage_pages.router)  # /emergency/coverage: stations' reach and the placement study

FormText = Annotated[str, Form()]
SHANGHAI = ZoneInfo("Asia/Shanghai")
CATEGORIES = tuple(CallCategory)
RECOMMEND_ON_BOARD = 20
INTAKE_FIELDS = ("received_at", "caller_name", "caller_phone", "area_id", "area_q", "latitude", "longitude",
                 "address", "complaint", "category", "priority", "onset_at", "patient_id")
TIMELINE = (("received_at", "received"), ("answered_at", "answered"), ("dispatched_at", "dispatched"),
            ("departed_at", "departed"), ("on_scene_at", "on_scene"), ("left_scene_at", "left_scene"),
            ("at_hospital_at", "at_hospital"), ("closed_at", "closed"))


# --- small helpers --------------------------------------------------------------------------------

def _iso(value: datetime | None) -> str:
    return value.isoformat() if value is not None else ""


def _parse_iso(problems: FormProblems, name: str, value: str) -> datetime | None:
    value = value.strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        problems.add(name, "时间格式有误 / not a valid time")
        return None
    return parsed.replace(tzinfo=SHANGHAI) if parsed.tzinfo is None else parsed


def _float(problems: FormProblems, name: str, value: str) -> float | None:
    value = value.strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        problems.add(name, "须为数字 / must be a number")
        return None


def _names(db: Session, calls: list[EmergencyCall], ambs: list[Ambulance]) -> dict[int, str]:
    return service.organisation_names(db, [c.destination_organisation_id for c in calls]
                                      + [c.station_organisation_id for c in calls]
                                      + [a.station_organisation_id for a in ambs])


# --- the board ------------------------------------------------------------------------------------

def _recommendations(db: Session, calls: list[EmergencyCall]) -> dict[int, Any]:
    """Recommendations for the calls still waiting for an ambulance, the most urgent first (bounded: each
    costs a shortest-path run, and a board refreshes often)."""
    out: dict[int, Any] = {}
    for call in calls:
        if len(out) >= RECOMMEND_ON_BOARD:
            break
        if call.state in (CallState.RECEIVED, CallState.ANSWERED):
            try:
                out[call.id] = ranking.recommend(db, call_id=call.id)
            except DomainError:
                continue
    return out


def _map_data(db: Session, calls: list[EmergencyCall], ambs: list[Ambulance]) -> dict[str, Any]:
    stations = service.station_organisations(db)
    return {
        "stations": [{"name": s.name, "lon": s.longitude, "lat": s.latitude} for s in stations
                     if s.latitude is not None and s.longitude is not None],
        "ambulances": [{"code": a.code, "state": str(a.state), "lon": a.longitude, "lat": a.latitude} for a in ambs],
        "calls": [{"number": c.number, "priority": c.priority, "lon": c.longitude, "lat": c.latitude,
                   "category": str(c.category)} for c in calls],
    }


def _board_context(db: Session, user: User) -> dict[str, Any]:
    calls = service.open_calls(db)
    ambs = service.ambulances(db)
    by_station: dict[int, list[Ambulance]] = {}
    for a in ambs:
        by_station.setdefault(a.station_organisation_id, []).append(a)
    call_numbers = {c.id: c.number for c in calls}
    return {"calls": calls, "recs": _recommendations(db, calls), "by_station": by_station,
            "org_names": _names(db, calls, ambs), "call_numbers": call_numbers, "now": utcnow(),
            "amb_codes": {a.id: a.code for a in ambs},
            "map_json": json.dumps(_map_data(db, calls, ambs), ensure_ascii=False).replace("</", "<\\/")}


@router.get("/emergency")
def board(request: Request, db: DbSession, user: CurrentUser) -> Response:
    service.require_board(db, user)
    return render(request, "emergency/board.html", {**_board_context(db, user),
                                                    "done": request.query_params.get("done", ""),
                                                    "error": request.query_params.get("error", "")})


@router.get("/emergency/_board")
def board_fragment(request: Request, db: DbSession, user: CurrentUser) -> Response:
    """The calls and ambulances alone, for htmx to swap in on a live event or the poll."""
    service.require_board(db, user)
    return render(request, "emergency/_board.html", _board_context(db, user))


# --- intake ---------------------------------------------------------------------------------------

def _intake_page(request: Request, db: Session, *, form: dict[str, str], invalid: dict[str, str] | None = None,
                 error: str = "", status_code: int = 200, area_choices: list[Any] | None = None) -> Response:
    invalid = invalid or {}
    focus = next((f for f in INTAKE_FIELDS if f in invalid), "caller_phone")
    if focus == "area_id":
        focus = "area_q"
    return render(request, "emergency/new.html", {
        "form": form, "invalid": invalid, "error": error, "categories": CATEGORIES,
        "priorities": service.PRIORITIES, "focus": focus, "area_choices": area_choices or []},
        status_code=status_code)


@router.get("/emergency/calls/new")
def new_call_page(request: Request, db: DbSession, user: CurrentUser) -> Response:
    """The form opens when the phone is picked up: that moment is the call's received time."""
    service.require_board(db, user)
    return _intake_page(request, db, form={"received_at": _iso(utcnow()), "priority": "2", "category": ""})


@router.post("/emergency/calls/new", dependencies=[CsrfChecked])
def new_call_submit(request: Request, db: DbSession, user: CurrentUser, received_at: FormText = "",
                    caller_name: FormText = "", caller_phone: FormText = "", area_id: FormText = "",
                    area_q: FormText = "", latitude: FormText = "", longitude: FormText = "", address: FormText = "",
                    complaint: FormText = "", category: FormText = "", priority: FormText = "",
                    onset_at: FormText = "", patient_id: FormText = "") -> Response:
    service.require_board(db, user)
    values = (received_at, caller_name, caller_phone, area_id, area_q, latitude, longitude, address, complaint,
              category, priority, onset_at, patient_id)
    form = {name: value.strip() for name, value in zip(INTAKE_FIELDS, values, strict=True)}
    choices: list[Any] = []
    try:
        call = _create_from_form(db, user, form, client_address(request), choices)
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return _intake_page(request, db, form=form, invalid=messages_by_field(exc.field_errors), error=exc.message,
                            status_code=exc.status_code, area_choices=choices)
    return RedirectResponse(f"/emergency/calls/{call.id}?done=created", status_code=303)


def _create_from_form(db: Session, user: User, form: dict[str, str], address: str,
                      choices: list[Any]) -> EmergencyCall:
    problems = FormProblems()
    area = problems.opt_int("area_id", form["area_id"])
    if area is None and form["area_q"] and not problems.errors:
        # Without JavaScript the dispatcher types the village; one match is taken, several are offered.
        found = service.search_areas(db, q=form["area_q"], limit=10)
        if len(found) == 1:
            area = found[0][0].id
            form["area_id"] = str(area)
        elif found:
            choices.extend(found)
            problems.add("area_id", f"“{form['area_q']}”有 {len(found)} 个匹配，请选择 / "
                                    "several places match; choose one")
        else:
            problems.add("area_id", f"没有找到“{form['area_q']}” / no village or town matches")
    priority = problems.opt_int("priority", form["priority"])
    data = service.CallInput(
        category=form["category"], priority=priority or 0, complaint=form["complaint"],
        caller_name=form["caller_name"], caller_phone=form["caller_phone"], area_id=area,
        latitude=_float(problems, "latitude", form["latitude"]), longitude=_float(problems, "longitude",
                                                                                   form["longitude"]),
        address=form["address"], patient_id=problems.opt_int("patient_id", form["patient_id"]),
        received_at=_parse_iso(problems, "received_at", form["received_at"]),
        onset_at=_parse_iso(problems, "onset_at", form["onset_at"]))
    if problems.errors:
        try:
            service.validate_call(db, data)
        except InvalidInput as exc:
            seen = {p["field"] for p in problems.errors}
            problems.errors += [e for e in exc.field_errors if e["field"] not in seen]
        problems.raise_if_any()
    return service.create_call(db, by=user, data=data, client_address=address)


# --- the call page and its actions ----------------------------------------------------------------

def _timeline(call: EmergencyCall) -> list[dict[str, Any]]:
    rows = []
    previous: datetime | None = None
    for attr, key in TIMELINE:
        at = getattr(call, attr)
        if attr == "closed_at" and call.state == CallState.CANCELLED:
            key = "cancelled"
        rows.append({"key": key, "at": at, "since_prev": (at - previous).total_seconds() if at and previous else None,
                     "since_call": (at - call.received_at).total_seconds() if at else None})
        previous = at or previous
    return rows


def _call_page(request: Request, db: Session, user: User, call_id: int, *, error: str = "",
               invalid: dict[str, str] | None = None, status_code: int = 200) -> Response:
    call = service.get_call_for(db, user=user, call_id=call_id, client_address=client_address(request))
    board_user = service.may_use_board(db, user)
    rec = None
    if board_user and call.state in (CallState.RECEIVED, CallState.ANSWERED):
        rec = ranking.recommend(db, call_id=call.id)
    events = service.call_events(db, call.id)
    log = service.ambulance_log(db, call_id=call.id)
    amb = db.get(Ambulance, call.ambulance_id) if call.ambulance_id else None
    orgs = service.organisation_names(db, [call.destination_organisation_id, call.station_organisation_id,
                                           call.from_organisation_id]
                                      + ([d.organisation_id for d in [rec.destination, *rec.alternatives] if d]
                                         if rec else []))
    users = service.user_names(db, [e.by_user_id for e in events] + [r.by_user_id for r in log])
    return render(request, "emergency/call.html", {
        "call": call, "rec": rec, "events": events, "log": log, "amb": amb, "orgs": orgs, "users": users,
        "timeline": _timeline(call), "board_user": board_user, "error": error, "invalid": invalid or {},
        "done": request.query_params.get("done", ""),
        "can_cancel": board_user and call.state in (CallState.RECEIVED, CallState.ANSWERED, CallState.DISPATCHED),
        "shown": call.recommendation or {}}, status_code=status_code)


@router.get("/emergency/calls/{call_id:int}")
def call_page(request: Request, db: DbSession, user: CurrentUser, call_id: int) -> Response:
    return _call_page(request, db, user, call_id)


@router.post("/emergency/calls/{call_id:int}/dispatch", dependencies=[CsrfChecked])
def dispatch_submit(request: Request, db: DbSession, user: CurrentUser, call_id: int, ambulance_id: FormText = "",
                    destination_organisation_id: FormText = "", back: FormText = "") -> Response:
    """One-key dispatch from the board (back=board) or the call page."""
    try:
        problems = FormProblems()
        amb = problems.opt_int("ambulance_id", ambulance_id)
        dest = problems.opt_int("destination_organisation_id", destination_organisation_id)
        if amb is None and not problems.errors:
            problems.add("ambulance_id", "请选择救护车 / choose an ambulance")
        problems.raise_if_any()
        assert amb is not None
        call = service.dispatch(db, call_id=call_id, ambulance_id=amb, destination_organisation_id=dest, by=user,
                                client_address=client_address(request))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        if back == "board":
            return render(request, "emergency/board.html", {**_board_context(db, user), "error": exc.message,
                                                            "done": ""}, status_code=exc.status_code)
        return _call_page(request, db, user, call_id, error=exc.message,
                          invalid=messages_by_field(exc.field_errors), status_code=exc.status_code)
    target = "/emergency?done=dispatched" if back == "board" else f"/emergency/calls/{call.id}?done=dispatched"
    return RedirectResponse(target, status_code=303)


@router.post("/emergency/calls/{call_id:int}/cancel", dependencies=[CsrfChecked])
def cancel_submit(request: Request, db: DbSession, user: CurrentUser, call_id: int, reason: FormText = "") -> Response:
    try:
        service.cancel_call(db, call_id=call_id, by=user, reason=reason[:2000], client_address=client_address(request))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return _call_page(request, db, user, call_id, error=exc.message, invalid=messages_by_field(exc.field_errors),
                          status_code=exc.status_code)
    return RedirectResponse(f"/emergency/calls/{call_id}?done=cancelled", status_code=303)


# --- the crew page --------------------------------------------------------------------------------

def _crew_page(request: Request, db: Session, user: User, ambulance_id: int, *, error: str = "",
               invalid: dict[str, str] | None = None, status_code: int = 200) -> Response:
    amb = service.get_ambulance(db, ambulance_id)
    if not service.may_crew(db, user, amb):
        service.require_board(db, user)
    call = db.get(EmergencyCall, amb.current_call_id) if amb.current_call_id else None
    dest = db.get(Organisation, call.destination_organisation_id) if call and call.destination_organisation_id else None
    station = db.get(Organisation, amb.station_organisation_id)
    return render(request, "emergency/crew.html", {
        "amb": amb, "call": call, "dest": dest, "station": station, "next_states": service.allowed_next_states(amb),
        "needs_reason": {str(t) for s, t in service.REASON_REQUIRED if s == amb.state}, "error": error,
        "invalid": invalid or {}, "done": request.query_params.get("done", ""),
        "log": service.ambulance_log(db, ambulance_id=amb.id, limit=8)}, status_code=status_code)


@router.get("/emergency/ambulances/{ambulance_id:int}/crew")
def crew_page(request: Request, db: DbSession, user: CurrentUser, ambulance_id: int) -> Response:
    return _crew_page(request, db, user, ambulance_id)


@router.post("/emergency/ambulances/{ambulance_id:int}/crew", dependencies=[CsrfChecked])
def crew_submit(request: Request, db: DbSession, user: CurrentUser, ambulance_id: int, to_state: FormText = "",
                expected_state: FormText = "", latitude: FormText = "", longitude: FormText = "",
                reason: FormText = "") -> Response:
    try:
        problems = FormProblems()
        lat = _float(problems, "latitude", latitude)
        lon = _float(problems, "longitude", longitude)
        problems.raise_if_any()
        service.change_ambulance_state(db, ambulance_id=ambulance_id, to_state=to_state, by=user, latitude=lat,
                                       longitude=lon, reason=reason[:2000], expected_state=expected_state or None,
                                       client_address=client_address(request))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return _crew_page(request, db, user, ambulance_id, error=exc.message,
                          invalid=messages_by_field(exc.field_errors), status_code=exc.status_code)
    return RedirectResponse(f"/emergency/ambulances/{ambulance_id}/crew?done={to_state}", status_code=303)


# --- metrics --------------------------------------------------------------------------------------

@dataclass
class MetricFilters:
    months: int = 12
    station_id: int | None = None

    def since(self) -> datetime:
        return utcnow() - timedelta(days=31 * self.months)


def _metric_filters(months: str, station: str) -> MetricFilters:
    problems = FormProblems()
    n = problems.opt_int("months", months)
    sid = problems.opt_int("station", station)
    if n is not None and not 1 <= n <= 36:
        problems.add("months", "1-36")
    problems.raise_if_any()
    return MetricFilters(months=n or 12, station_id=sid)


@router.get("/emergency/metrics")
def metrics_page(request: Request, db: DbSession, user: CurrentUser, months: str = "", station: str = "") -> Response:
    service.require_metrics(db, user)
    filters = _metric_filters(months, station)
    rows = metrics.response_metrics(db, since=filters.since(), station_id=filters.station_id)
    limits = metrics.Limits.from_db(db)
    by_station = metrics.totals(rows, key="station")
    by_month = metrics.totals(rows, key="month")
    chart = {"months": sorted(by_month), "answer": [], "depart": [], "on_scene": []}
    for m in chart["months"]:
        for name in ("answer", "depart", "on_scene"):
            share = getattr(by_month[m], name).share
            chart[name].append(None if share is None else round(share * 100, 1))
    return render(request, "emergency/metrics.html", {
        "rows": rows, "by_station": by_station, "total": metrics.totals(rows).get("all"), "limits": limits,
        "filters": filters, "stations": service.station_organisations(db),
        "chart_json": json.dumps(chart, ensure_ascii=False)})


@router.get("/emergency/metrics.xlsx")
def metrics_xlsx(db: DbSession, user: CurrentUser, months: str = "", station: str = "") -> Response:
    service.require_metrics(db, user)
    filters = _metric_filters(months, station)
    body = metrics.to_xlsx(metrics.response_metrics(db, since=filters.since(), station_id=filters.station_id),
                           metrics.Limits.from_db(db))
    return Response(body, media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                    headers={"Content-Disposition": 'attachment; filename="emergency-1030.xlsx"'})


@router.get("/emergency/metrics/missed")
def missed_page(request: Request, db: DbSession, user: CurrentUser, target: str = "on_scene", station: str = "",
                month: str = "", area: str = "") -> Response:
    service.require_metrics(db, user)
    problems = FormProblems()
    sid = problems.opt_int("station", station)
    if area not in ("", "urban", "rural"):
        problems.add("area", "urban | rural")
    problems.raise_if_any()
    calls = metrics.missed_calls(db, target=target, station_id=sid, month=month or None,
                                 urban=None if not area else area == "urban")
    return render(request, "emergency/missed.html", {
        "calls": calls, "target": target, "month": month, "area": area,
        "station_name": service.organisation_names(db, [sid]).get(sid or 0, ""),
        "limits": metrics.Limits.from_db(db)})

