"""Pages for what happened at a session, new techniques and traineeships.

`/outreach/sessions/{id}/activity`: the record form — the session's booked residents each with a checkbox,
an outcome and a diagnosis; rows for walk-ins by patient id; procedure rows; the host's practitioners as
trainee checkboxes; attendees and a summary. A refused form comes back with each problem next to its field
(the service names rows as `patients[1].outcome`; this module maps them back to the form's inputs).
Rules live in activity.py; routes parse, call, render.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from healthrelay.accounts.models import Role, User
from healthrelay.core.db import local_today
from healthrelay.core.deps import CsrfChecked, CurrentUser, DbSession, client_address
from healthrelay.core.errors import AccessDenied, DomainError
from healthrelay.core.ids import IdPath, is_id
from healthrelay.directory.models import Organisation, Practitioner
from healthrelay.outreach import activity, booking, impact, service
from healthrelay.outreach.models import PATIENT_OUTCOMES, PROCEDURE_ROLES, TRAINEESHIP_KINDS
from healthrelay.web.forms import FormProblems, messages_by_field, reraise_if_access
from healthrelay.web.templating import render

router = APIRouter(include_in_schema=False)

FormText = Annotated[str, Form()]
WALKIN_ROWS = 3
PROCEDURE_ROWS = 2
MAX_FORM_ROWS = 200


def _staff_only(user: User) -> None:
    if user.role in (Role.PATIENT,):
        raise AccessDenied("此页面仅供医务人员使用 / this page is for staff")


# ---------------------------------------------------------------------------- the activity form

def _initial_form(db: Session, user: User, session_id: int, client: str) -> dict[str, Any]:
    """The form's values from the record so far (a correction starts from what was recorded)."""
    view = activity.view_activity(db, by=user, session_id=session_id, client_address=client)
    values: dict[str, Any] = {"attendees": "0", "summary": "", "trainee_ids": [], "walkins": [], "procs": []}
    if view.activity is None:
        return values
    values["attendees"] = str(view.activity.attendees)
    values["summary"] = view.activity.summary
    values["trainee_ids"] = [str(pid) for pid, _ in view.trainees]
    values["seen"] = {p.row.patient_id: {"outcome": p.row.outcome, "diagnosis": p.row.diagnosis_text,
                                         "referral": str(p.row.referral_id or "")} for p in view.patients}
    values["walkin_names"] = {p.row.patient_id: p.name for p in view.patients if p.row.booking_id is None}
    values["walkins"] = [{"patient": str(p.row.patient_id), "outcome": p.row.outcome,
                          "diagnosis": p.row.diagnosis_text, "referral": str(p.row.referral_id or "")}
                         for p in view.patients if p.row.booking_id is None]
    values["procs"] = [{"name": p.row.name, "role": p.row.role, "patient": str(p.row.patient_id or ""),
                        "local": str(p.row.local_practitioner_id or "")} for p in view.procedures]
    return values


def _form_page(request: Request, db: Session, user: User, session_id: int, *, values: dict[str, Any],
               invalid: dict[str, str] | None = None, error: str = "", status_code: int = 200) -> Response:
    session = service.get_session(db, session_id)
    if not activity.may_record(user, session):
        raise AccessDenied("只有本次安排的专家或医务科可以记录 / only the session's own person or its planners "
                           "record what happened")
    bookings = [b for b in booking.session_bookings(db, by=user, session=session)
                if b.booking.status in ("booked", "attended", "no_show", "waitlisted")]
    seen = values.get("seen", {})
    rows = []
    for i, b in enumerate(bookings):
        pid = b.booking.patient_id
        given = values.get("booked", {}).get(i)
        if given is None:
            was = seen.get(pid)
            given = {"seen": was is not None or b.booking.status == "attended",
                     "outcome": (was or {}).get("outcome", "treated_locally"),
                     "diagnosis": (was or {}).get("diagnosis", ""), "referral": (was or {}).get("referral", "")}
        rows.append({"i": i, "b": b, **given})
    walkins = list(values.get("walkins", []))
    while len(walkins) < len([w for w in walkins if w.get("patient")]) + WALKIN_ROWS:
        walkins.append({"patient": "", "outcome": "treated_locally", "diagnosis": "", "referral": ""})
    procs = list(values.get("procs", []))
    while len(procs) < len([p for p in procs if p.get("name")]) + PROCEDURE_ROWS:
        procs.append({"name": "", "role": "performed", "patient": "", "local": ""})
    v = service.session_views(db, [session])[0]
    staff = activity.host_staff(db, session.host_organisation_id)
    return render(request, "outreach/activity.html", {
        "s": session, "v": v, "rows": rows, "walkins": walkins, "procs": procs, "staff": staff,
        "values": values, "outcomes": PATIENT_OUTCOMES, "roles": PROCEDURE_ROLES, "invalid": invalid or {},
        "error": error, "recorded": activity.activity_of(db, session.id) is not None,
        "walkin_names": values.get("walkin_names", {})}, status_code=status_code)


@router.get("/outreach/sessions/{session_id}/activity")
def activity_form(request: Request, db: DbSession, user: CurrentUser, session_id: IdPath) -> Response:
    _staff_only(user)
    session = service.get_session(db, session_id)
    if not activity.may_record(user, session):
        raise AccessDenied("只有本次安排的专家或医务科可以记录 / only the session's own person or its planners "
                           "record what happened")
    values = _initial_form(db, user, session_id, client_address(request))
    return _form_page(request, db, user, session_id, values=values)


def _text(form: FormData, name: str) -> str:
    value = form.get(name, "")
    return value.strip() if isinstance(value, str) else ""


def _count(form: FormData, name: str) -> int:
    raw = _text(form, name)
    return min(int(raw), MAX_FORM_ROWS) if raw.isascii() and raw.isdigit() else 0


def _parse(form: FormData, problems: FormProblems) -> tuple[dict[str, Any], list[activity.PatientSeen],
                                                          list[activity.ProcedureDone], list[int], dict[str, str]]:
    """The form as the service's rows, the values to show again, and service field → form field names."""
    values: dict[str, Any] = {"booked": {}, "walkins": [], "procs": [], "attendees": _text(form, "attendees"),
                              "summary": _text(form, "summary"),
                              "trainee_ids": [str(x) for x in form.getlist("trainee_ids")]}
    patients: list[activity.PatientSeen] = []
    rename: dict[str, str] = {}

    def patient_row(prefix: str, pid: int | None, outcome: str, diagnosis: str, referral: str) -> None:
        ref = None
        if referral:
            if is_id(referral):
                ref = int(referral)
            else:
                problems.add(f"{prefix}_referral", "转诊编号须为数字 / the referral id must be a number")
        if pid is None:
            return
        k = len(patients)
        patients.append(activity.PatientSeen(patient_id=pid, outcome=outcome, diagnosis_text=diagnosis,
                                             referral_id=ref))
        for svc, mine in (("patient_id", "patient"), ("outcome", "outcome"), ("diagnosis_text", "diagnosis"),
                          ("referral_id", "referral")):
            rename[f"patients[{k}].{svc}"] = f"{prefix}_{mine}"

    for i in range(_count(form, "booked_count")):
        prefix = f"b{i}"
        row = {"seen": bool(_text(form, f"{prefix}_seen")), "outcome": _text(form, f"{prefix}_outcome"),
               "diagnosis": _text(form, f"{prefix}_diagnosis"), "referral": _text(form, f"{prefix}_referral")}
        values["booked"][i] = row
        raw = _text(form, f"{prefix}_patient")
        pid = int(raw) if is_id(raw) and row["seen"] else None
        patient_row(prefix, pid, row["outcome"], row["diagnosis"], row["referral"] if row["seen"] else "")
    for j in range(_count(form, "walkin_count")):
        prefix = f"w{j}"
        row = {"patient": _text(form, f"{prefix}_patient"), "outcome": _text(form, f"{prefix}_outcome"),
               "diagnosis": _text(form, f"{prefix}_diagnosis"), "referral": _text(form, f"{prefix}_referral")}
        values["walkins"].append(row)
        if not row["patient"]:
            continue
        if not is_id(row["patient"]):
            problems.add(f"{prefix}_patient", "居民编号须为数字 / the patient id must be a number")
            continue
        patient_row(prefix, int(row["patient"]), row["outcome"], row["diagnosis"], row["referral"])
    procedures: list[activity.ProcedureDone] = []
    for j in range(_count(form, "proc_count")):
        prefix = f"r{j}"
        row = {"name": _text(form, f"{prefix}_name"), "role": _text(form, f"{prefix}_role"),
               "patient": _text(form, f"{prefix}_patient"), "local": _text(form, f"{prefix}_local")}
        values["procs"].append(row)
        if not row["name"] and not row["patient"] and not row["local"]:
            continue
        ids: dict[str, int | None] = {}
        for key in ("patient", "local"):
            ids[key] = None
            if row[key]:
                if is_id(row[key]):
                    ids[key] = int(row[key])
                else:
                    problems.add(f"{prefix}_{key}", "须为编号 / must be an id")
        k = len(procedures)
        procedures.append(activity.ProcedureDone(name=row["name"], role=row["role"], patient_id=ids["patient"],
                                                 local_practitioner_id=ids["local"]))
        for svc, mine in (("name", "name"), ("role", "role"), ("patient_id", "patient"),
                          ("local_practitioner_id", "local")):
            rename[f"procedures[{k}].{svc}"] = f"{prefix}_{mine}"
    trainees = []
    for raw in values["trainee_ids"]:
        if is_id(raw):
            trainees.append(int(raw))
        else:
            problems.add("trainee_ids", "学员编号无效 / a trainee id is not valid")
    for k in range(len(trainees)):
        rename[f"trainee_ids[{k}]"] = "trainee_ids"
    return values, patients, procedures, trainees, rename


def _save(request: Request, db: Session, user: User, session_id: int, form: FormData) -> Response:
    problems = FormProblems()
    values, patients, procedures, trainees, rename = _parse(form, problems)
    try:
        attendees = values["attendees"] or "0"
        if not (attendees.isascii() and attendees.isdigit()) or len(attendees) > 6:
            problems.add("attendees", "须为 0 到 100000 的整数 / a whole number 0 to 100000")
        problems.raise_if_any()
        activity.record_activity(db, by=user, session_id=session_id, patients=patients, procedures=procedures,
                                 trainee_ids=trainees, attendees=int(attendees), summary=values["summary"],
                                 client_address=client_address(request))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return _form_page(request, db, user, session_id, values=values,
                          invalid=messages_by_field(exc.field_errors, rename), error=exc.message,
                          status_code=exc.status_code)
    return RedirectResponse(f"/outreach/sessions/{session_id}?done=recorded", status_code=303)


@router.post("/outreach/sessions/{session_id}/activity", dependencies=[CsrfChecked])
async def activity_submit(request: Request, db: DbSession, user: CurrentUser, session_id: IdPath) -> Response:
    form = await request.form()
    return await run_in_threadpool(_save, request, db, user, session_id, form)


# ---------------------------------------------------------------------------- new techniques

def _choices(db: Session) -> dict[str, Any]:
    people = service.person_choices(db)
    hosts = service.public_hosts(db)
    return {"people": people, "hosts": hosts, "studios": impact.grouping_choices(db)["studio"]}


def _opt_id(problems: FormProblems, name: str, value: str, *, required: bool = False) -> int | None:
    value = value.strip()
    if not value:
        if required:
            problems.add(name, "必填 / required")
        return None
    if not is_id(value):
        problems.add(name, "须为编号 / must be an id")
        return None
    return int(value)


def _techniques_page(request: Request, db: Session, user: User, *, form: dict[str, Any],
                     invalid: dict[str, str] | None = None, error: str = "", status_code: int = 200) -> Response:
    _staff_only(user)
    may_add = service.is_planner(user) or user.practitioner_id is not None
    return render(request, "outreach/technique_list.html", {
        "rows": activity.list_techniques(db), "form": form, "invalid": invalid or {}, "error": error,
        "may_add": may_add, "done": request.query_params.get("done", ""), "today": local_today(),
        **(_choices(db) if may_add else {})}, status_code=status_code)


def _blank_technique(user: User) -> dict[str, Any]:
    return {"host_organisation_id": "", "name": "", "introduced_on": local_today().isoformat(),
            "introduced_by_practitioner_id": str(user.practitioner_id or ""), "certified_on": "",
            "certified_by": "", "fills_gap": "", "studio_team_id": "", "session_id": "", "description": ""}


@router.get("/outreach/techniques")
def techniques_page(request: Request, db: DbSession, user: CurrentUser) -> Response:
    return _techniques_page(request, db, user, form=_blank_technique(user))


@router.post("/outreach/techniques", dependencies=[CsrfChecked])
def technique_submit(request: Request, db: DbSession, user: CurrentUser, host_organisation_id: FormText = "",
                     name: FormText = "", introduced_on: FormText = "", introduced_by_practitioner_id: FormText = "",
                     certified_on: FormText = "", certified_by: FormText = "", fills_gap: FormText = "",
                     studio_team_id: FormText = "", session_id: FormText = "",
                     description: FormText = "") -> Response:
    form = {"host_organisation_id": host_organisation_id, "name": name, "introduced_on": introduced_on,
            "introduced_by_practitioner_id": introduced_by_practitioner_id, "certified_on": certified_on,
            "certified_by": certified_by, "fills_gap": fills_gap, "studio_team_id": studio_team_id,
            "session_id": session_id, "description": description}
    try:
        _staff_only(user)
        p = FormProblems()
        host = _opt_id(p, "host_organisation_id", host_organisation_id, required=True)
        person = _opt_id(p, "introduced_by_practitioner_id", introduced_by_practitioner_id, required=True)
        introduced = p.day("introduced_on", introduced_on, required=True)
        certified = p.day("certified_on", certified_on)
        studio = _opt_id(p, "studio_team_id", studio_team_id)
        session = _opt_id(p, "session_id", session_id)
        p.raise_if_any()
        assert host is not None and person is not None and introduced is not None
        activity.add_technique(db, by=user, host_organisation_id=host, name=name, introduced_on=introduced,
                               introduced_by_practitioner_id=person, certified_on=certified,
                               certified_by=certified_by, fills_gap=bool(fills_gap), studio_team_id=studio,
                               session_id=session, description=description)
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return _techniques_page(request, db, user, form=form, invalid=messages_by_field(exc.field_errors),
                                error=exc.message, status_code=exc.status_code)
    return RedirectResponse("/outreach/techniques?done=added", status_code=303)


# ---------------------------------------------------------------------------- traineeships

def _traineeships_page(request: Request, db: Session, user: User, *, form: dict[str, Any],
                       invalid: dict[str, str] | None = None, error: str = "", status_code: int = 200,
                       progress_for: int | None = None) -> Response:
    _staff_only(user)
    may_add = service.is_planner(user) or user.practitioner_id is not None
    rows = activity.list_traineeships(db)
    return render(request, "outreach/traineeship_list.html", {
        "rows": rows, "form": form, "invalid": invalid or {}, "error": error, "may_add": may_add,
        "kinds": TRAINEESHIP_KINDS, "done": request.query_params.get("done", ""), "today": local_today(),
        "progress_for": progress_for,
        "orgs": _all_orgs(db), "practitioners": _all_practitioners(db),
        **({"studios": impact.grouping_choices(db)["studio"]} if may_add else {})}, status_code=status_code)


def _all_orgs(db: Session) -> list[Organisation]:
    return list(db.query(Organisation).order_by(Organisation.name).limit(2000).all())


def _all_practitioners(db: Session) -> list[Practitioner]:
    return list(db.query(Practitioner).order_by(Practitioner.name, Practitioner.id).limit(3000).all())


def _blank_traineeship(user: User) -> dict[str, Any]:
    today = local_today()
    return {"kind": "mentorship", "trainee_practitioner_id": "", "mentor_practitioner_id":
            str(user.practitioner_id or ""), "home_organisation_id": str(user.organisation_id or ""),
            "at_organisation_id": str(user.organisation_id or ""), "starts_on": today.isoformat(),
            "ends_on": today.replace(year=today.year + 1).isoformat() if not (today.month == 2 and today.day == 29)
            else today.isoformat(), "goals": "", "studio_team_id": ""}


@router.get("/outreach/traineeships")
def traineeships_page(request: Request, db: DbSession, user: CurrentUser) -> Response:
    return _traineeships_page(request, db, user, form=_blank_traineeship(user))


@router.post("/outreach/traineeships", dependencies=[CsrfChecked])
def traineeship_submit(request: Request, db: DbSession, user: CurrentUser, kind: FormText = "",
                       trainee_practitioner_id: FormText = "", mentor_practitioner_id: FormText = "",
                       home_organisation_id: FormText = "", at_organisation_id: FormText = "",
                       starts_on: FormText = "", ends_on: FormText = "", goals: FormText = "",
                       studio_team_id: FormText = "") -> Response:
    form = {"kind": kind, "trainee_practitioner_id": trainee_practitioner_id,
            "mentor_practitioner_id": mentor_practitioner_id, "home_organisation_id": home_organisation_id,
            "at_organisation_id": at_organisation_id, "starts_on": starts_on, "ends_on": ends_on, "goals": goals,
            "studio_team_id": studio_team_id}
    try:
        _staff_only(user)
        p = FormProblems()
        trainee = _opt_id(p, "trainee_practitioner_id", trainee_practitioner_id, required=True)
        mentor = _opt_id(p, "mentor_practitioner_id", mentor_practitioner_id)
        home = _opt_id(p, "home_organisation_id", home_organisation_id, required=True)
        at = _opt_id(p, "at_organisation_id", at_organisation_id, required=True)
        start = p.day("starts_on", starts_on, required=True)
        end = p.day("ends_on", ends_on, required=True)
        studio = _opt_id(p, "studio_team_id", studio_team_id)
        p.raise_if_any()
        assert trainee is not None and home is not None and at is not None and start is not None and end is not None
        activity.create_traineeship(db, by=user, kind=kind, trainee_practitioner_id=trainee,
                                    mentor_practitioner_id=mentor, home_organisation_id=home, at_organisation_id=at,
                                    starts_on=start, ends_on=end, goals=goals.splitlines(), studio_team_id=studio)
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return _traineeships_page(request, db, user, form=form, invalid=messages_by_field(exc.field_errors),
                                  error=exc.message, status_code=exc.status_code)
    return RedirectResponse("/outreach/traineeships?done=added", status_code=303)


@router.post("/outreach/traineeships/{traineeship_id}/progress", dependencies=[CsrfChecked])
def progress_submit(request: Request, db: DbSession, user: CurrentUser, traineeship_id: IdPath,
                    goal_index: FormText = "", percent: FormText = "", recorded_on: FormText = "",
                    note: FormText = "") -> Response:
    try:
        p = FormProblems()
        goal = p.opt_int("goal_index", goal_index)
        pct = p.opt_int("percent", percent)
        day = p.day("recorded_on", recorded_on)
        if goal is None and "goal_index" not in {e["field"] for e in p.errors}:
            p.add("goal_index", "请选择目标 / choose a goal")
        if pct is None and "percent" not in {e["field"] for e in p.errors}:
            p.add("percent", "请填写进度 / give the percent reached")
        p.raise_if_any()
        assert goal is not None and pct is not None
        activity.add_progress(db, by=user, traineeship_id=traineeship_id, goal_index=goal, percent=pct,
                              recorded_on=day, note=note)
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        invalid = {f"p{traineeship_id}_{k}": v for k, v in messages_by_field(exc.field_errors).items()}
        return _traineeships_page(request, db, user, form=_blank_traineeship(user), invalid=invalid,
                                  error=exc.message, status_code=exc.status_code, progress_for=traineeship_id)
    return RedirectResponse(f"/outreach/traineeships?done=progress#t{traineeship_id}", status_code=303)


@router.post("/outreach/traineeships/{traineeship_id}/status", dependencies=[CsrfChecked])
def status_submit(db: DbSession, user: CurrentUser, traineeship_id: IdPath, status: FormText = "") -> Response:
    activity.close_traineeship(db, by=user, traineeship_id=traineeship_id, status=status)
    return RedirectResponse(f"/outreach/traineeships?done={status}#t{traineeship_id}", status_code=303)
