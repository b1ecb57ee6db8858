"""Mutual-recognition pages: the order form with the patient's recognisable priors, an order, a patient's orders,
the repeats page (+ Excel) and the quality-assessment register.

Server-rendered and usable without JavaScript (choosing a code and pressing "show priors" reloads the form);
htmx filters the code list and swaps the priors panel in when a code is chosen. Rules live in service.py.
"""

from __future__ import annotations

import io
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from openpyxl import Workbook
from openpyxl.styles import Font
from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import User
from healthrelay.core.db import utcnow
from healthrelay.core.deps import CsrfChecked, CurrentUser, DbSession, client_address
from healthrelay.core.errors import AccessDenied, DomainError, InvalidInput, field_error
from healthrelay.core.ids import IdPath, IdQuery, is_id
from healthrelay.directory.models import AllianceMembership, Organisation, OrgKind
from healthrelay.patients import service as patients
from healthrelay.recognition import service
from healthrelay.recognition.schemas import OrderIn
from healthrelay.results.service import resolve_code, search_codes
from healthrelay.teleconsult.reports import hr_mark
from healthrelay.web.forms import messages_by_field, reraise_if_access
from healthrelay.web.i18n import translate
from healthrelay.web.templating import local_time, render, request_locale

router = APIRouter(include_in_schema=False)

FormText = Annotated[str, Form()]


ORDER_FIELDS = ("patient_id", "code", "decision", "prior_ref", "reason_code", "reason_note", "clinical_note")


# --- the order form -------------------------------------------------------------------------------

def _patient_card(db: Session, user: User, patient_id: int, address: str) -> dict[str, Any]:
    record = patients.get(db, user=user, patient_id=patient_id, client_address=address)
    return {"id": record.id, "name": record.name, "sex": record.sex, "birth_date": record.birth_date,
            "masked_id": record.resident_id if record.resident_id_masked else ""}


def _priors_context(db: Session, user: User, patient_id: int, code: str, address: str) -> dict[str, Any]:
    info = resolve_code(db, kind="", code=code) if code else None
    priors = (service.find_priors(db, user=user, patient_id=patient_id, code=info.code, client_address=address)
              if info is not None else [])
    return {"info": info, "priors": priors, "reasons": service.reorder_reasons(db),
            "validity_days": service.validity_days(db, info) if info is not None else None,
            "price": service.yuan(service.price_fen(db, info)) if info is not None else ""}


def _order_page(request: Request, db: Session, user: User, *, form: dict[str, str], q: str = "",
                invalid: dict[str, str] | None = None, error: str = "", status_code: int = 200) -> Response:
    address = client_address(request)
    invalid = invalid or {}
    patient = None
    search_rows: list[Any] = []
    ctx: dict[str, Any] = {"info": None, "priors": [], "reasons": [], "validity_days": None, "price": ""}
    if is_id(form.get("patient_id", "")):
        patient = _patient_card(db, user, int(form["patient_id"]), address)
        if form.get("code"):
            ctx = _priors_context(db, user, patient["id"], form["code"], address)
    elif q.strip():
        try:
            search_rows = patients.search(db, user=user, q=q, limit=20, client_address=address)
        except InvalidInput as exc:
            error = exc.message
    order = ("code", "decision", "prior_ref", "reason_code", "reason_note", "clinical_note")
    return render(request, "recognition/order_new.html", {
        "form": form, "q": q, "invalid": invalid, "error": error, "patient": patient, "search_rows": search_rows,
        "codes": search_codes(db, limit=500), "focus": next((f for f in order if f in invalid), "code-q"),
        **ctx}, status_code=status_code)


@router.get("/orders/new")
def order_new(request: Request, db: DbSession, user: CurrentUser, patient_id: str = "", code: str = "",
              q: str = "") -> Response:
    if patient_id and not is_id(patient_id):
        raise InvalidInput("patient_id 须为居民编号 / patient_id must be an id",
                           field_errors=[field_error("patient_id", "not a number")])
    return _order_page(request, db, user, q=q, form={"patient_id": patient_id, "code": code.strip()[:40]})


@router.get("/orders/codes")
def code_options(request: Request, db: DbSession, user: CurrentUser, q: str = "", code: str = "") -> Response:
    """The code list filtered by the search box (htmx swaps the <select>)."""
    return render(request, "recognition/_code_select.html",
                  {"codes": search_codes(db, q=q[:60], limit=500), "form": {"code": code}, "invalid": {}})


@router.get("/orders/priors")
def priors_panel(request: Request, db: DbSession, user: CurrentUser,
                 patient_id: IdQuery, code: str = "") -> Response:
    """The priors panel for the chosen code (htmx), with the two choices when there are any."""
    ctx = _priors_context(db, user, patient_id, code.strip()[:40], client_address(request))
    return render(request, "recognition/_priors.html", {
        **ctx, "form": {"patient_id": str(patient_id), "code": code}, "invalid": {}, "focus": ""})


@router.post("/orders/new", dependencies=[CsrfChecked])
def order_submit(request: Request, db: DbSession, user: CurrentUser, patient_id: FormText = "", code: FormText = "",
                 decision: FormText = "", prior_ref: FormText = "", reason_code: FormText = "",
                 reason_note: FormText = "", clinical_note: FormText = "") -> Response:
    values = (patient_id, code, decision, prior_ref, reason_code, reason_note, clinical_note)
    form = {name: value.strip() for name, value in zip(ORDER_FIELDS, values, strict=True)}
    try:
        if not is_id(form["patient_id"]):
            raise InvalidInput("请先选择患者 / choose the patient first",
                               field_errors=[field_error("patient_id", "choose the patient")])
        problems = []
        for name, limit in (("reason_note", 1000), ("clinical_note", 2000), ("code", 40)):
            if len(form[name]) > limit:
                problems.append(field_error(name, f"最多 {limit} 字 / at most {limit} characters"))
        if problems:
            raise InvalidInput("请检查标红的栏目 / please check the marked fields", field_errors=problems)
        outcome = service.place_order(db, by=user, source="web", client_address=client_address(request), data=OrderIn(
            patient_id=int(form["patient_id"]), code=form["code"], decision=form["decision"][:12],
            prior_ref=form["prior_ref"][:30], reason_code=form["reason_code"][:40], reason_note=form["reason_note"],
            clinical_note=form["clinical_note"]))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        invalid = messages_by_field(exc.field_errors)
        return _order_page(request, db, user, form=form, invalid=invalid, error=exc.message,
                           status_code=exc.status_code)
    return RedirectResponse(f"/orders/{outcome.order.id}?done=created", status_code=303)


# --- an order, a patient's orders ----------------------------------------------------------------

def _order_context(db: Session, order: Any) -> dict[str, Any]:
    decision = service.decision_of(db, order)
    prior_link = images_link = ""
    if decision is not None:
        from healthrelay.results.models import ExamResult

        if decision.prior_exam_result_id is not None:
            prior_link = f"/results/exam/{decision.prior_exam_result_id}"
            exam = db.get(ExamResult, decision.prior_exam_result_id)
            if exam is not None and exam.study_instance_uid:
                images_link = f"/imaging/studies/{exam.study_instance_uid}/viewer"
        else:
            prior_link = f"/results/lab/{decision.prior_lab_result_id}"
    names = _names(db, {order.ordering_organisation_id, order.performing_organisation_id,
                        decision.prior_organisation_id if decision else None})
    reason = db.get(service.ReorderReason, decision.reason_code) if decision and decision.reason_code else None
    return {"order": order, "decision": decision, "prior_link": prior_link, "images_link": images_link,
            "names": names, "reason": reason,
            "mark": hr_mark(decision.prior_scope) if decision else "", "yuan": service.yuan}


def _names(db: Session, ids: set[int | None]) -> dict[int, str]:
    wanted = {i for i in ids if i is not None}
    return dict(db.execute(select(Organisation.id, Organisation.name).where(Organisation.id.in_(wanted))).all()) \
        if wanted else {}


@router.get("/orders/{order_id}")
def order_detail(order_id: IdPath, request: Request, db: DbSession, user: CurrentUser) -> Response:
    order = service.get_order(db, order_id=order_id, user=user, client_address=client_address(request))
    ctx = _order_context(db, order)
    can_resolve = (ctx["decision"] is not None and ctx["decision"].outcome == service.UNREASONED
                   and user.organisation_id == order.ordering_organisation_id)
    return render(request, "recognition/order_detail.html", {
        **ctx, "done": request.query_params.get("done", ""), "can_resolve": can_resolve,
        "reasons": service.reorder_reasons(db) if can_resolve else [], "invalid": {}, "form": {}})


@router.post("/orders/{order_id}/reason", dependencies=[CsrfChecked])
def order_reason(order_id: IdPath, request: Request, db: DbSession, user: CurrentUser, reason_code: FormText = "",
                 reason_note: FormText = "") -> Response:
    """The ordering organisation says why a flagged HL7 repeat was needed."""
    try:
        service.resolve_flag(db, by=user, order_id=order_id, reason_code=reason_code.strip()[:40],
                             reason_note=reason_note.strip()[:1000], client_address=client_address(request))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        order = service.get_order(db, order_id=order_id, user=user, client_address=client_address(request))
        return render(request, "recognition/order_detail.html", {
            **_order_context(db, order), "done": "", "can_resolve": True, "reasons": service.reorder_reasons(db),
            "invalid": messages_by_field(exc.field_errors), "error": exc.message,
            "form": {"reason_code": reason_code, "reason_note": reason_note}}, status_code=exc.status_code)
    return RedirectResponse(f"/orders/{order_id}?done=reason", status_code=303)


@router.get("/patients/{patient_id}/orders")
def patient_orders(patient_id: IdPath, request: Request, db: DbSession, user: CurrentUser) -> Response:
    patient, rows = service.orders_of_patient(db, user=user, patient_id=patient_id,
                                              client_address=client_address(request))
    return render(request, "recognition/patient_orders.html", {
        "patient": patient, "rows": rows, "names": _names(db, {o.ordering_organisation_id for o, _ in rows}),
        "hr_mark": hr_mark})


# --- the repeats page -----------------------------------------------------------------------------

def _choices(db: Session, user: User) -> list[Organisation]:
    if user.role not in service.REPORT_SEE_ALL:
        return []
    members = select(AllianceMembership.organisation_id)
    return list(db.execute(select(Organisation).where(Organisation.id.in_(members),
                                                      Organisation.kind != OrgKind.HEALTH_BUREAU)
                           .order_by(Organisation.level, Organisation.name)).scalars())


def _report(db: Session, user: User, start: str | None, end: str | None,
            organisation: str | None) -> service.RepeatsReport:
    first, last = service.parse_period(start, end)
    return service.repeats_report(db, user=user, start=first, end=last, organisation_id=service.parse_org(organisation))


def _query(report: service.RepeatsReport) -> str:
    from urllib.parse import urlencode

    params = {"start": report.start.strftime("%Y-%m"), "end": report.end.strftime("%Y-%m")}
    if report.organisation_id is not None:
        params["organisation"] = str(report.organisation_id)
    return urlencode(params)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _reason_name(report: service.RepeatsReport, code: str, locale: str) -> str:
    if code == "none":
        return translate("recognition.repeats.no_reason", locale)
    r = next((r for r in report.reasons if r.code == code), None)
    return code if r is None else (r.name_zh if locale == "zh" else r.name_en)


@router.get("/recognition/repeats")
def repeats_page(request: Request, db: DbSession, user: CurrentUser, start: str | None = None,
                 end: str | None = None, organisation: str | None = None) -> Response:
    report = _report(db, user, start, end, organisation)
    locale = request_locale(request)
    reason_codes = [r.code for r in report.reasons] + ["none"]
    chart = {"months": report.months, "recognised": [m.recognised for m in report.by_month],
             "repeated": [m.repeated + m.unreasoned for m in report.by_month],
             "labels": {"recognised": translate("recognition.repeats.recognised", locale),
                        "repeated": translate("recognition.repeats.repeated_all", locale)}}
    flagged = service.flagged_orders(db, organisation_id=report.organisation_id)
    response = render(request, "recognition/repeats.html", {
        "r": report, "choices": _choices(db, user), "can_choose": user.role in service.REPORT_SEE_ALL,
        "query": _query(report), "chart": chart, "pct": _pct, "yuan": service.yuan,
        "start_value": report.start.strftime("%Y-%m"), "end_value": report.end.strftime("%Y-%m"),
        "reason_codes": [c for c in reason_codes if report.totals.repeats_by_reason.get(c)],
        "reason_name": lambda c: _reason_name(report, c, locale), "flagged": flagged})
    service.record_report_view(db, user=user, report=report, output="page", client_address=client_address(request))
    return response


@router.get("/recognition/repeats.xlsx")
def repeats_xlsx(request: Request, db: DbSession, user: CurrentUser, start: str | None = None,
                 end: str | None = None, organisation: str | None = None) -> Response:
    report = _report(db, user, start, end, organisation)
    locale = request_locale(request)
    wb = Workbook()
    ws = wb.active
    ws.title = translate("recognition.repeats.sheet", locale)[:31]
    reason_codes = [r.code for r in report.reasons] + ["none"]

    def t(key: str) -> str:
        return translate(key, locale)

    columns = ("month", "organisation", "recognised", "repeated", "unreasoned", "rate", "saved_yuan")
    header = [t(f"recognition.repeats.{c}") for c in columns]
    ws.append(header + [_reason_name(report, c, locale) for c in reason_codes])
    for cell in ws[1]:
        cell.font = Font(bold=True)
    for row in report.rows:
        ws.append([row.month, row.organisation_name, row.recognised, row.repeated, row.unreasoned,
                   round(row.recognition_rate, 4) if row.recognition_rate is not None else None,
                   row.saved_fen / 100] + [row.repeats_by_reason.get(c, 0) for c in reason_codes])
    tot = report.totals
    ws.append([t("recognition.repeats.total"), report.organisation_name, tot.recognised, tot.repeated,
               tot.unreasoned, round(tot.recognition_rate, 4) if tot.recognition_rate is not None else None,
               tot.saved_fen / 100] + [tot.repeats_by_reason.get(c, 0) for c in reason_codes])
    ws.append([])
    ws.append([t("recognition.repeats.generated_at"), local_time(report.generated_at)])
    buf = io.BytesIO()
    wb.save(buf)
    service.record_report_view(db, user=user, report=report, output="xlsx", client_address=client_address(request))
    name = f"recognition-repeats-{report.start:%Y%m}-{report.end:%Y%m}.xlsx"
    return Response(buf.getvalue(), media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


# --- the rules: quality assessments, validity windows, prices --------------------------------------

def _settings_page(request: Request, db: Session, user: User, *, invalid: dict[str, str] | None = None,
                   error: str = "", form: dict[str, str] | None = None, status_code: int = 200) -> Response:
    if user.role not in service.REPORT_READERS:
        raise AccessDenied("您的角色无权查看互认规则 / your role may not see the recognition rules")
    own = None if user.role in service.REPORT_SEE_ALL else user.organisation_id
    records = service.list_eqa(db, organisation_id=own)
    orgs = _choices(db, user) if user.role in service.REPORT_SEE_ALL else (
        [db.get(Organisation, user.organisation_id)] if user.organisation_id else [])
    return render(request, "recognition/settings.html", {
        "records": records, "names": _names(db, {r.organisation_id for r in records}), "orgs": orgs,
        "can_add_eqa": user.role in service.EQA_EDITORS, "can_edit_rules": user.role in service.RULE_EDITORS,
        "validity": service.rule_rows(db, service.RecognitionValidity),
        "prices": service.rule_rows(db, service.RecognitionPrice), "scopes": service.SCOPES,
        "hr_mark": hr_mark, "invalid": invalid or {}, "error": error, "form": form or {},
        "year": utcnow().astimezone(service.LOCAL_TZ).year, "done": request.query_params.get("done", "")},
        status_code=status_code)


@router.get("/recognition/settings")
def settings_page(request: Request, db: DbSession, user: CurrentUser) -> Response:
    return _settings_page(request, db, user)


@router.post("/recognition/settings/eqa", dependencies=[CsrfChecked])
def settings_add_eqa(request: Request, db: DbSession, user: CurrentUser, organisation_id: FormText = "",
                     target: FormText = "", value: FormText = "", scope: FormText = "", year: FormText = "",
                     passed: FormText = "", program: FormText = "") -> Response:
    """Record one quality-assessment result; `target` says whether `value` is a code, a category or a modality."""
    form = {"organisation_id": organisation_id, "target": target, "value": value, "scope": scope, "year": year,
            "passed": passed, "program": program}
    try:
        problems = []
        if not is_id(organisation_id.strip()):
            problems.append(field_error("organisation_id", "请选择机构 / choose the organisation"))
        if not (year.strip().isascii() and year.strip().isdigit()):
            problems.append(field_error("year", "年份须为数字 / the year must be a number"))
        if target not in ("code", "category", "modality"):
            problems.append(field_error("target", "请选择覆盖范围 / choose what it covers"))
        if problems:
            raise InvalidInput("请检查标红的栏目 / please check the marked fields", field_errors=problems)
        covered = {target: value.strip()[:40]}
        service.record_eqa(db, by=user, client_address=client_address(request), data=service.EqaInput(
            organisation_id=int(organisation_id), scope=scope.strip(), year=int(year), passed=passed == "yes",
            program=program.strip(), **covered))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        invalid = messages_by_field(exc.field_errors, {"code": "value", "category": "value", "modality": "value"})
        return _settings_page(request, db, user, invalid=invalid, error=exc.message, form=form,
                              status_code=exc.status_code)
    return RedirectResponse("/recognition/settings?done=eqa", status_code=303)


@router.post("/recognition/settings/rules", dependencies=[CsrfChecked])
async def settings_rules(request: Request, user: CurrentUser) -> Response:
    """Validity days and prices (yuan) of every row, as one form; all checked before any is written."""
    from starlette.concurrency import run_in_threadpool

    from healthrelay.core.db import get_sessionmaker
    from healthrelay.core.deps import verify_csrf

    await verify_csrf(request)
    form = await request.form()

    def work() -> Response:
        db = get_sessionmaker()()
        try:
            days: dict[int, int] = {}
            prices: dict[int, int] = {}
            problems = []
            for key, raw in form.items():
                name, _, rid = key.partition("_")
                if name not in ("days", "price") or not is_id(rid):
                    continue
                text = str(raw).strip()
                try:
                    if name == "days":
                        days[int(rid)] = int(text)
                    else:
                        prices[int(rid)] = round(float(text) * 100)
                except (ValueError, OverflowError):
                    problems.append(field_error(key, "须为数字 / must be a number"))
            try:
                if problems:
                    raise InvalidInput("请检查标红的栏目 / please check the marked fields", field_errors=problems)
                service.update_rules(db, by=user, validity_days=days, prices_fen=prices,
                                     client_address=client_address(request))
                db.commit()
            except DomainError as exc:
                reraise_if_access(exc)
                db.rollback()
                return _settings_page(request, db, user, invalid=messages_by_field(exc.field_errors),
                                      error=exc.message, status_code=exc.status_code)
            return RedirectResponse("/recognition/settings?done=rules", status_code=303)
        finally:
            db.close()

    return await run_in_threadpool(work)
