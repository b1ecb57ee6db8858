"""Report pages: the structured editor, the report panel on the request page, the report PDF, and the
critical results (危急值) with their acknowledgement form and report (included by teleconsult/pages.py).

Usable without JavaScript; the panel refreshes itself on live events (hr-live) so the requester sees a
report the moment it is signed. Rules live in reports.py and critical.py.
"""

from __future__ import annotations

import io
from dataclasses import asdict
from datetime import date, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from openpyxl import Workbook
from openpyxl.styles import Font, PatternFill
from openpyxl.utils import get_column_letter
from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from healthrelay.access import service as access
from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.core.deps import CsrfChecked, CurrentUser, DbSession, client_address
from healthrelay.core.errors import DomainError, InvalidInput, field_error
from healthrelay.directory.models import AllianceMembership, Organisation, OrgKind
from healthrelay.patients import service as patients
from healthrelay.teleconsult import critical, report_pdf, reports
from healthrelay.teleconsult import service as consult_service
from healthrelay.teleconsult.models import ConsultRequest, ReportState
from healthrelay.web.forms import messages_by_field
from healthrelay.web.i18n import translate
from healthrelay.web.templating import LOCAL_TZ, local_time, render, request_locale, templates

router = APIRouter(include_in_schema=False)

FormText = Annotated[str, Form()]
SCOPE_CHOICES = reports.SCOPES
ACK_FIELDS = ("call_number", "call_at", "call_spoken_to", "call_read_back", "action_taken")




def _reraise_unless_input(exc: DomainError) -> None:
    """Refusals of access and state show the error page; only bad input goes back into the form."""
    if not isinstance(exc, InvalidInput):
        raise exc


# ---------------------------------------------------------------------------- the panel on the request page

def report_panel_view(consult: Any, user: Any) -> reports.ReportView | None:
    """For H4's request page, which includes the panel with the request and the user only."""
    if not isinstance(consult, ConsultRequest) or not isinstance(user, User):
        return None
    db = object_session(consult)
    if db is None:
        return None
    return reports.view_for(db, request=consult, user=user)


def now_local() -> str:
    """The default of the call-time field: now, as a datetime-local input wants it."""
    return datetime.now(LOCAL_TZ).strftime("%Y-%m-%dT%H:%M")


templates.env.globals["teleconsult_report_view"] = report_panel_view
templates.env.globals["teleconsult_now_local"] = now_local


def _panel_context(rv: reports.ReportView, **extra: Any) -> dict[str, Any]:
    return {"rv": rv, "scopes": SCOPE_CHOICES, "ack_invalid": {}, "ack_values": {}, "addendum_invalid": {},
            "addendum_text": "", **extra}


@router.get("/teleconsult/{request_id:int}/report/panel")
def panel(request: Request, db: DbSession, user: CurrentUser, request_id: int) -> Response:
    """The panel alone, fetched by htmx when a live event says the report or its critical result moved."""
    consult = consult_service.get_request_for(db, request_id=request_id, user=user,
                                              client_address=client_address(request))
    rv = reports.view_for(db, request=consult, user=user)
    return render(request, "teleconsult/_report_panel.html", _panel_context(rv))


# ---------------------------------------------------------------------------- the editor

def _patient(db: Session, user: User, consult: ConsultRequest) -> dict[str, Any] | None:
    """Who the report is about, as the record shows it; the resident ID stays masked here."""
    if consult.patient_id is None or access.decide(db, user=user, patient_id=consult.patient_id) is None:
        return None
    record = patients.view(db, user=user, patient=access.resolve_patient(db, consult.patient_id))
    from healthrelay.patients.identity import mask_resident_id

    return {"name": record.name, "sex": record.sex, "birth_date": record.birth_date,
            "masked_id": mask_resident_id(record.resident_id) if record.resident_id else ""}


def _editor(request: Request, db: Session, user: User, consult: ConsultRequest, *,
            values: reports.ReportInput | None = None, invalid: dict[str, str] | None = None,
            message: str = "", status_code: int = 200, **extra: Any) -> Response:
    rv = reports.view_for(db, request=consult, user=user)
    report = rv.report
    if values is None:
        values = reports.ReportInput(**{k: getattr(report, k) for k in asdict(reports.ReportInput())}) \
            if report is not None else reports.ReportInput()
    return render(request, "teleconsult/report_edit.html", _panel_context(
        rv, consult=consult, values=values, invalid=invalid or {}, message=message,
        patient=_patient(db, user, consult), studies=consult_service.studies_of(db, consult),
        inviting_name=consult_service.organisation_name(db, consult.inviting_organisation_id),
        signer_is_trainee=consult_service.is_trainee(db, user=user),
        done=request.query_params.get("done", ""), **extra), status_code=status_code)


@router.get("/teleconsult/{request_id:int}/report")
def edit(request: Request, db: DbSession, user: CurrentUser, request_id: int) -> Response:
    """The claim holder writes here; once signed the page shows the report, its co-signature and addenda."""
    consult = consult_service.get_request_for(db, request_id=request_id, user=user,
                                              client_address=client_address(request))
    report = reports.report_of(db, consult.id)
    if report is None or report.state == ReportState.DRAFT:
        if not reports.is_centre_side(db, user=user, request=consult):
            return RedirectResponse(f"/teleconsult/{consult.id}", status_code=303)
        consult_service.require_claim_holder(db, user=user, request=consult)
    return _editor(request, db, user, consult)


@router.post("/teleconsult/{request_id:int}/report", dependencies=[CsrfChecked])
def save(request: Request, db: DbSession, user: CurrentUser, request_id: int, technique: FormText = "",
         findings: FormText = "", impression: FormText = "", recommendation: FormText = "",
         critical_flag: Annotated[str, Form(alias="critical")] = "", critical_finding: FormText = "",
         recognition_scope: FormText = "", action: FormText = "save") -> Response:
    """Save the draft (Ctrl+Enter) or sign it; bad input comes back into the form with the messages."""
    address = client_address(request)
    data = reports.ReportInput(technique=technique, findings=findings, impression=impression,
                               recommendation=recommendation, critical=critical_flag in ("1", "on", "true"),
                               critical_finding=critical_finding, recognition_scope=recognition_scope)
    try:
        if action == "sign":
            reports.sign(db, request_id=request_id, by=user, data=data, client_address=address)
        else:
            reports.save_draft(db, request_id=request_id, by=user, data=data, client_address=address)
    except DomainError as exc:
        _reraise_unless_input(exc)
        db.rollback()
        consult = consult_service.get_request_for(db, request_id=request_id, user=user, client_address=address)
        return _editor(request, db, user, consult, values=data, invalid=messages_by_field(exc.field_errors),
                       message=exc.message, status_code=exc.status_code)
    if action == "sign":
        return RedirectResponse(f"/teleconsult/{request_id}?report=signed#report-panel", status_code=303)
    return RedirectResponse(f"/teleconsult/{request_id}/report?done=saved", status_code=303)


@router.post("/teleconsult/{request_id:int}/report/cosign", dependencies=[CsrfChecked])
def cosign(request: Request, db: DbSession, user: CurrentUser, request_id: int) -> Response:
    reports.cosign(db, request_id=request_id, by=user, client_address=client_address(request))
    return RedirectResponse(f"/teleconsult/{request_id}?report=cosigned#report-panel", status_code=303)


@router.post("/teleconsult/{request_id:int}/report/addenda", dependencies=[CsrfChecked])
def add_addendum(request: Request, db: DbSession, user: CurrentUser, request_id: int,
                 text: FormText = "") -> Response:
    address = client_address(request)
    try:
        reports.add_addendum(db, request_id=request_id, by=user, text=text, client_address=address)
    except DomainError as exc:
        _reraise_unless_input(exc)
        db.rollback()
        consult = consult_service.get_request_for(db, request_id=request_id, user=user, client_address=address)
        invalid = messages_by_field(exc.field_errors) or {"text": exc.message}
        return _editor(request, db, user, consult, addendum_invalid=invalid,
                       addendum_text=text, status_code=exc.status_code)
    return RedirectResponse(f"/teleconsult/{request_id}?report=addendum#report-panel", status_code=303)


# ---------------------------------------------------------------------------- the PDF

@router.get("/teleconsult/{request_id:int}/report.pdf")
def report_pdf_route(request: Request, db: DbSession, user: CurrentUser, request_id: int) -> Response:
    """The printable report; printing is a disclosure of its own, so it is audited as one."""
    address = client_address(request)
    rv = reports.require_report(db, request_id=request_id, user=user, client_address=address)
    body = report_pdf.render_pdf(db, view=rv, user=user)
    audit.record(db, actor=access.actor_of(user, address), action="teleconsult.report.print",
                 patient_id=rv.request.patient_id, resource=reports.resource_of(rv.request),
                 detail={"report_id": rv.report.id if rv.report else None,
                         "sha256": rv.report.content_sha256 if rv.report else ""})
    return Response(body, media_type="application/pdf", headers={
        "Content-Disposition": f'inline; filename="{rv.request.number}.pdf"', "Cache-Control": "no-store"})


# ---------------------------------------------------------------------------- critical results

def _parse_date(name: str, value: str | None, problems: list[dict[str, Any]]) -> date | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        problems.append(field_error(name, "日期格式应为 YYYY-MM-DD / use YYYY-MM-DD"))
        return None


def _filters(start: str | None, end: str | None, organisation: str | None) -> tuple[date, date, int | None]:
    problems: list[dict[str, Any]] = []
    first, last = critical.default_period()
    first = _parse_date("start", start, problems) or first
    last = _parse_date("end", end, problems) or last
    org_id = None
    if organisation and organisation.strip():
        try:
            org_id = int(organisation)
        except ValueError:
            problems.append(field_error("organisation", "须为数字 / must be a number"))
    if problems:
        raise InvalidInput("筛选条件有误 / the filters have errors", field_errors=problems)
    return first, last, org_id


def _org_choices(db: Session, user: User) -> list[Organisation]:
    """Everyone overseeing sees every member; staff see the members of their own alliances."""
    members = select(AllianceMembership.organisation_id)
    if user.role not in (Role.ALLIANCE_ADMIN, Role.HEALTH_BUREAU):
        mine = select(AllianceMembership.alliance_id).where(AllianceMembership.organisation_id == user.organisation_id)
        members = members.where(AllianceMembership.alliance_id.in_(mine))
    return list(db.execute(select(Organisation).where(Organisation.id.in_(members),
                                                      Organisation.kind != OrgKind.HEALTH_BUREAU)
                           .order_by(Organisation.level, Organisation.name)).scalars())


def _minutes(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


@router.get("/teleconsult/critical")
def critical_list(request: Request, db: DbSession, user: CurrentUser, start: str | None = None,
                  end: str | None = None, organisation: str | None = None) -> Response:
    """Critical results and their times: open ones first, overdue in red, median and 90th percentile."""
    first, last, org_id = _filters(start, end, organisation)
    rows, summary = critical.report(db, user=user, start=first, end=last, organisation_id=org_id)
    query = urlencode({k: v for k, v in (("start", first.isoformat()), ("end", last.isoformat()),
                                          ("organisation", str(org_id) if org_id else "")) if v})
    response = render(request, "teleconsult/critical_list.html", {
        "rows": rows, "summary": summary, "start": first.isoformat(), "end": last.isoformat(),
        "organisation_id": org_id, "choices": _org_choices(db, user), "query": query, "minutes": _minutes})
    critical.audit_view(db, user=user, output="page", count=len(rows), client_address=client_address(request))
    return response


@router.get("/teleconsult/critical.xlsx")
def critical_xlsx(request: Request, db: DbSession, user: CurrentUser, start: str | None = None,
                  end: str | None = None, organisation: str | None = None) -> Response:
    first, last, org_id = _filters(start, end, organisation)
    rows, summary = critical.report(db, user=user, start=first, end=last, organisation_id=org_id, limit=5000)
    body = workbook_bytes(rows, summary, locale=request_locale(request), start=first, end=last)
    critical.audit_view(db, user=user, output="xlsx", count=len(rows), client_address=client_address(request))
    name = f"critical-results-{first:%Y%m%d}-{last:%Y%m%d}.xlsx"
    return Response(body, media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


def workbook_bytes(rows: list[critical.Row], summary: critical.Summary, *, locale: str, start: date,
                   end: date) -> bytes:
    """Two sheets: every result with its times, and the period's summary."""

    def t(key: str) -> str:
        return translate(key, locale)

    book = Workbook()
    sheet = book.active
    sheet.title = t("teleconsult.critical.sheet")[:31]
    heads = ["number", "inviting", "centre", "finding", "flagged_at", "first_notified_at", "ack_due_at",
             "acknowledged_at", "minutes_to_ack", "level", "state", "overdue", "call_number", "call_spoken_to",
             "call_read_back", "action_taken"]
    sheet.append([t(f"teleconsult.critical.col.{h}") for h in heads])
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    red = PatternFill("solid", fgColor="FECACA")
    for row in rows:
        r = row.result
        sheet.append([
            row.number, row.inviting, row.centre, r.finding, local_time(r.flagged_at),
            local_time(row.first_notified_at), local_time(r.ack_due_at), local_time(r.acknowledged_at),
            round(row.minutes_to_ack, 1) if row.minutes_to_ack is not None else None, r.level,
            t(f"teleconsult.critical.state.{r.state}"), t("teleconsult.critical.yes") if row.overdue else "",
            r.call_number, r.call_spoken_to,
            (t("teleconsult.critical.yes") if r.call_read_back else t("teleconsult.critical.no"))
            if r.acknowledged_at else "", r.action_taken])
        if row.overdue:
            for cell in sheet[sheet.max_row]:
                cell.fill = red
    widths = [18, 18, 18, 40, 17, 17, 17, 17, 10, 6, 10, 8, 16, 16, 8, 40]
    for i, width in enumerate(widths, start=1):
        sheet.column_dimensions[get_column_letter(i)].width = width
    sheet.freeze_panes = "A2"
    totals = book.create_sheet(t("teleconsult.critical.summary")[:31])
    for key, value in (("period", f"{start.isoformat()} — {end.isoformat()}"), ("total", summary.total),
                       ("open", summary.open), ("overdue", summary.overdue), ("acknowledged", summary.acknowledged),
                       ("median", None if summary.median_minutes is None else round(summary.median_minutes, 1)),
                       ("p90", None if summary.p90_minutes is None else round(summary.p90_minutes, 1)),
                       ("max_level", summary.max_level)):
        totals.append([t(f"teleconsult.critical.sum.{key}"), value])
    totals.column_dimensions["A"].width = 28
    totals.column_dimensions["B"].width = 26
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _critical_page(request: Request, db: Session, user: User, critical_id: int, *,
                   ack_invalid: dict[str, str] | None = None, ack_values: dict[str, Any] | None = None,
                   message: str = "", status_code: int = 200) -> Response:
    result, consult = critical.view(db, critical_id=critical_id, user=user, client_address=client_address(request))
    events = critical.events_of(db, result)
    ids = {e.by_user_id for e in events} | {int(e.detail.get("user_id", 0) or 0) for e in events} | {
        u for e in events for u in e.detail.get("user_ids", [])} | {
        result.flagged_by_user_id, result.acknowledged_by_user_id, result.notify_user_id}
    wanted = [i for i in ids if i]
    names = dict(db.execute(select(User.id, User.display_name).where(User.id.in_(wanted))).all()) if wanted else {}
    # A lab value (危急值 from the laboratory) has no request: no report panel, the subject's organisations.
    rv = reports.view_for(db, request=consult, user=user) if consult is not None else None
    subject = critical.subject_of(db, result)
    inviting_name, centre_name = critical.subject_names(db, subject) if subject is not None else ("", "")
    return render(request, "teleconsult/critical_detail.html", _panel_context(
        rv, result=result, consult=consult, events=events, names=names, message=message,
        ack_invalid=ack_invalid or {}, ack_values=ack_values or {}, overdue=critical.is_overdue(result),
        minutes_to_ack=critical.minutes_to_ack(result), can_acknowledge=critical.can_acknowledge(
            db, user=user, result=result),
        inviting_name=inviting_name, centre_name=centre_name,
        done=request.query_params.get("done", "")), status_code=status_code)


@router.get("/teleconsult/critical/{critical_id:int}")
def critical_detail(request: Request, db: DbSession, user: CurrentUser, critical_id: int) -> Response:
    """Where the urgent message leads: the finding, every step of the loop, and the acknowledgement form."""
    return _critical_page(request, db, user, critical_id)


def _parse_call_at(value: str) -> datetime | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput("通话时间格式有误 / the call time is not a date and time",
                           field_errors=[field_error("call_at", "YYYY-MM-DDTHH:MM")]) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=LOCAL_TZ)


def _safe_next(value: str) -> str:
    value = (value or "").strip()
    return value if value.startswith("/teleconsult/") and "//" not in value and len(value) < 200 else ""


@router.post("/teleconsult/critical/{critical_id:int}/acknowledge", dependencies=[CsrfChecked])
def acknowledge(request: Request, db: DbSession, user: CurrentUser, critical_id: int, call_number: FormText = "",
                call_at: FormText = "", call_spoken_to: FormText = "", call_read_back: FormText = "",
                action_taken: FormText = "", next: FormText = "") -> Response:
    """Record the read-back call; a missing field comes back with its message, nothing is half-saved."""
    values = {"call_number": call_number, "call_at": call_at, "call_spoken_to": call_spoken_to,
              "call_read_back": call_read_back, "action_taken": action_taken}
    try:
        data = critical.AckInput(call_at=_parse_call_at(call_at), call_number=call_number,
                                 call_spoken_to=call_spoken_to,
                                 call_read_back={"yes": True, "no": False}.get(call_read_back),
                                 action_taken=action_taken)
        result = critical.acknowledge(db, critical_id=critical_id, by=user, data=data,
                                      client_address=client_address(request))
    except DomainError as exc:
        _reraise_unless_input(exc)
        db.rollback()
        return _critical_page(request, db, user, critical_id, ack_invalid=messages_by_field(exc.field_errors),
                              ack_values=values, message=exc.message, status_code=exc.status_code)
    target = _safe_next(next) or f"/teleconsult/critical/{result.id}?done=acknowledged"
    return RedirectResponse(target, status_code=303)
