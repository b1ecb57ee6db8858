"""Results pages: the patient-wide results view, the lab's entry form, and one result's detail.

Server-rendered and usable without JavaScript: the trend charts (ECharts) sit above tables that say the same;
the results view refreshes on a live `results.changed` event for its patient (hr-live) with a slow poll as
fallback. Every rule lives in service.py; routes parse, call it and render, errors next to the fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from healthrelay.access import service as access
from healthrelay.accounts.models import User
from healthrelay.core.db import utcnow
from healthrelay.core.deps import CsrfChecked, CurrentUser, DbSession, client_address
from healthrelay.core.errors import AccessDenied, DomainError, InvalidInput, field_error
from healthrelay.patients import service as patients
from healthrelay.results import service
from healthrelay.results.models import EXAM, LAB, LabResult, ResultCode
from healthrelay.results.schemas import LabResultIn
from healthrelay.teleconsult.reports import hr_mark
from healthrelay.web.forms import FormProblems, messages_by_field, parse_local, reraise_if_access
from healthrelay.web.templating import render

router = APIRouter(include_in_schema=False)

FormText = Annotated[str, Form()]
FormList = Annotated[list[str], Form()]
ENTRY_ROWS = 6
SPECIMENS = ("血清", "血浆", "全血", "动脉血", "尿液", "粪便", "脑脊液")
FLAG_CLASS = {"H": "flag-high", "HH": "flag-critical", "L": "flag-low", "LL": "flag-critical", "A": "flag-high",
              "AA": "flag-critical"}


# --- the patient-wide results view ----------------------------------------------------------------

def _parse_filters(kind: str, organisation: str, date_from: str, date_to: str) -> service.ResultFilters:
    problems = FormProblems()
    if kind not in ("", LAB, EXAM):
        problems.add("kind", "未知的结果类别 / unknown kind")
    org = problems.opt_int("organisation", organisation)
    days: dict[str, date | None] = {}
    for name, value in (("from", date_from), ("to", date_to)):
        try:
            days[name] = date.fromisoformat(value.strip()) if value.strip() else None
        except ValueError:
            problems.add(name, "日期格式应为 年-月-日 / the date must read YYYY-MM-DD")
            days[name] = None
    problems.raise_if_any()
    return service.ResultFilters(kind=kind if kind in (LAB, EXAM) else "", organisation_id=org,
                                 date_from=days["from"], date_to=days["to"])


@dataclass
class LabGroup:
    code: str
    name: str
    unit: str
    reference_range: str
    rows: list[LabResult]
    abnormal: int


def _groups(labs: list[LabResult], codes: dict[str, ResultCode]) -> list[LabGroup]:
    """Lab results by test, the test with the newest result first, each test's results newest first."""
    grouped: dict[str, list[LabResult]] = {}
    for row in labs:  # already newest first
        grouped.setdefault(row.test_code, []).append(row)
    out = []
    for test, rows in grouped.items():
        code = codes.get(test)
        out.append(LabGroup(code=test, name=code.name_zh if code is not None else rows[0].test_name,
                            unit=rows[0].unit, reference_range=rows[0].reference_range, rows=rows,
                            abnormal=sum(1 for r in rows if r.abnormal_flag not in ("", "N"))))
    return out


@router.get("/patients/{patient_id}/results")
def results_view(request: Request, db: DbSession, user: CurrentUser, patient_id: int, kind: str = "",
                 organisation: str = "", date_from: Annotated[str, Query(alias="from")] = "",
                 date_to: Annotated[str, Query(alias="to")] = "") -> Response:
    survivor = access.resolve_patient(db, patient_id)
    if survivor.id != patient_id:
        return RedirectResponse(f"/patients/{survivor.id}/results", status_code=303)
    filters = _parse_filters(kind, organisation, date_from, date_to)
    found = service.patient_results(db, user=user, patient_id=patient_id, filters=filters,
                                    client_address=client_address(request))
    record = patients.view(db, user=user, patient=found.patient)
    codes = {c.code: c for c in service.codes_of(db)}
    trends = service.trends(found.labs, codes)
    chart = [{"code": t.code, "name": t.name, "unit": t.unit, "low": t.low, "high": t.high,
              "points": [[at, value] for at, value, _ in t.points]} for t in trends]
    query = urlencode({"kind": filters.kind, "organisation": filters.organisation_id or "",
                       "from": filters.date_from.isoformat() if filters.date_from else "",
                       "to": filters.date_to.isoformat() if filters.date_to else ""})
    return render(request, "results/patient_results.html", {
        "patient": record, "groups": _groups(found.labs, codes), "exams": found.exams,
        "links": {e.id: service.exam_links(db, e) for e in found.exams}, "names": found.organisations,
        "filter_organisations": service.organisations_of_patient(db, found.patient.id), "filters": filters,
        "chart": chart, "trend_codes": {t.code for t in trends}, "flag_class": FLAG_CLASS, "hr_mark": hr_mark,
        "query": query, "may_enter": _may_enter(user), "done": request.query_params.get("done", "")})


# --- the lab's entry form -------------------------------------------------------------------------

def _may_enter(user: User) -> bool:
    return user.role in service.ENTER_ROLES and user.organisation_id is not None


def _require_enterer(user: User) -> None:
    if not _may_enter(user):
        raise AccessDenied("只有机构的医师或管理员可以录入检验结果 / only clinicians and admins of an organisation "
                           "enter lab results", code="not_performing_staff")


def _entry_page(request: Request, db: Session, user: User, *, form: dict[str, Any], q: str = "",
                invalid: dict[str, str] | None = None, error: str = "", status_code: int = 200) -> Response:
    address = client_address(request)
    patient = None
    search_rows: list[Any] = []
    if str(form.get("patient_id", "")).isdigit():
        access.require_patient_access(db, user=user, patient_id=int(form["patient_id"]), action="results.enter_form",
                                      client_address=address)
        record = patients.view(db, user=user, patient=access.resolve_patient(db, int(form["patient_id"])))
        patient = {"id": record.id, "name": record.name, "sex": record.sex, "birth_date": record.birth_date,
                   "masked_id": record.resident_id, "area_name": record.area_name}
    elif q.strip():
        try:
            search_rows = patients.search(db, user=user, q=q, limit=20, client_address=address)
        except InvalidInput as exc:
            error = exc.message
    invalid = invalid or {}
    codes = service.codes_of(db, LAB)
    order = ["reported_at", "collected_at", "specimen", "filler_number"]
    order += [f"rows.{i}.{name}" for i in range(ENTRY_ROWS) for name in ("test_code", "value", "unit")]
    return render(request, "results/lab_new.html", {
        "form": form, "q": q, "invalid": invalid, "error": error, "patient": patient, "search_rows": search_rows,
        "codes": codes, "initials": {c.code: service.pinyin_initials(c.name_zh) for c in codes},
        "specimens": SPECIMENS, "organisation_name": service.organisation_names(
            db, {user.organisation_id}).get(user.organisation_id or 0, ""),
        "focus": next((f for f in order if f in invalid), "rows.0.test_code" if patient else "patient-q"),
        "row_count": ENTRY_ROWS}, status_code=status_code)


@router.get("/results/lab/new")
def lab_new(request: Request, db: DbSession, user: CurrentUser, patient_id: str = "", q: str = "") -> Response:
    _require_enterer(user)
    if patient_id and not patient_id.isdigit():
        raise InvalidInput("patient_id 须为数字 / patient_id must be a number",
                           field_errors=[field_error("patient_id", "not a number")])
    if patient_id:
        patient_id = str(access.resolve_patient(db, int(patient_id)).id)
    now = utcnow().astimezone(service.LOCAL_TZ).strftime("%Y-%m-%dT%H:%M")
    empty = [{"test_code": "", "value": "", "unit": ""} for _ in range(ENTRY_ROWS)]
    return _entry_page(request, db, user, q=q, form={"patient_id": patient_id, "reported_at": now,
                                                      "collected_at": "", "specimen": "", "filler_number": "",
                                                      "rows": empty})


@router.post("/results/lab/new", dependencies=[CsrfChecked])
def lab_new_submit(request: Request, db: DbSession, user: CurrentUser, patient_id: FormText = "",
                   reported_at: FormText = "", collected_at: FormText = "", specimen: FormText = "",
                   filler_number: FormText = "", test_code: FormList = [], value: FormList = [],  # noqa: B006
                   unit: FormList = []) -> Response:  # noqa: B006
    _require_enterer(user)
    rows = [{"test_code": (test_code[i] if i < len(test_code) else "").strip(),
             "value": (value[i] if i < len(value) else "").strip(),
             "unit": (unit[i] if i < len(unit) else "").strip()} for i in range(ENTRY_ROWS)]
    form = {"patient_id": patient_id.strip(), "reported_at": reported_at.strip(), "collected_at": collected_at.strip(),
            "specimen": specimen.strip(), "filler_number": filler_number.strip(), "rows": rows}
    try:
        saved = _enter(db, user, form)
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()  # nothing half-written: every row of the form, or none
        return _entry_page(request, db, user, form=form, invalid=messages_by_field(exc.field_errors),
                           error=exc.message, status_code=exc.status_code)
    return RedirectResponse(f"/patients/{saved[0].patient_id}/results?kind=lab&done=entered", status_code=303)


def _enter(db: Session, user: User, form: dict[str, Any]) -> list[LabResult]:
    """Record every filled row; all problems (of the shared fields and of each row) are collected first."""
    problems = FormProblems()
    patient_id = problems.opt_int("patient_id", form["patient_id"])
    if patient_id is None and not problems.errors:
        problems.add("patient_id", "请先选择患者 / choose the patient first")
    reported = collected = None
    if not form["reported_at"]:
        problems.add("reported_at", "请填写报告时间 / the reported time is required")
    else:
        try:
            reported = parse_local(form["reported_at"], "reported_at")
        except InvalidInput as exc:
            problems.errors += exc.field_errors
    if form["collected_at"]:
        try:
            collected = parse_local(form["collected_at"], "collected_at")
        except InvalidInput as exc:
            problems.errors += exc.field_errors
    filled = [(i, r) for i, r in enumerate(form["rows"]) if r["test_code"] or r["value"]]
    if not filled:
        problems.add("rows.0.test_code", "请至少填写一项检验结果 / enter at least one result")
    problems.raise_if_any()
    for _, r in filled:
        picked = service.code_for_text(db, kind=LAB, text=r["test_code"])
        if picked is not None:
            r["test_code"] = picked.code  # what the typed text was taken as ("ptt" -> GLU); the form shows it
    codes = [r["test_code"].upper() for _, r in filled if r["test_code"]]
    for i, r in filled:
        if r["test_code"] and codes.count(r["test_code"].upper()) > 1:
            problems.add(f"rows.{i}.test_code", "同一项目只能填写一次 / each test once")
    problems.raise_if_any()
    assert patient_id is not None and reported is not None and user.organisation_id is not None
    saved = []
    for i, r in filled:
        data = LabResultIn(patient_id=patient_id, organisation_id=user.organisation_id, test_code=r["test_code"],
                           value=r["value"], unit=r["unit"], specimen=form["specimen"][:60], collected_at=collected,
                           reported_at=reported, filler_number=form["filler_number"][:40])
        try:
            saved.append(service.record_lab_result(db, data=data, source="entered", by=user))
        except InvalidInput as exc:
            for e in exc.field_errors:
                name = e["field"]
                target = f"rows.{i}.{name}" if name in ("test_code", "value", "unit") else name
                if target not in {p["field"] for p in problems.errors}:
                    problems.errors.append({**e, "field": target})
    problems.raise_if_any()
    return saved


# --- one result -----------------------------------------------------------------------------------

@router.get("/results/lab/{result_id:int}")
def lab_detail(request: Request, db: DbSession, user: CurrentUser, result_id: int) -> Response:
    row = service.lab_result_for(db, user=user, result_id=result_id, client_address=client_address(request))
    record = patients.view(db, user=user, patient=access.resolve_patient(db, row.patient_id))
    names = service.organisation_names(db, {row.organisation_id, row.ordering_organisation_id})
    code = db.get(ResultCode, row.test_code)
    return render(request, "results/lab_detail.html", {
        "row": row, "patient": record, "names": names, "code": code, "mark": hr_mark(row.recognition_scope),
        "flag_class": FLAG_CLASS})


@router.get("/results/exam/{result_id:int}")
def exam_detail(request: Request, db: DbSession, user: CurrentUser, result_id: int) -> Response:
    row = service.exam_result_for(db, user=user, result_id=result_id, client_address=client_address(request))
    record = patients.view(db, user=user, patient=access.resolve_patient(db, row.patient_id))
    names = service.organisation_names(db, {row.organisation_id, row.ordering_organisation_id})
    return render(request, "results/exam_detail.html", {
        "row": row, "patient": record, "names": names, "mark": hr_mark(row.recognition_scope),
        "links": service.exam_links(db, row)})
