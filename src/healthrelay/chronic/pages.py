"""Chronic disease pages: the clinician's landing page, the village doctor's quick reading form, the device
import, a patient's chronic page, the enrolment form, a team's panel and the contract form.

Server-rendered and usable without JavaScript (the trend chart has its table beside it). The routers of the
follow-up and indicator pages are included here, so the domain's pages are one router. Rules live in service.py.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from healthrelay.access import service as access
from healthrelay.accounts.models import User
from healthrelay.chronic import followup_pages, indicator_pages, service
from healthrelay.chronic.schemas import IdPath
from healthrelay.chronic.schemas import is_id as _is_id
from healthrelay.core.db import LOCAL_TZ, local_today
from healthrelay.core.deps import CsrfChecked, CurrentUser, DbSession, client_address
from healthrelay.core.errors import DomainError, InvalidInput, field_error
from healthrelay.patients import service as patients
from healthrelay.web.forms import FormProblems, messages_by_field, parse_local, reraise_if_access
from healthrelay.web.templating import render

router = APIRouter(include_in_schema=False)
router.include_router(followup_pages.router)
router.include_router(indicator_pages.router)

FormText = Annotated[str, Form()]
FormList = Annotated[list[str], Form()]
MEDICINE_ROWS = 4


def _opt_id(value: str, name: str) -> int | None:
    if not value:
        return None
    if not _is_id(value):
        raise InvalidInput(f"{name} 须为编号 / {name} must be an id", field_errors=[field_error(name, "not an id")])
    return int(value)


def form_id(problems: FormProblems, name: str, value: str) -> int | None:
    """An optional id typed in a form; anything but an id in range is a problem on its field."""
    if not (value or "").strip():
        return None
    if not _is_id(value):
        problems.add(name, "须为编号 / must be an id")
        return None
    return int(value)


def _date(problems: FormProblems, name: str, value: str) -> date | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        problems.add(name, "日期格式应为 年-月-日 / the date must read YYYY-MM-DD")
        return None


def _float(problems: FormProblems, name: str, value: str) -> float | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        problems.add(name, "须为数字 / must be a number")
        return None
    if number != number or number in (float("inf"), float("-inf")):
        problems.add(name, "须为数字 / must be a number")
        return None
    return number


# --- landing ---------------------------------------------------------------------------------------

@router.get("/chronic")
def landing(request: Request, db: DbSession, user: CurrentUser) -> Response:
    """A clinician's teams with their counts, and the ways in: worklist, panel, readings, indicators."""
    return render(request, "chronic/registry_home.html", {"cards": service.my_teams(db, user=user),
                                                          "conditions": service.conditions(db)})


# --- the quick reading form ------------------------------------------------------------------------

def _reading_page(request: Request, db: DbSession, user: User, *, form: dict[str, str], q: str = "",
                  invalid: dict[str, str] | None = None, error: str = "", saved: list[dict[str, Any]] | None = None,
                  status_code: int = 200) -> Response:
    address = client_address(request)
    invalid = invalid or {}
    patient = None
    search_rows: list[Any] = []
    if _is_id(form.get("patient_id", "")):
        record = patients.get(db, user=user, patient_id=int(form["patient_id"]), client_address=address)
        patient = {"id": record.id, "name": record.name, "sex": record.sex, "birth_date": record.birth_date,
                   "masked_id": record.resident_id if record.resident_id_masked else ""}
    elif q.strip():
        try:
            search_rows = patients.search(db, user=user, q=q, limit=20, client_address=address)
        except InvalidInput as exc:
            error = exc.message
    order = ("measured_at", "sbp", "dbp", "pulse", "glucose", "glucose_context", "point_id")
    return render(request, "chronic/reading_new.html", {
        "form": form, "q": q, "invalid": invalid, "error": error, "patient": patient, "search_rows": search_rows,
        "points": service.points_for_user(db, user=user), "contexts": service.GLUCOSE_CONTEXTS, "saved": saved or [],
        "focus": next((f for f in order if f in invalid), "sbp")}, status_code=status_code)


def _saved_readings(db: DbSession, user: User, saved: str, address: str) -> list[dict[str, Any]]:
    """The readings just saved ("12" or "12,13": a blood pressure and a glucose), for the confirmation."""
    out = []
    for part in saved.split(",")[:2]:
        if not _is_id(part):
            continue
        reading = service.get_reading(db, user=user, reading_id=int(part), client_address=address)
        patient = access.resolve_patient(db, reading.patient_id)
        out.append({"reading": reading, "label": service.reading_label(reading),
                    "danger": service.reading_danger(db, reading), "patient_name": patient.name,
                    "patient_id": patient.id})
    return out


@router.get("/chronic/readings/new")
def reading_new(request: Request, db: DbSession, user: CurrentUser, patient_id: str = "", q: str = "",
                saved: str = "") -> Response:
    pid = _opt_id(patient_id, "patient_id")
    if pid is not None:
        pid = access.resolve_patient(db, pid).id
    point = service.default_point(db, user=user)
    form = {"patient_id": str(pid or ""), "measured_at": service.local_now_input(), "sbp": "", "dbp": "",
            "pulse": "", "glucose": "", "glucose_context": "fasting", "point_id": str(point.id) if point else ""}
    return _reading_page(request, db, user, form=form, q=q[:60],
                         saved=_saved_readings(db, user, saved[:40], client_address(request)))


@router.post("/chronic/readings/new", dependencies=[CsrfChecked])
def reading_submit(request: Request, db: DbSession, user: CurrentUser, patient_id: FormText = "",
                   measured_at: FormText = "", sbp: FormText = "", dbp: FormText = "", pulse: FormText = "",
                   glucose: FormText = "", glucose_context: FormText = "", point_id: FormText = "") -> Response:
    """Save a blood pressure and/or a glucose; back to an empty form with the saved reading confirmed."""
    form = {"patient_id": patient_id.strip(), "measured_at": measured_at.strip(), "sbp": sbp.strip(),
            "dbp": dbp.strip(), "pulse": pulse.strip(), "glucose": glucose.strip(),
            "glucose_context": glucose_context.strip(), "point_id": point_id.strip()}
    saved_ids: list[int] = []
    try:
        if not _is_id(form["patient_id"]):
            raise InvalidInput("请先选择居民 / choose the resident first",
                               field_errors=[field_error("patient_id", "choose the resident")])
        problems = FormProblems()
        values = {name: problems.opt_int(name, form[name]) for name in ("sbp", "dbp", "pulse")}
        value_glucose = _float(problems, "glucose", form["glucose"])
        point = form_id(problems, "point_id", form["point_id"])
        when = None
        try:
            when = parse_local(form["measured_at"], "measured_at")
        except InvalidInput as exc:
            problems.errors.extend(exc.field_errors)
        if values["sbp"] is None and values["dbp"] is None and value_glucose is None and not problems.errors:
            problems.add("sbp", "请填写血压或血糖 / enter a blood pressure or a glucose")
        problems.raise_if_any()
        common = {"by": user, "patient_id": int(form["patient_id"]), "measured_at": when, "point_id": point,
                  "client_address": client_address(request)}
        # Both checked before either is written: one refusal names every field and saves nothing.
        errors: list[dict[str, Any]] = []
        if values["sbp"] is not None or values["dbp"] is not None:
            errors += service.check_reading(kind="bp", measured_at=when, sbp=values["sbp"], dbp=values["dbp"],
                                            pulse=values["pulse"], glucose=None, glucose_context="")
        if value_glucose is not None:
            errors += service.check_reading(kind="glucose", measured_at=when, sbp=None, dbp=None, pulse=None,
                                            glucose=value_glucose, glucose_context=form["glucose_context"])
        if errors:
            raise InvalidInput(service.CHECK_MESSAGE, field_errors=errors)
        if values["sbp"] is not None or values["dbp"] is not None:
            saved_ids.append(service.record_reading(db, kind="bp", sbp=values["sbp"], dbp=values["dbp"],
                                                    pulse=values["pulse"], **common).id)
        if value_glucose is not None:
            saved_ids.append(service.record_reading(db, kind="glucose", glucose=value_glucose,
                                                    glucose_context=form["glucose_context"], **common).id)
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return _reading_page(request, db, user, form=form, invalid=messages_by_field(exc.field_errors),
                             error=exc.message, status_code=exc.status_code)
    return RedirectResponse("/chronic/readings/new?saved=" + ",".join(map(str, saved_ids)), status_code=303)


# --- device import ---------------------------------------------------------------------------------

def _import_page(request: Request, db: DbSession, user: User, *, form: dict[str, str], report: Any = None,
                 invalid: dict[str, str] | None = None, error: str = "", status_code: int = 200) -> Response:
    return render(request, "chronic/reading_import.html", {
        "form": form, "report": report, "invalid": invalid or {}, "error": error,
        "points": service.points_for_user(db, user=user), "headers": service.HEADERS}, status_code=status_code)


@router.get("/chronic/readings/import")
def import_page(request: Request, db: DbSession, user: CurrentUser) -> Response:
    point = service.default_point(db, user=user)
    return _import_page(request, db, user, form={"point_id": str(point.id) if point else ""})


@router.get("/chronic/readings/import/example.csv")
def import_example(user: CurrentUser) -> Response:
    return Response(service.template_csv(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="device-readings-example.csv"'})


@router.post("/chronic/readings/import", dependencies=[CsrfChecked])
async def import_submit(request: Request, db: DbSession, user: CurrentUser,
                        file: Annotated[UploadFile | str, File()] = "", point_id: FormText = "") -> Response:
    content = b""
    filename = ""
    if not isinstance(file, str):
        content = await file.read(service.IMPORT_MAX_BYTES + 1)
        filename = file.filename or ""
    # The database work runs in the thread pool (see "Async routes" in docs/architecture.md).
    return await run_in_threadpool(_import_submit, request, db, user, point_id.strip(), filename, content)


def _import_submit(request: Request, db: DbSession, user: User, point_id: str, filename: str,
                   content: bytes) -> Response:
    form = {"point_id": point_id}
    try:
        problems = FormProblems()
        if not _is_id(point_id):
            problems.add("point_id", "请选择监测点 / choose the monitoring point")
        if not content:
            problems.add("file", "请选择文件 / choose a file")
        problems.raise_if_any()
        report = service.import_device_csv(db, by=user, point_id=int(point_id), filename=filename, content=content,
                                           client_address=client_address(request))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return _import_page(request, db, user, form=form, invalid=messages_by_field(exc.field_errors),
                            error=exc.message, status_code=exc.status_code)
    return _import_page(request, db, user, form=form, report=report)


# --- a patient's chronic page ----------------------------------------------------------------------

def _chart(summary: service.PatientSummary) -> dict[str, Any]:
    bp = [r for r in reversed(summary.readings) if r.kind == "bp"]
    glucose = [r for r in reversed(summary.readings) if r.kind == "glucose"]

    def at(r: service.ChronicReading) -> str:
        return r.measured_at.astimezone(LOCAL_TZ).strftime("%Y-%m-%d %H:%M")

    return {"sbp": [[at(r), r.sbp] for r in bp], "dbp": [[at(r), r.dbp] for r in bp],
            "glucose": [[at(r), r.glucose_mmol] for r in glucose]}


@router.get("/chronic/patients/{patient_id}")
def patient_page(patient_id: IdPath, request: Request, db: DbSession, user: CurrentUser) -> Response:
    summary = service.patient_chronic_summary(db, user=user, patient_id=patient_id,
                                              client_address=client_address(request))
    return render(request, "chronic/registry_patient.html", {
        "s": summary, "chart": _chart(summary), "sources": service.SOURCES, "risk_factors": service.RISK_FACTORS,
        "complications": service.COMPLICATIONS, "close_statuses": service.CLOSE_STATUSES,
        "label": service.reading_label,
        "done": request.query_params.get("done", ""), "today": local_today()})


# --- enrolment -------------------------------------------------------------------------------------

def _enrol_page(request: Request, db: DbSession, user: User, patient_id: int, *, form: dict[str, Any],
                invalid: dict[str, str] | None = None, error: str = "", status_code: int = 200) -> Response:
    summary = service.patient_chronic_summary(db, user=user, patient_id=patient_id,
                                              client_address=client_address(request))
    order = ("condition_code", "diagnosed_on", "source", "risk_factors", "complications", "team_id")
    invalid = invalid or {}
    return render(request, "chronic/registry_enrol.html", {
        "s": summary, "form": form, "invalid": invalid, "error": error, "conditions": service.conditions(db),
        "sources": service.SOURCES, "risk_factors": service.RISK_FACTORS, "complications": service.COMPLICATIONS,
        "frequencies": service.MEDICINE_FREQUENCIES, "teams": service.family_teams_for(db, user=user),
        "focus": next((f for f in order if f in invalid), "condition_code")}, status_code=status_code)


@router.get("/chronic/patients/{patient_id}/enrol")
def enrol_form(patient_id: IdPath, request: Request, db: DbSession, user: CurrentUser,
               condition: Annotated[str, Query(max_length=20)] = "") -> Response:
    form = {"condition_code": condition, "diagnosed_on": "", "source": "clinic", "risk_factors": [],
            "complications": [], "team_id": "",
            "medicines": [{"name": "", "dose": "", "frequency": ""} for _ in range(MEDICINE_ROWS)]}
    return _enrol_page(request, db, user, patient_id, form=form)


@router.post("/chronic/patients/{patient_id}/enrol", dependencies=[CsrfChecked])
def enrol_submit(patient_id: IdPath, request: Request, db: DbSession, user: CurrentUser,
                 condition_code: FormText = "", diagnosed_on: FormText = "", source: FormText = "",
                 risk_factors: FormList = [], complications: FormList = [],  # noqa: B006 - FastAPI's form default
                 team_id: FormText = "", medicine_name: FormList = [], medicine_dose: FormList = [],  # noqa: B006
                 medicine_frequency: FormList = []) -> Response:  # noqa: B006
    rows = max(MEDICINE_ROWS, len(medicine_name))
    medicines = [{"name": (medicine_name[i] if i < len(medicine_name) else "").strip(),
                  "dose": (medicine_dose[i] if i < len(medicine_dose) else "").strip(),
                  "frequency": (medicine_frequency[i] if i < len(medicine_frequency) else "").strip()}
                 for i in range(min(rows, service.MAX_MEDICINES + 1))]
    form = {"condition_code": condition_code.strip(), "diagnosed_on": diagnosed_on.strip(), "source": source.strip(),
            "risk_factors": risk_factors, "complications": complications, "team_id": team_id.strip(),
            "medicines": medicines}
    try:
        problems = FormProblems()
        diagnosed = _date(problems, "diagnosed_on", form["diagnosed_on"])
        team = form_id(problems, "team_id", form["team_id"])
        problems.raise_if_any()
        row = service.enrol(db, by=user, patient_id=patient_id, condition_code=form["condition_code"],
                            diagnosed_on=diagnosed, source=form["source"], risk_factors=risk_factors,
                            complications=complications, medicines=medicines, team_id=team,
                            client_address=client_address(request))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return _enrol_page(request, db, user, patient_id, form=form, invalid=messages_by_field(exc.field_errors),
                           error=exc.message, status_code=exc.status_code)
    return RedirectResponse(f"/chronic/patients/{row.patient_id}?done=enrolled", status_code=303)


@router.post("/chronic/enrolments/{enrolment_id}/close", dependencies=[CsrfChecked])
def close_submit(enrolment_id: IdPath, request: Request, db: DbSession, user: CurrentUser, status: FormText = "",
                 reason: FormText = "") -> Response:
    row = service.close_enrolment(db, by=user, enrolment_id=enrolment_id, status=status.strip(), reason=reason,
                                  client_address=client_address(request))
    return RedirectResponse(f"/chronic/patients/{row.patient_id}?done=closed", status_code=303)


# --- teams and contracts ---------------------------------------------------------------------------

@router.get("/chronic/teams/{team_id}")
def team_page(team_id: IdPath, request: Request, db: DbSession, user: CurrentUser,
              q: Annotated[str, Query(max_length=60)] = "",
              page: Annotated[int, Query(ge=1, le=100_000)] = 1) -> Response:
    panel = service.team_panel(db, user=user, team_id=team_id, q=q, page=page, client_address=client_address(request))
    return render(request, "chronic/team_panel.html", {"panel": panel, "today": local_today(),
                                                       "done": request.query_params.get("done", "")})


def _contract_page(request: Request, db: DbSession, user: User, *, form: dict[str, str], q: str = "",
                   invalid: dict[str, str] | None = None, error: str = "", status_code: int = 200) -> Response:
    address = client_address(request)
    patient = None
    current = None
    search_rows: list[Any] = []
    if _is_id(form.get("patient_id", "")):
        patient, current = service.contract_candidate(db, user=user, patient_id=int(form["patient_id"]),
                                                      client_address=address)
    elif q.strip():
        try:
            search_rows = patients.search(db, user=user, q=q, limit=20, client_address=address)
        except InvalidInput as exc:
            error = exc.message
    invalid = invalid or {}
    order = ("team_id", "package_code", "starts_on", "years")
    return render(request, "chronic/contract_new.html", {
        "form": form, "q": q, "invalid": invalid, "error": error, "patient": patient, "current": current,
        "current_team": service.team_name(db, current.team_id) if current else "",
        "search_rows": search_rows, "teams": service.family_teams_for(db, user=user),
        "packages": service.packages(db), "focus": next((f for f in order if f in invalid), "team_id")},
        status_code=status_code)


@router.get("/chronic/contracts/new")
def contract_new(request: Request, db: DbSession, user: CurrentUser, patient: str = "", q: str = "",
                 team: str = "") -> Response:
    pid = _opt_id(patient, "patient")
    teams = service.family_teams_for(db, user=user)
    chosen = team if _is_id(team) else (str(teams[0].id) if len(teams) == 1 else "")
    form = {"patient_id": str(pid or ""), "team_id": chosen, "package_code": "basic",
            "starts_on": local_today().isoformat(), "years": "1"}
    return _contract_page(request, db, user, form=form, q=q[:60])


@router.post("/chronic/contracts/new", dependencies=[CsrfChecked])
def contract_submit(request: Request, db: DbSession, user: CurrentUser, patient_id: FormText = "",
                    team_id: FormText = "", package_code: FormText = "", starts_on: FormText = "",
                    years: FormText = "1") -> Response:
    form = {"patient_id": patient_id.strip(), "team_id": team_id.strip(), "package_code": package_code.strip(),
            "starts_on": starts_on.strip(), "years": years.strip()}
    try:
        if not _is_id(form["patient_id"]):
            raise InvalidInput("请先选择居民 / choose the resident first",
                               field_errors=[field_error("patient_id", "choose the resident")])
        problems = FormProblems()
        team = form_id(problems, "team_id", form["team_id"])
        if team is None and not problems.errors:
            problems.add("team_id", "请选择家庭医生团队 / choose the family-doctor team")
        start = _date(problems, "starts_on", form["starts_on"])
        n_years = problems.opt_int("years", form["years"] or "1")
        problems.raise_if_any()
        assert team is not None
        contract = service.sign_contract(db, by=user, patient_id=int(form["patient_id"]), team_id=team,
                                         package_code=form["package_code"], starts_on=start, years=n_years or 1,
                                         client_address=client_address(request))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return _contract_page(request, db, user, form=form, invalid=messages_by_field(exc.field_errors),
                              error=exc.message, status_code=exc.status_code)
    return RedirectResponse(f"/chronic/teams/{contract.team_id}?done={contract.number}", status_code=303)
