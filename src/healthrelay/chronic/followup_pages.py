"""Follow-up pages: the national visit form (随访服务记录表), the saved visit with what it led to, and the
family-doctor team's worklist (overdue patients with a call-outcome form per row, open tasks).

Server-rendered, keyboard-first and usable without JavaScript: the worklist's row forms post normally and
htmx only swaps the row in place when it is there. Every rule lives in followups.py and worklist.py.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from healthrelay.accounts.models import User
from healthrelay.chronic import followups, rules, worklist
from healthrelay.chronic.followups import FollowUpInput
from healthrelay.chronic.models import ChronicEnrolment, ChronicFollowUp
from healthrelay.chronic.schemas import MAX_OFFSET, IdPath, is_id
from healthrelay.core.db import local_today
from healthrelay.core.deps import CsrfChecked, CurrentUser, DbSession, client_address
from healthrelay.core.errors import AccessDenied, DomainError, InvalidInput, field_error
from healthrelay.web.forms import FormProblems, messages_by_field, reraise_if_access
from healthrelay.web.templating import render, request_locale

router = APIRouter(include_in_schema=False)

FormText = Annotated[str, Form()]
FormList = Annotated[list[str], Form()]
MEDICINE_ROWS = 4
PAGE_SIZE = 50
MAX_PAGE = MAX_OFFSET // PAGE_SIZE
LIFESTYLE_FIELDS = ("smoking_per_day", "drinking_liang_per_day", "exercise_per_week", "exercise_minutes",
                    "staple_g_per_day", "salt", "mood", "compliance")
# The national forms' symptom lists; another condition is offered them all.
SYMPTOMS_BY_CONDITION = {
    "htn": ("none", "headache_dizziness", "nausea_vomiting", "blurred_vision_tinnitus", "dyspnoea",
            "palpitation_chest_tightness", "nosebleed", "limb_numbness", "leg_oedema"),
    "t2dm": ("none", "polydipsia", "polyphagia", "polyuria", "blurred_vision", "infection", "limb_numbness",
             "leg_oedema", "weight_loss"),
}
# The order the form's fields come in, so the first bad one gets the focus.
FIELD_ORDER = ("visit_on", "mode", "symptoms", "sbp", "dbp", "heart_rate", "weight_kg", "height_cm",
               "fasting_glucose", "hba1c", "foot_pulse", "hypoglycaemia", *(f"lifestyle.{k}" for k in LIFESTYLE_FIELDS),
               *(f"medicines.{i}.{k}" for i in range(MEDICINE_ROWS) for k in ("name", "dose", "frequency")),
               "adherence", "side_effects", "new_complications", "note")


def _require_recorder(user: User) -> None:
    if user.role not in followups.RECORD_ROLES or user.organisation_id is None:
        raise AccessDenied("只有机构的医生可以记录随访 / only an organisation's clinicians record follow-ups")


def _labels(choices: dict[str, tuple[str, str]], locale: str) -> dict[str, str]:
    return {code: (zh if locale == "zh" else en) for code, (zh, en) in choices.items()}


def _choices(locale: str) -> dict[str, dict[str, str]]:
    """Every coded answer of the form, labelled in the reader's language (the codes live in followups.py)."""
    return {name: _labels(table, locale) for name, table in (
        ("modes", followups.MODES), ("symptoms", followups.SYMPTOMS), ("adherence", followups.ADHERENCE),
        ("foot_pulses", followups.FOOT_PULSES), ("hypoglycaemia", followups.HYPOGLYCAEMIA),
        ("complications", followups.COMPLICATIONS), ("levels", followups.LEVELS), ("salt", followups.SALT),
        ("classifications", rules.CLASSIFICATIONS))}


def _text(value: Any) -> str:
    return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _blank_form(enrolment: ChronicEnrolment, last: ChronicFollowUp | None) -> dict[str, Any]:
    """Today's visit, prefilled with the last visit's lifestyle, medicines, adherence and height."""
    medicines = list((last.medicines if last is not None and last.medicines else enrolment.medicines) or [])
    rows = [{k: str(m.get(k, "")) for k in ("name", "dose", "frequency")} for m in medicines[:MEDICINE_ROWS]]
    rows += [{"name": "", "dose": "", "frequency": ""} for _ in range(MEDICINE_ROWS - len(rows))]
    lifestyle = dict(last.lifestyle or {}) if last is not None else {}
    return {"visit_on": local_today().isoformat(), "mode": "clinic", "symptoms": [], "sbp": "", "dbp": "",
            "heart_rate": "", "weight_kg": "", "height_cm": _text(last.height_cm) if last is not None else "",
            "fasting_glucose": "", "hba1c": "", "foot_pulse": "", "hypoglycaemia": "",
            "lifestyle": {k: _text(lifestyle.get(k)) for k in LIFESTYLE_FIELDS}, "medicines": rows,
            "adherence": last.adherence if last is not None else "regular", "side_effects": "",
            "new_complications": [], "note": ""}


def _form_page(request: Request, db: Session, user: User, *, enrolment_id: int, form: dict[str, Any] | None = None,
               invalid: dict[str, str] | None = None, error: str = "", status_code: int = 200) -> Response:
    enrolment, patient, last = followups.enrolment_for_form(db, user=user, enrolment_id=enrolment_id,
                                                            client_address=client_address(request))
    cond = rules.rules_for(db, enrolment.condition_code)
    invalid = invalid or {}
    locale = request_locale(request)
    return render(request, "chronic/followup_new.html", {
        "enrolment": enrolment, "patient": patient, "last": last, "cond": cond,
        "age": rules.age_on(patient.birth_date, local_today()), "target": rules.bp_target(
            cond, rules.age_on(patient.birth_date, local_today())),
        "form": form or _blank_form(enrolment, last), "invalid": invalid, "error": error,
        "choices": _choices(locale), "symptom_list": SYMPTOMS_BY_CONDITION.get(cond.code, tuple(followups.SYMPTOMS)),
        "focus": next((f for f in FIELD_ORDER if f in invalid), "visit_on"), "today": local_today()},
        status_code=status_code)


def _enrolment_param(value: str) -> int:
    if not is_id(value):
        raise InvalidInput("请指定慢病管理档案 / choose the enrolment", field_errors=[
            field_error("enrolment", "须为数字 / must be a number")])
    return int(value.strip())


@router.get("/chronic/follow-ups/new")
def follow_up_new(request: Request, db: DbSession, user: CurrentUser, enrolment: str = "") -> Response:
    _require_recorder(user)
    return _form_page(request, db, user, enrolment_id=_enrolment_param(enrolment))


def _opt_float(problems: FormProblems, name: str, value: str) -> float | None:
    value = (value or "").strip().replace("，", ".").replace(",", ".")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        problems.add(name, "须为数字 / must be a number")
        return None


def _parse(form: dict[str, Any]) -> tuple[FollowUpInput, FormProblems]:
    """The typed form as the service's input; what does not even parse is a problem on its field."""
    problems = FormProblems()
    visit_on: date | None = None
    if form["visit_on"]:
        try:
            visit_on = date.fromisoformat(form["visit_on"])
        except ValueError:
            problems.add("visit_on", "日期格式应为 年-月-日 / the date must read YYYY-MM-DD")
    lifestyle: dict[str, Any] = {}
    for key, value in form["lifestyle"].items():
        if key in followups.LIFESTYLE_NUMBERS:
            number = _opt_float(problems, f"lifestyle.{key}", value)
            if number is not None:
                lifestyle[key] = number
        elif value:
            lifestyle[key] = value
    data = FollowUpInput(
        visit_on=visit_on, mode=form["mode"], symptoms=form["symptoms"],
        sbp=problems.opt_int("sbp", form["sbp"]), dbp=problems.opt_int("dbp", form["dbp"]),
        heart_rate=problems.opt_int("heart_rate", form["heart_rate"]),
        weight_kg=_opt_float(problems, "weight_kg", form["weight_kg"]),
        height_cm=_opt_float(problems, "height_cm", form["height_cm"]), lifestyle=lifestyle,
        medicines=[m for m in form["medicines"] if any(m.values())], adherence=form["adherence"],
        side_effects=form["side_effects"], fasting_glucose=_opt_float(problems, "fasting_glucose",
                                                                      form["fasting_glucose"]),
        hba1c=_opt_float(problems, "hba1c", form["hba1c"]), foot_pulse=form["foot_pulse"],
        hypoglycaemia=form["hypoglycaemia"], new_complications=form["new_complications"], note=form["note"])
    if visit_on is None and not problems.errors:
        problems.add("visit_on", "请填写随访日期 / the visit date is required")
    return data, problems


@router.post("/chronic/follow-ups/new", dependencies=[CsrfChecked])
def follow_up_submit(request: Request, db: DbSession, user: CurrentUser, enrolment_id: FormText = "",
                     visit_on: FormText = "", mode: FormText = "clinic", symptoms: FormList = [],  # noqa: B006
                     sbp: FormText = "", dbp: FormText = "", heart_rate: FormText = "", weight_kg: FormText = "",
                     height_cm: FormText = "", fasting_glucose: FormText = "", hba1c: FormText = "",
                     foot_pulse: FormText = "", hypoglycaemia: FormText = "", smoking_per_day: FormText = "",
                     drinking_liang_per_day: FormText = "", exercise_per_week: FormText = "",
                     exercise_minutes: FormText = "", staple_g_per_day: FormText = "", salt: FormText = "",
                     mood: FormText = "", compliance: FormText = "", med_name: FormList = [],  # noqa: B006
                     med_dose: FormList = [], med_frequency: FormList = [],  # noqa: B006
                     adherence: FormText = "regular", side_effects: FormText = "",
                     new_complications: FormList = [], note: FormText = "") -> Response:  # noqa: B006
    _require_recorder(user)
    enrolment = _enrolment_param(enrolment_id)
    meds = [{"name": (med_name[i] if i < len(med_name) else "").strip(),
             "dose": (med_dose[i] if i < len(med_dose) else "").strip(),
             "frequency": (med_frequency[i] if i < len(med_frequency) else "").strip()} for i in range(MEDICINE_ROWS)]
    values = {"smoking_per_day": smoking_per_day, "drinking_liang_per_day": drinking_liang_per_day,
              "exercise_per_week": exercise_per_week, "exercise_minutes": exercise_minutes,
              "staple_g_per_day": staple_g_per_day, "salt": salt, "mood": mood, "compliance": compliance}
    form = {"visit_on": visit_on.strip(), "mode": mode.strip(), "symptoms": symptoms, "sbp": sbp.strip(),
            "dbp": dbp.strip(), "heart_rate": heart_rate.strip(), "weight_kg": weight_kg.strip(),
            "height_cm": height_cm.strip(), "fasting_glucose": fasting_glucose.strip(), "hba1c": hba1c.strip(),
            "foot_pulse": foot_pulse.strip(), "hypoglycaemia": hypoglycaemia.strip(),
            "lifestyle": {k: v.strip() for k, v in values.items()}, "medicines": meds,
            "adherence": adherence.strip(), "side_effects": side_effects.strip(),
            "new_complications": new_complications, "note": note.strip()}
    data, problems = _parse(form)
    try:
        if problems.errors:
            # Name every problem at once: what did not parse, then what the rules say about the rest.
            problems.errors += followups.validation_errors(db, enrolment_id=enrolment, data=data)
            problems.raise_if_any()
        outcome = followups.record_follow_up(db, by=user, enrolment_id=enrolment, data=data,
                                             client_address=client_address(request))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()  # nothing half-written
        return _form_page(request, db, user, enrolment_id=enrolment, form=form,
                          invalid=messages_by_field(exc.field_errors), error=exc.message,
                          status_code=exc.status_code)
    return RedirectResponse(f"/chronic/follow-ups/{outcome.follow_up.id}?saved=1", status_code=303)


@router.get("/chronic/follow-ups/{follow_up_id:int}")
def follow_up_detail(request: Request, db: DbSession, user: CurrentUser, follow_up_id: IdPath,
                     saved: str = "") -> Response:
    found = followups.follow_up_for(db, user=user, follow_up_id=follow_up_id, client_address=client_address(request))
    v = found.follow_up
    cond = rules.rules_for(db, v.condition_code)
    danger = (v.sbp is not None and v.dbp is not None and rules.bp_danger(cond, sbp=v.sbp, dbp=v.dbp)) or (
        v.fasting_glucose is not None and rules.glucose_danger(cond, value=v.fasting_glucose))
    return render(request, "chronic/followup_detail.html", {"danger": danger,
        "v": found.follow_up, "enrolment": found.enrolment, "patient": found.patient, "referral": found.referral,
        "task": found.task, "saved": bool(saved), "choices": _choices(request_locale(request)),
        "may_record": user.role in followups.RECORD_ROLES and found.enrolment.status == "active"})


# --- the team's worklist --------------------------------------------------------------------------

def _team_param(value: str) -> int | None:
    value = (value or "").strip()
    if not value:
        return None
    if not is_id(value):
        raise InvalidInput("团队编号须为数字 / team must be a number", field_errors=[
            field_error("team", "须为数字 / must be a number")])
    return int(value)


def _worklist_page(request: Request, db: Session, user: User, *, team: str = "", condition: str = "",
                   page: int = 1, done: str = "", error: str = "", status_code: int = 200) -> Response:
    teams = worklist.teams_of_user(db, user)
    team_id = _team_param(team)
    if team_id is None and teams:
        team_id = teams[0].id
    if team_id is None:
        if user.role not in worklist.WORKLIST_ROLES:
            raise AccessDenied("只有家庭医生团队成员可以查看工作清单 / only family-doctor team members see worklists")
        return render(request, "chronic/worklist_team.html", {"teams": [], "found": None, "error": error})
    conditions = {c.code: c for c in rules.all_conditions(db)}
    condition = condition if condition in conditions else ""
    page = min(max(page, 1), MAX_PAGE)
    found = worklist.team_worklist(db, user=user, team_id=team_id, condition=condition or None,
                                   limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE,
                                   client_address=client_address(request))
    more = len(found.overdue) > PAGE_SIZE
    found.overdue = found.overdue[:PAGE_SIZE]
    return render(request, "chronic/worklist_team.html", {
        "teams": teams, "found": found, "conditions": conditions, "condition": condition, "page": page,
        "more": more, "outcomes": worklist.outcome_rules(db), "done": done, "error": error,
        "ages": {r.enrolment_id: rules.age_on(r.birth_date, found.today) for r in found.overdue}},
        status_code=status_code)


@router.get("/chronic/worklist")
def worklist_page(request: Request, db: DbSession, user: CurrentUser, team: str = "", condition: str = "",
                  page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1, done: str = "") -> Response:
    return _worklist_page(request, db, user, team=team, condition=condition, page=page, done=done)


def _is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request", "").lower() == "true"


@router.post("/chronic/worklist/calls", dependencies=[CsrfChecked])
def worklist_call(request: Request, db: DbSession, user: CurrentUser, enrolment_id: FormText = "",
                  outcome_code: FormText = "", note: FormText = "", team: FormText = "") -> Response:
    enrolment = int(enrolment_id.strip()) if is_id(enrolment_id) else None
    try:
        if enrolment is None:
            raise InvalidInput("enrolment_id 须为慢病管理档案编号 / enrolment_id must be an enrolment's id",
                               field_errors=[field_error("enrolment_id", "须为编号 / must be an id")])
        call = worklist.record_call(db, by=user, enrolment_id=enrolment, outcome_code=outcome_code.strip(),
                                    note=note, client_address=client_address(request))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        if _is_htmx(request):
            return render(request, "chronic/worklist_row_done.html", {"error": exc.message, "call": None,
                                                                      "enrolment_id": enrolment})
        return _worklist_page(request, db, user, team=team, error=exc.message, status_code=exc.status_code)
    if _is_htmx(request):
        return render(request, "chronic/worklist_row_done.html", {
            "error": "", "call": call, "enrolment_id": call.enrolment_id,
            "enrolment": worklist.enrolment_of(db, call.enrolment_id),
            "outcome": next((o for o in worklist.outcome_rules(db) if o.code == call.outcome_code), None)})
    return RedirectResponse(f"/chronic/worklist?team={_team_param(team) or ''}&done=call", status_code=303)


@router.post("/chronic/worklist/tasks/{task_id:int}/done", dependencies=[CsrfChecked])
def worklist_task_done(request: Request, db: DbSession, user: CurrentUser, task_id: IdPath, outcome: FormText = "",
                       team: FormText = "") -> Response:
    try:
        task = worklist.complete_task(db, by=user, task_id=task_id, outcome=outcome,
                                      client_address=client_address(request))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        if _is_htmx(request):
            return render(request, "chronic/worklist_task_done.html", {"error": exc.message, "task": None,
                                                                       "task_id": task_id})
        return _worklist_page(request, db, user, team=team, error=exc.message, status_code=exc.status_code)
    if _is_htmx(request):
        return render(request, "chronic/worklist_task_done.html", {"error": "", "task": task, "task_id": task.id})
    return RedirectResponse(f"/chronic/worklist?team={_team_param(team) or task.team_id or ''}&done=task",
                            status_code=303)
