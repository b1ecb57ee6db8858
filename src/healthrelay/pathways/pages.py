"""Pathway pages: the live boards per centre, the case timeline with its recording forms, the metrics.

Server-rendered and readable without JavaScript (clocks show their minutes as of the page load); pathways.js
ticks the clocks from the ISO times in data attributes, and htmx refreshes boards and case pages on the live
`pathway.changed` event (hr-live) with a 30 s poll as fallback. Every rule lives in service.py.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.access import service as access
from healthrelay.accounts.models import Role, User
from healthrelay.core.db import utcnow
from healthrelay.core.deps import CsrfChecked, CurrentUser, DbSession, client_address
from healthrelay.core.errors import AccessDenied, DomainError, InvalidInput, field_error
from healthrelay.directory.models import Organisation
from healthrelay.pathways import flows as flows  # noqa: F401  (registers the care-relationship check)
from healthrelay.pathways import metrics, service
from healthrelay.pathways.models import CaseState, Centre, MetricTarget, PathwayCase, PathwayNode
from healthrelay.web.forms import LOCAL_INPUT, FormProblems, messages_by_field, parse_local, reraise_if_access
from healthrelay.web.i18n import translate
from healthrelay.web.templating import render, request_locale

router = APIRouter(include_in_schema=False)
FormText = Annotated[str, Form()]
_SHANGHAI = ZoneInfo("Asia/Shanghai")
# A running clock turns amber at this share of its target and red at the target.
AMBER_FRACTION = 2 / 3
CENTRES = tuple(Centre)


# --- clocks ----------------------------------------------------------------------------------------

@dataclass
class Clock:
    """A timer on a card: from a recorded node until another (or now), against an optional target."""

    key: str  # i18n key suffix: since_fmc, d2b, dnt, since_door, since_onset
    start: datetime | None
    stop: datetime | None = None
    target_minutes: float | None = None
    comparison: str = "le"

    def minutes(self, now: datetime) -> float | None:
        if self.start is None:
            return None
        return ((self.stop or now) - self.start).total_seconds() / 60

    def level(self, now: datetime) -> str:
        """ok / amber / red against the target; "stopped-ok"/"stopped-red" once the end is recorded."""
        minutes = self.minutes(now)
        if minutes is None:
            return "waiting"
        if self.target_minutes is None:
            return "plain"
        late = minutes > self.target_minutes if self.comparison == "le" else minutes >= self.target_minutes
        if self.stop is not None:
            return "stopped-red" if late else "stopped-ok"
        if late:
            return "red"
        return "amber" if minutes >= self.target_minutes * AMBER_FRACTION else "ok"


# (clock key, start node, stop node, metric code for the target)
BOARD_CLOCKS: dict[Centre, list[tuple[str, str, str | None, str | None]]] = {
    Centre.CHEST_PAIN: [("since_fmc", "first_medical_contact", None, None), ("d2b", "arrival", "wire_crossing", "d2b")],
    Centre.STROKE: [("since_onset", "onset", None, None), ("dnt", "arrival", "needle", "dnt")],
    Centre.TRAUMA: [("since_injury", "injury", None, None), ("since_door", "arrival", "surgery", None)],
    Centre.MATERNAL: [("since_door", "arrival", "definitive_treatment", None)],
    Centre.NEONATAL: [("since_door", "arrival", "definitive_treatment", None)],
}


def clocks_for(db: Session, case: PathwayCase, nodes: dict[str, PathwayNode],
               targets: dict[str, MetricTarget] | None = None) -> list[Clock]:
    """The card's clocks; `targets` (metric code -> target) saves a query per clock on a board."""
    out = []
    for key, start, stop, code in BOARD_CLOCKS[Centre(case.centre)]:
        target = None
        if code:
            target = targets.get(code) if targets is not None else service.metric_target(db, case.centre, code)
        started = nodes.get(start)
        stopped = nodes.get(stop) if stop else None
        out.append(Clock(key=key, start=started.at if started else None, stop=stopped.at if stopped else None,
                         target_minutes=target.target_minutes if target else None,
                         comparison=target.comparison if target else "le"))
    return out


def _clock_text(minutes: float | None) -> str:
    if minutes is None:
        return "—"
    whole = int(max(minutes, 0))
    return f"{whole // 60}:{whole % 60:02d}" if whole >= 60 else f"{whole}′"


# --- helpers ----------------------------------------------------------------------------------------

def _centre(value: str) -> Centre:
    return service.centre_of(value)


def _node_label(defs: dict[str, Any], code: str, locale: str) -> str:
    d = defs.get(code)
    if d is None:
        return code
    return d.zh if locale == "zh" else d.en


def now_local() -> str:
    return utcnow().astimezone(_SHANGHAI).strftime(LOCAL_INPUT)


def _call_url(case: PathwayCase) -> str:
    return f"/emergency/calls/{case.call_id}" if case.call_id is not None else ""


def _minutes_in(items: Any, key: str, wanted: Any) -> float | None:
    for item in items or []:
        if isinstance(item, dict) and item.get(key) == wanted and isinstance(item.get("minutes"), int | float):
            return float(item["minutes"])
    return None


def call_eta(call: Any) -> datetime | None:
    """When the ambulance should reach the hospital, from the dispatcher's recommendation (minutes to the scene
    and on to the destination) and the crew's times; None once it is there or when nothing is known."""
    if call is None or getattr(call, "at_hospital_at", None) is not None:
        return None
    rec = getattr(call, "recommendation", None) or {}
    if not isinstance(rec, dict):
        return None
    dest_id = getattr(call, "destination_organisation_id", None)
    onward = _minutes_in([rec.get("destination"), *(rec.get("alternatives") or [])], "organisation_id", dest_id)
    if onward is None:
        return None
    left = getattr(call, "left_scene_at", None)
    if left is not None:
        return left + timedelta(minutes=onward)
    amb_id = (rec.get("chosen") or {}).get("ambulance_id") if isinstance(rec.get("chosen"), dict) else None
    to_scene = _minutes_in(rec.get("ambulances"), "ambulance_id", amb_id)
    dispatched = getattr(call, "dispatched_at", None)
    if dispatched is None or to_scene is None:
        return None
    return dispatched + timedelta(minutes=to_scene + onward)


def _call_summary(call: Any) -> dict[str, Any] | None:
    """What a card says about the linked 120 call: its number, state and expected arrival when known."""
    if call is None:
        return None
    eta = call_eta(call)
    return {"number": getattr(call, "number", ""), "state": str(getattr(call, "state", "")), "eta": eta,
            "eta_minutes": max(0, round((eta - utcnow()).total_seconds() / 60)) if eta else None}


# --- the centre list and the boards ---------------------------------------------------------------------

@router.get("/pathways")
def index(request: Request, db: DbSession, user: CurrentUser) -> Response:
    """The five centres with the number of open cases concerning the user's organisation."""
    if user.role not in service.VIEWER_ROLES and user.role not in metrics.SEE_ALL:
        raise AccessDenied("急救看板仅供医务人员与调度员使用 / the boards are for clinical staff and "
                                   "dispatchers")
    q = select(PathwayCase.centre, func.count()).where(PathwayCase.state == CaseState.OPEN)
    if user.role not in (Role.ALLIANCE_ADMIN, Role.HEALTH_BUREAU):
        org = user.organisation_id
        q = q.where((PathwayCase.hospital_organisation_id == org) | (PathwayCase.opened_organisation_id == org))
    counts = {str(c): n for c, n in db.execute(q.group_by(PathwayCase.centre)).all()}
    return render(request, "pathways/index.html", {
        "centres": CENTRES, "counts": counts, "boards": user.role != Role.HEALTH_BUREAU})


def _board_context(request: Request, db: Session, user: User, centre: Centre) -> dict[str, Any]:
    rows = service.open_cases(db, centre=centre, user=user, client_address=client_address(request))
    views = service.describe(db, rows)
    now = utcnow()
    defs = {d.code: d for d in service.node_definitions(db, centre)}
    targets = {t.code: t for t in service.metric_targets(db, centre)}
    cards = []
    for case in rows:
        view = views[case.id]
        last = max(view.nodes.values(), key=lambda n: n.at, default=None)
        clocks = clocks_for(db, case, view.nodes, targets)
        levels = {c.level(now) for c in clocks}
        level = "red" if "red" in levels else "amber" if "amber" in levels else "ok"
        cards.append({"case": case, "view": view, "clocks": clocks, "last": last, "level": level,
                      "call": _call_summary(view.call), "call_url": _call_url(case)})
    return {"centre": centre, "cards": cards, "now": now, "defs": defs, "clock_text": _clock_text,
            "amber_fraction": AMBER_FRACTION, "label": lambda code: _node_label(defs, code, request_locale(request))}


@router.get("/pathways/{centre}/board")
def board(request: Request, db: DbSession, user: CurrentUser, centre: str) -> Response:
    the_centre = _centre(centre)
    return render(request, "pathways/board.html", {
        **_board_context(request, db, user, the_centre), "centres": CENTRES,
        "can_open": user.role in service.RECORDER_ROLES and user.organisation_id is not None,
        "form": {}, "invalid": {}, "error": ""})


@router.get("/pathways/{centre}/_board")
def board_fragment(request: Request, db: DbSession, user: CurrentUser, centre: str) -> Response:
    """The cards alone, for htmx on a live event or the 30 s poll."""
    return render(request, "pathways/_cards.html", _board_context(request, db, user, _centre(centre)))


@router.post("/pathways/{centre}/open", dependencies=[CsrfChecked])
def open_submit(request: Request, db: DbSession, user: CurrentUser, centre: str, patient_id: FormText = "",
                diagnosis: FormText = "", arrival_mode: FormText = "", door_at: FormText = "") -> Response:
    """A walk-in (or self-presenting) patient at the user's hospital: open the case, the door time recorded."""
    the_centre = _centre(centre)
    form = {"patient_id": patient_id.strip(), "diagnosis": diagnosis.strip(), "arrival_mode": arrival_mode.strip(),
            "door_at": door_at.strip()}
    try:
        problems = FormProblems()
        pid = problems.opt_int("patient_id", form["patient_id"])
        door = None
        if form["door_at"]:
            try:
                door = parse_local(form["door_at"], "door_at")
            except InvalidInput as exc:
                problems.errors += exc.field_errors
        problems.raise_if_any()
        case = service.open_case(
            db, centre=the_centre, patient_id=pid, by=user, source="walk_in", diagnosis=form["diagnosis"][:2000],
            hospital_organisation_id=user.organisation_id, arrival_mode=form["arrival_mode"] or "self",
            nodes={"arrival": door} if door else {}, client_address=client_address(request))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return render(request, "pathways/board.html", {
            **_board_context(request, db, user, the_centre), "centres": CENTRES, "can_open": True, "form": form,
            "invalid": messages_by_field(exc.field_errors), "error": exc.message}, status_code=exc.status_code)
    return RedirectResponse(f"/pathways/cases/{case.id}?done=open", status_code=303)


# --- the case page --------------------------------------------------------------------------------------

@dataclass
class ActionError:
    action: str
    message: str
    invalid: dict[str, str]
    values: dict[str, str]


def _timeline(db: Session, case: PathwayCase, nodes: dict[str, PathwayNode], defs: dict[str, Any],
              locale: str) -> list[dict[str, Any]]:
    """Recorded nodes by time, each with the interval from the previous node, from FMC and from the door."""
    fmc = nodes.get("first_medical_contact")
    door = nodes.get("arrival")
    rows = []
    previous: PathwayNode | None = None
    for n in sorted(nodes.values(), key=lambda x: (x.at, defs[x.node].position if x.node in defs else 0)):
        rows.append({
            "node": n, "label": _node_label(defs, n.node, locale),
            "from_previous": (n.at - previous.at).total_seconds() / 60 if previous else None,
            "from_fmc": (n.at - fmc.at).total_seconds() / 60 if fmc else None,
            "from_door": (n.at - door.at).total_seconds() / 60 if door else None})
        previous = n
    return rows


def _case_page(request: Request, db: Session, user: User, case_id: int, *, action_error: ActionError | None = None,
               status_code: int = 200) -> Response:
    address = client_address(request)
    case = service.get_case_for(db, case_id=case_id, user=user, client_address=address)
    locale = request_locale(request)
    view = service.describe(db, [case])[case.id]
    defs = {d.code: d for d in service.node_definitions(db, case.centre)}
    patient = None
    if case.patient_id is not None and access.decide(db, user=user, patient_id=case.patient_id) is not None:
        from healthrelay.patients import service as patients

        record = patients.view(db, user=user, patient=access.resolve_patient(db, case.patient_id))
        patient = {"id": record.id, "name": record.name, "sex": record.sex, "birth_date": record.birth_date}
    events = service.events_of(db, case)
    user_ids = {e.by_user_id for e in events} | {n.by_user_id for n in view.nodes.values()}
    wanted = [u for u in user_ids if u is not None]
    names = dict(db.execute(select(User.id, User.display_name).where(User.id.in_(wanted))).all()) if wanted else {}
    opened_by_org = db.get(Organisation, case.opened_organisation_id) if case.opened_organisation_id else None
    can_record = service.may_record(db, user=user, case=case) and case.state == CaseState.OPEN
    return render(request, "pathways/case.html", {
        "case": case, "view": view, "defs": defs, "patient": patient, "events": events, "names": names,
        "timeline": _timeline(db, case, view.nodes, defs, locale), "clocks": clocks_for(db, case, view.nodes),
        "clock_text": _clock_text, "now": utcnow(), "opened_by_org": opened_by_org.name if opened_by_org else "",
        "call": _call_summary(view.call), "call_url": _call_url(case), "can_record": can_record,
        "missing": [d for code, d in defs.items()
                    if code not in view.nodes and not service.superseded(code, view.nodes)], "now_local": now_local(),
        "label": lambda code: _node_label(defs, code, locale), "action_error": action_error,
        "done": request.query_params.get("done", ""), "arrival_modes": service.ARRIVAL_MODES[:-1],
        "target_text": metrics.target_text}, status_code=status_code)


@router.get("/pathways/cases/{case_id:int}")
def case_page(request: Request, db: DbSession, user: CurrentUser, case_id: int) -> Response:
    return _case_page(request, db, user, case_id)


def _act(request: Request, db: Session, user: User, case_id: int, action: str, values: dict[str, str],
         call: Any) -> Response:
    try:
        call()
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        error = ActionError(action=action, message=exc.message, invalid=messages_by_field(exc.field_errors),
                            values=values)
        return _case_page(request, db, user, case_id, action_error=error, status_code=exc.status_code)
    return RedirectResponse(f"/pathways/cases/{case_id}?done={action}", status_code=303)


@router.post("/pathways/cases/{case_id:int}/nodes", dependencies=[CsrfChecked])
def record_submit(request: Request, db: DbSession, user: CurrentUser, case_id: int, node: FormText = "",
                  at: FormText = "", note: FormText = "", reason: FormText = "", now: FormText = "") -> Response:
    """One node at the given time, or "now" (the quick buttons send now=1 with the node)."""
    values = {"node": node, "at": at, "note": note, "reason": reason}

    def call() -> None:
        if not node.strip():
            raise InvalidInput("请选择节点 / choose the node", field_errors=[field_error("node", "required")])
        when = utcnow() if now == "1" or not at.strip() else parse_local(at, "at")
        service.record_node(db, case_id=case_id, node=node.strip(), at=when, by=user, note=note[:1000],
                            reason=reason[:1000], client_address=client_address(request))

    return _act(request, db, user, case_id, "record", values, call)


@router.post("/pathways/cases/{case_id:int}/link", dependencies=[CsrfChecked])
def link_submit(request: Request, db: DbSession, user: CurrentUser, case_id: int, arrival_mode: FormText = "",
                bypass_ed: FormText = "") -> Response:
    values = {"arrival_mode": arrival_mode, "bypass_ed": bypass_ed}

    def call() -> None:
        bypass = {"yes": True, "no": False}.get(bypass_ed)
        service.link(db, case_id=case_id, arrival_mode=arrival_mode or None, bypass_ed=bypass, by=user,
                     client_address=client_address(request))

    return _act(request, db, user, case_id, "link", values, call)


@router.post("/pathways/cases/{case_id:int}/close", dependencies=[CsrfChecked])
def close_submit(request: Request, db: DbSession, user: CurrentUser, case_id: int, outcome: FormText = "") -> Response:
    return _act(request, db, user, case_id, "close", {"outcome": outcome}, lambda: service.close(
        db, case_id=case_id, by=user, outcome=outcome, client_address=client_address(request)))


@router.post("/pathways/cases/{case_id:int}/cancel", dependencies=[CsrfChecked])
def cancel_submit(request: Request, db: DbSession, user: CurrentUser, case_id: int, reason: FormText = "") -> Response:
    return _act(request, db, user, case_id, "cancel", {"reason": reason}, lambda: service.cancel(
        db, case_id=case_id, by=user, reason=reason, client_address=client_address(request)))


# --- metrics ----------------------------------------------------------------------------------------------

def _chart(report: dict[str, Any], locale: str) -> list[dict[str, Any]]:
    """One line per metric: minutes (mean) for intervals or percent for shares, with the target line."""
    out = []
    for s in report["series"]:
        t = s.target
        if t.kind == "interval":
            values = [round(m.mean, 1) if m.mean is not None else None for m in s.months]
            target = t.target_minutes
            unit = "min"
        else:
            values = [round(m.share * 100, 1) if m.share is not None else None for m in s.months]
            target = (t.required_share or 0) * 100
            unit = "%"
        out.append({"id": f"{t.centre}-{t.code}", "name": t.zh if locale == "zh" else t.en, "unit": unit,
                    "months": report["months"], "values": values, "target": target,
                    "share": [round(m.share * 100, 1) if m.share is not None else None for m in s.months]
                    if t.kind == "interval" and t.required_share is not None else None,
                    "required_share": (t.required_share or 0) * 100 if t.kind == "interval" else None})
    return out


@router.get("/pathways/metrics")
def metrics_page(request: Request, db: DbSession, user: CurrentUser, start: str = "", end: str = "",
                 centre: str = "", organisation: str = "") -> Response:
    report = metrics.report_for(db, user, start=start, end=end, centre=centre, organisation=organisation)
    locale = request_locale(request)
    hospitals = []
    if user.role in metrics.SEE_ALL:
        ids = select(PathwayCase.hospital_organisation_id).distinct()
        hospitals = db.execute(select(Organisation.id, Organisation.name).where(Organisation.id.in_(ids))
                               .order_by(Organisation.name)).all()
    response = render(request, "pathways/metrics.html", {
        **report, "chart": _chart(report, locale), "centres": CENTRES, "hospitals": hospitals,
        "target_text": metrics.target_text, "can_choose": user.role in metrics.SEE_ALL,
        "start_value": report["first"].strftime("%Y-%m"), "end_value": report["last"].strftime("%Y-%m"),
        "query": request.url.query})
    metrics.audit_view(db, user, report, "page", client_address(request))
    return response


@router.get("/pathways/metrics.xlsx")
def metrics_xlsx(request: Request, db: DbSession, user: CurrentUser, start: str = "", end: str = "",
                 centre: str = "", organisation: str = "") -> Response:
    report = metrics.report_for(db, user, start=start, end=end, centre=centre, organisation=organisation)
    body = workbook_bytes(report, request_locale(request))
    metrics.audit_view(db, user, report, "xlsx", client_address(request))
    name = f"pathway-metrics-{report['first']:%Y%m}-{report['last']:%Y%m}.xlsx"
    return Response(body, media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


def workbook_bytes(report: dict[str, Any], locale: str = "zh") -> bytes:
    """One row per metric and month (numbers as numbers, shares as fractions), and one sheet of missed cases."""
    from openpyxl import Workbook

    def t(key: str) -> str:
        return translate(key, locale)

    wb = Workbook()
    sheet = wb.active
    sheet.title = t("pathways.metrics.sheet")
    sheet.append([t("pathways.metrics.centre"), t("pathways.metrics.metric"), t("pathways.metrics.target"),
                  t("pathways.metrics.month"), t("pathways.metrics.cases"), t("pathways.metrics.median"),
                  t("pathways.metrics.mean"), t("pathways.metrics.on_target"), t("pathways.metrics.share"),
                  t("pathways.metrics.met")])
    missed = wb.create_sheet(t("pathways.metrics.missed_sheet"))
    missed.append([t("pathways.metrics.centre"), t("pathways.metrics.metric"), t("pathways.metrics.month"),
                   t("pathways.case.number"), t("pathways.metrics.minutes")])
    for s in report["series"]:
        name = s.target.zh if locale == "zh" else s.target.en
        centre = t(f"pathways.centre.{s.target.centre}")
        for m in s.months:
            sheet.append([centre, name, metrics.target_text(s.target), m.month, m.cases,
                          round(m.median, 1) if m.median is not None else None,
                          round(m.mean, 1) if m.mean is not None else None, m.on_target, m.share,
                          None if m.met is None else (t("pathways.yes") if m.met else t("pathways.no"))])
            sheet.cell(row=sheet.max_row, column=9).number_format = "0.0%"
            for c in m.missed:
                missed.append([centre, name, m.month, c.number, round(c.minutes, 1) if c.minutes is not None
                               else None])
    for ws, widths in ((sheet, [18, 34, 16, 10, 8, 10, 10, 10, 10, 8]), (missed, [18, 34, 10, 20, 10])):
        for i, w in enumerate(widths):
            ws.column_dimensions[chr(65 + i)].width = w
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()
