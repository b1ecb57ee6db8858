"""Referral pages: the department board, the referral form, the detail with its actions, the
patient's referral timeline, the follow-up worklist and the printable slip.

Server-rendered and usable without JavaScript; htmx only refreshes the incoming list (on live
events, or every 30 s) and fills the diagnosis typeahead. Every rule lives in service.py; the
routes parse forms, call it, and render what it answers, errors included, next to the fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.access.service import actor_of, resolve_patient
from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.core.deps import CsrfChecked, CurrentUser, DbSession, client_address
from healthrelay.core.errors import DomainError, InvalidInput, field_error
from healthrelay.directory import service as directory
from healthrelay.directory.models import Organisation, OrgLevel, Post, TeamKind
from healthrelay.patients import service as patients
from healthrelay.patients.identity import mask_resident_id
from healthrelay.referrals import display, icd10, service, slip
from healthrelay.referrals.api import attachment_response
from healthrelay.referrals.kpi_pages import router as kpi_router
from healthrelay.referrals.models import Direction, Referral, State, Urgency
from healthrelay.web.forms import FormProblems, messages_by_field, reraise_if_access
from healthrelay.web.templating import render

router = APIRouter(include_in_schema=False)
# The KPI page is its own module; included first so /referrals/kpi is matched before /referrals/{id}.
router.include_router(kpi_router)

FormText = Annotated[str, Form()]
FormList = Annotated[list[str], Form()]
# A file input left empty still sends a part, which arrives as an empty string, not a file.
Uploads = Annotated[list[UploadFile | str], File()]

URGENCIES = (Urgency.ROUTINE, Urgency.URGENT, Urgency.GREEN_CHANNEL)
CONSENT_KINDS = ("written", "verbal", "guardian")
HOSPITAL_LEVELS = frozenset({OrgLevel.SECONDARY, OrgLevel.TERTIARY, OrgLevel.PROVINCIAL})
GRASSROOTS_LEVELS = frozenset({OrgLevel.TOWNSHIP, OrgLevel.COMMUNITY, OrgLevel.VILLAGE})
FOLLOW_UP_ROWS = 3
BOARD_LIMIT = 100
# Plausible bedside values; anything outside is a typing slip, not a patient.
VITAL_LIMITS: dict[str, tuple[float, float]] = {
    "bp_sys": (40, 300), "bp_dia": (20, 200), "hr": (20, 250), "rr": (4, 80), "temp": (30, 45), "spo2": (30, 100)}
NEW_FORM_FIELDS = ("patient_id", "urgency", "target", "target_other", "wanted_specialty_id", "reason",
                   "diagnosis_code", "diagnosis_text", "case_summary", "bp_sys", "bp_dia", "hr", "rr", "temp",
                   "spo2", "medicines", "consent_kind")
# Service field names -> where the form shows them.
FIELD_ON_FORM = {"to_organisation_id": "target", "to_department_id": "target", "file": "attachments",
                 "to_team_id": "down_target"}


# --- small parsing helpers -----------------------------------------------------------------------



def _split_target(problems: FormProblems, name: str, value: str) -> tuple[int | None, int | None]:
    """Targets travel as "organisation:department" (or "organisation:" for the whole organisation)."""
    value = (value or "").strip()
    if not value:
        return None, None
    org, _, sub = value.partition(":")
    org_id = problems.opt_int(name, org)
    sub_id = problems.opt_int(name, sub) if sub else None
    return org_id, sub_id


def _lines(text: str) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def _local_datetime(problems: FormProblems, name: str, value: str) -> datetime | None:
    """A datetime-local input is wall-clock time in the county (Asia/Shanghai)."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        problems.add(name, "时间格式应为 2026-11-24 09:00 / time must look like 2026-11-24 09:00")
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=display.LOCAL_TZ)






# --- what the user's organisation can refer to ---------------------------------------------------

@dataclass
class TargetGroup:
    organisation: Organisation
    departments: list[Any] = field(default_factory=list)
    teams: list[Any] = field(default_factory=list)


def _alliance_organisations(db: Session, user: User) -> list[Organisation]:
    """Every other member of the user's alliances, top level first (the fallback when no suggestion fits)."""
    if user.organisation_id is None:
        return []
    seen: dict[int, Organisation] = {}
    for membership in directory.memberships_of(db, [user.organisation_id])[user.organisation_id]:
        for org in directory.search_organisations(db, alliance_id=membership.alliance_id,
                                                  limit=directory.MAX_PAGE).items:
            if org.id != user.organisation_id:
                seen.setdefault(org.id, org)
    return list(seen.values())


def _up_targets(db: Session, user: User) -> list[TargetGroup]:
    return [TargetGroup(org, departments=list(org.departments) if org.level in HOSPITAL_LEVELS else [])
            for org in _alliance_organisations(db, user)]


def _down_targets(db: Session, user: User) -> list[TargetGroup]:
    """Township and community centres of the alliance with their family-doctor teams."""
    orgs = [o for o in _alliance_organisations(db, user) if o.level in GRASSROOTS_LEVELS]
    wanted = {o.id for o in orgs}
    teams: dict[int, list[Any]] = {}
    for team in directory.list_teams(db, kind=TeamKind.FAMILY_DOCTOR, limit=directory.MAX_PAGE).items:
        if team.organisation_id in wanted:
            teams.setdefault(team.organisation_id, []).append(team)
    return [TargetGroup(o, teams=teams.get(o.id, [])) for o in orgs]


def _user_department(db: Session, user: User) -> int | None:
    if user.post_id is None:
        return None
    post = db.get(Post, user.post_id)
    if post is None or post.organisation_id != user.organisation_id:
        return None
    return post.department_id


# --- the board ------------------------------------------------------------------------------------

@dataclass
class BoardFilters:
    department_id: int | None
    urgency: Urgency | None
    department_param: str

    def query(self) -> str:
        return urlencode({"department": self.department_param, "urgency": self.urgency or ""})


def _board_filters(db: Session, user: User, department: str | None, urgency: str) -> BoardFilters:
    problems = FormProblems()
    if department is None:  # first visit: the user's own department, if their post names one
        dept_id = _user_department(db, user)
        param = str(dept_id) if dept_id else "all"
    elif department in ("", "all"):
        dept_id, param = None, "all"
    else:
        dept_id = problems.opt_int("department", department)
        param = department
    wanted_urgency = None
    if urgency:
        try:
            wanted_urgency = Urgency(urgency)
        except ValueError:
            problems.add("urgency", "未知的紧急程度 / unknown urgency")
    problems.raise_if_any()
    return BoardFilters(department_id=dept_id, urgency=wanted_urgency, department_param=param)


def _incoming(db: Session, user: User, filters: BoardFilters, address: str) -> list[Referral]:
    """Up referrals waiting for this organisation's answer: overdue first, green channel first at a tie."""
    rows = service.worklist(db, user=user, direction=Direction.UP, state=service.AWAITING_ANSWER,
                            to_organisation_id=user.organisation_id, to_department_id=filters.department_id,
                            limit=BOARD_LIMIT, client_address=address)
    if filters.urgency is not None:
        rows = [r for r in rows if r.urgency == filters.urgency]
    now = datetime.now(tz=display.LOCAL_TZ)
    return sorted(rows, key=lambda r: display.board_order(r, now))[:BOARD_LIMIT]


def _board_sections(db: Session, user: User, filters: BoardFilters, address: str) -> dict[str, list[Referral]]:
    def wanted(rows: list[Referral]) -> list[Referral]:
        return [r for r in rows if filters.urgency is None or r.urgency == filters.urgency]

    accepted = service.worklist(db, user=user, direction=Direction.UP, state=(State.ACCEPTED, State.ARRIVED),
                                to_organisation_id=user.organisation_id, to_department_id=filters.department_id,
                                limit=BOARD_LIMIT, client_address=address)
    accepted.sort(key=lambda r: (r.state != State.ARRIVED, r.appointment_at or r.updated_at, r.id))
    outgoing: list[Referral] = []
    down: list[Referral] = []
    if user.organisation_id is not None:
        outgoing = service.worklist(db, user=user, from_organisation_id=user.organisation_id, limit=BOARD_LIMIT,
                                    newest_first=True, client_address=address)
        down = service.worklist(db, user=user, direction=Direction.DOWN, to_organisation_id=user.organisation_id,
                                limit=BOARD_LIMIT, client_address=address)
    return {"accepted": wanted(accepted), "outgoing": wanted(outgoing)[:BOARD_LIMIT], "down": wanted(down)}


def _board_context(db: Session, sections: dict[str, list[Referral]]) -> dict[str, Any]:
    everything = [r for rows in sections.values() for r in rows]
    now = datetime.now(tz=display.LOCAL_TZ)
    return {"names": display.Names.load(db, everything), "countdowns": {
        r.id: display.countdown(r, now) for r in everything}, **sections}


@router.get("/referrals")
def board(request: Request, db: DbSession, user: CurrentUser, department: str | None = None,
          urgency: str = "") -> Response:
    address = client_address(request)
    filters = _board_filters(db, user, department, urgency)
    sections = {"incoming": _incoming(db, user, filters, address),
                **_board_sections(db, user, filters, address)}
    departments = (directory.list_departments(db, organisation_id=user.organisation_id)
                   if user.organisation_id is not None else [])
    return render(request, "referrals/board.html", {
        **_board_context(db, sections), "filters": filters, "departments": departments, "urgencies": URGENCIES})


@router.get("/referrals/_incoming")
def incoming_fragment(request: Request, db: DbSession, user: CurrentUser, department: str | None = None,
                      urgency: str = "") -> Response:
    """The incoming list alone, for htmx to swap in on a live event or the 30 s poll."""
    filters = _board_filters(db, user, department, urgency)
    sections = {"incoming": _incoming(db, user, filters, client_address(request))}
    return render(request, "referrals/_incoming.html",
                  {**_board_context(db, sections), "filters": filters, "refresh": True})


# --- the referral form ----------------------------------------------------------------------------

def _patient_card(db: Session, user: User, patient_id: int, address: str) -> Any:
    """Who the referral is for, as the record shows it (audited read); the ID stays masked on this form."""
    record = patients.get(db, user=user, patient_id=patient_id, client_address=address)
    masked = record.resident_id if record.resident_id_masked else mask_resident_id(record.resident_id)
    return {"id": record.id, "name": record.name, "sex": record.sex, "age": display.age_on(record.birth_date),
            "masked_id": masked, "area_name": record.area_name}


def _new_page(request: Request, db: Session, user: User, *, form: dict[str, str], q: str = "",
              invalid: dict[str, str] | None = None, error: str = "", status_code: int = 200) -> Response:
    address = client_address(request)
    invalid = invalid or {}
    patient = None
    search_rows: list[Any] = []
    suggestions: list[Any] = []
    patient_id = form.get("patient_id", "")
    if patient_id.isdigit():
        patient = _patient_card(db, user, int(patient_id), address)
        specialty = form.get("wanted_specialty_id", "")
        suggestions = service.suggest_targets(db, user=user, patient_id=patient["id"],
                                              specialty_id=int(specialty) if specialty.isdigit() else None)
    elif q.strip():
        try:
            search_rows = patients.search(db, user=user, q=q, limit=20, client_address=address)
        except InvalidInput as exc:
            error = exc.message
    code = form.get("diagnosis_code", "")
    order = ("patient_id", "urgency", "target", "wanted_specialty_id", "reason", "diagnosis_code",
             "diagnosis_text", "case_summary", "bp_sys", "bp_dia", "hr", "rr", "temp", "spo2", "medicines",
             "attachments", "consent_kind")
    return render(request, "referrals/new.html", {
        "form": form, "q": q, "invalid": invalid, "error": error, "patient": patient, "search_rows": search_rows,
        "suggestions": suggestions, "fallback": _up_targets(db, user) if patient else [],
        "specialties": directory.list_specialties(db), "urgencies": URGENCIES, "consent_kinds": CONSENT_KINDS,
        "diagnosis": icd10.describe(code) if code else None,
        "focus": next((f for f in order if f in invalid), "urgency" if patient else "patient-q"),
    }, status_code=status_code)


@router.get("/referrals/new")
def new_page(request: Request, db: DbSession, user: CurrentUser, patient_id: str = "", q: str = "",
             wanted_specialty_id: str = "") -> Response:
    if patient_id and not patient_id.isdigit():
        raise InvalidInput("patient_id 须为数字 / patient_id must be a number",
                           field_errors=[field_error("patient_id", "not a number")])
    if patient_id:
        survivor = resolve_patient(db, int(patient_id))
        patient_id = str(survivor.id)
    return _new_page(request, db, user, q=q, form={"patient_id": patient_id, "urgency": str(Urgency.ROUTINE),
                                                    "wanted_specialty_id": wanted_specialty_id})


@router.get("/referrals/_targets")
def targets_fragment(request: Request, db: DbSession, user: CurrentUser, patient_id: int,
                     wanted_specialty_id: str = "", target: str = "") -> Response:
    """Suggested targets again after the wanted specialty changed."""
    specialty = int(wanted_specialty_id) if wanted_specialty_id.isdigit() else None
    suggestions = service.suggest_targets(db, user=user, patient_id=patient_id, specialty_id=specialty)
    return render(request, "referrals/_targets.html", {
        "suggestions": suggestions, "form": {"target": target}, "invalid": {}})


@router.get("/referrals/_icd10")
def icd10_options(request: Request, user: CurrentUser, diagnosis_code: str = "", q: str = "") -> Response:
    """Datalist options for the diagnosis box: by code, Chinese name, pinyin initials or English."""
    text = (q or diagnosis_code).strip()[:40]
    return render(request, "referrals/_icd10.html", {"entries": icd10.search(text, 12) if text else []})


def _vitals(problems: FormProblems, form: dict[str, str]) -> dict[str, Any]:
    values: dict[str, float | int] = {}
    for name, (low, high) in VITAL_LIMITS.items():
        raw = form.get(name, "").strip()
        if not raw:
            continue
        try:
            number = float(raw)
        except ValueError:
            problems.add(name, "须为数字 / must be a number")
            continue
        if not low <= number <= high:
            problems.add(name, f"应在 {low:g}–{high:g} 之间 / must be {low:g}-{high:g}")
            continue
        values[name] = number if name == "temp" else round(number)
    vitals: dict[str, Any] = {}
    if ("bp_sys" in values) != ("bp_dia" in values):
        missing = "bp_dia" if "bp_sys" in values else "bp_sys"
        problems.add(missing, "血压须填收缩压和舒张压 / give both systolic and diastolic pressure")
    elif "bp_sys" in values:
        vitals["bp"] = f"{values['bp_sys']}/{values['bp_dia']}"
    for key in ("hr", "rr", "temp", "spo2"):
        if key in values:
            vitals[key] = values[key]
    return vitals


@router.post("/referrals/new", dependencies=[CsrfChecked])
def new_submit(request: Request, db: DbSession, user: CurrentUser, patient_id: FormText = "",
               urgency: FormText = "routine", target: FormText = "", target_other: FormText = "",
               wanted_specialty_id: FormText = "", reason: FormText = "", diagnosis_code: FormText = "",
               diagnosis_text: FormText = "", case_summary: FormText = "", bp_sys: FormText = "",
               bp_dia: FormText = "", hr: FormText = "", rr: FormText = "", temp: FormText = "",
               spo2: FormText = "", medicines: FormText = "", consent_kind: FormText = "",
               action: FormText = "send", attachments: Uploads = []) -> Response:  # noqa: B006
    values = (patient_id, urgency, target, target_other, wanted_specialty_id, reason, diagnosis_code,
              diagnosis_text, case_summary, bp_sys, bp_dia, hr, rr, temp, spo2, medicines, consent_kind)
    form = {name: value.strip() for name, value in zip(NEW_FORM_FIELDS, values, strict=True)}
    form["medicines"] = medicines  # keep the doctor's line breaks
    address = client_address(request)
    try:
        referral = _create_from_form(db, user, form, send=action != "draft", uploads=attachments,
                                     address=address)
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        invalid = messages_by_field(exc.field_errors, FIELD_ON_FORM)
        return _new_page(request, db, user, form=form, invalid=invalid, error=exc.message,
                         status_code=exc.status_code)
    flag = "sent" if referral.state == State.SENT else "saved"
    return RedirectResponse(f"/referrals/{referral.id}?done={flag}", status_code=303)


def _create_from_form(db: Session, user: User, form: dict[str, str], *, send: bool, uploads: list[UploadFile | str],
                      address: str) -> Referral:
    problems = FormProblems()
    patient_id = problems.opt_int("patient_id", form["patient_id"])
    if patient_id is None and not any(e["field"] == "patient_id" for e in problems.errors):
        problems.add("patient_id", "请先选择患者 / choose the patient first")
    try:
        urgency = Urgency(form["urgency"] or "routine")
    except ValueError:
        problems.add("urgency", "未知的紧急程度 / unknown urgency")
        urgency = Urgency.ROUTINE
    chosen = form["target"] if form["target"] and form["target"] != "other" else form["target_other"]
    to_org, to_dept = _split_target(problems, "target", chosen)
    if to_org is None and not any(e["field"] == "target" for e in problems.errors):
        problems.add("target", "请选择接收机构 / choose where to refer")
    specialty = problems.opt_int("wanted_specialty_id", form["wanted_specialty_id"])
    if not form["reason"]:
        problems.add("reason", "请填写转诊原因 / give the reason for the referral")
    vitals = _vitals(problems, form)
    consent = form["consent_kind"] or None
    if consent is not None and consent not in CONSENT_KINDS:
        problems.add("consent_kind", "未知的知情同意方式 / unknown kind of consent")
    elif send and consent is None:
        problems.add("consent_kind", "发送前须记录患者知情同意；也可先保存草稿 / record the patient's consent "
                                     "before sending, or save a draft")
    problems.raise_if_any()
    assert patient_id is not None and to_org is not None
    data = service.ReferralInput(
        patient_id=patient_id, to_organisation_id=to_org, to_department_id=to_dept, urgency=urgency,
        wanted_specialty_id=specialty, reason=form["reason"], diagnosis_code=icd10.normalise(form["diagnosis_code"])
        if form["diagnosis_code"] else "", diagnosis_text=form["diagnosis_text"], case_summary=form["case_summary"],
        vital_signs=vitals, medicines=_lines(form["medicines"]), consent_kind=consent)
    referral = service.create_draft(db, by=user, data=data, client_address=address)
    if send:
        referral = service.send(db, by=user, referral_id=referral.id, client_address=address)
    _attach(db, user, referral.id, uploads, address)
    return referral


def _attach(db: Session, user: User, referral_id: int, uploads: list[UploadFile | str], address: str,
            description: str = "") -> int:
    count = 0
    for upload in uploads:
        if isinstance(upload, str) or not upload.filename:  # an empty file input still sends a part
            continue
        service.add_attachment(db, by=user, referral_id=referral_id, filename=upload.filename,
                               content=upload.file.read(), description=description, client_address=address)
        count += 1
    return count


# --- follow-up worklist ---------------------------------------------------------------------------

def _follow_ups_page(request: Request, db: Session, user: User, organisation: str = "", *, error: str = "",
                     status_code: int = 200) -> Response:
    org_id = user.organisation_id
    if user.role == Role.ALLIANCE_ADMIN and organisation.isdigit():
        org_id = int(organisation)
    tasks = (service.follow_up_tasks(db, user=user, organisation_id=org_id, client_address=client_address(request))
             if org_id is not None else [])
    numbers = dict(db.execute(select(Referral.id, Referral.number).where(
        Referral.id.in_({t.referral_id for t in tasks}))).all()) if tasks else {}
    names = display.Names.load(db, [], patient_ids=[t.patient_id for t in tasks], team_ids=[t.team_id for t in tasks],
                               organisation_ids=[org_id])
    return render(request, "referrals/follow_ups.html", {
        "tasks": tasks, "numbers": numbers, "names": names, "today": display.local_today(), "error": error,
        "done": request.query_params.get("done", ""), "organisation_name": names.org(org_id)},
        status_code=status_code)


@router.get("/referrals/follow-ups")
def follow_ups(request: Request, db: DbSession, user: CurrentUser, organisation: str = "") -> Response:
    return _follow_ups_page(request, db, user, organisation)


@router.post("/referrals/follow-ups/{task_id}/done", dependencies=[CsrfChecked])
def follow_up_done(request: Request, db: DbSession, user: CurrentUser, task_id: int, note: FormText = "") -> Response:
    try:
        service.complete_follow_up(db, by=user, task_id=task_id, note=note[:1000],
                                   client_address=client_address(request))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return _follow_ups_page(request, db, user, error=exc.message, status_code=exc.status_code)
    return RedirectResponse(f"/referrals/follow-ups?done={task_id}", status_code=303)


# --- attachments ----------------------------------------------------------------------------------

@router.get("/referrals/attachments/{attachment_id}")
def download_attachment(request: Request, db: DbSession, user: CurrentUser, attachment_id: int) -> Response:
    return attachment_response(*service.read_attachment(db, user=user, attachment_id=attachment_id,
                                                        client_address=client_address(request)))


# --- the detail page and its actions --------------------------------------------------------------

@dataclass
class ActionError:
    """A refused action, shown inside its own form with what the user typed."""

    action: str
    message: str
    invalid: dict[str, str]
    values: dict[str, Any]


def allowed_actions(referral: Referral, user: User) -> set[str]:
    """Which forms to offer; the service decides again when one is submitted."""
    receiver = user.organisation_id == referral.to_organisation_id
    sender = user.organisation_id == referral.from_organisation_id
    state, up = referral.state, referral.direction == Direction.UP
    actions: set[str] = set()
    if sender and state == State.DRAFT:
        actions.add("send")
    if receiver and state in service.AWAITING_ANSWER:
        actions |= {"accept", "decline"} | ({"redirect"} if up else set())
    if receiver and up and state == State.ACCEPTED:
        actions.add("arrive")
    if receiver and up and state == State.ARRIVED:
        actions.add("complete")
    if receiver and up and state in (State.ARRIVED, State.COMPLETED):
        actions.add("send_down")
    if receiver and not up and state in (State.ACCEPTED, State.ARRIVED, State.COMPLETED):
        actions.add("send_back_up")
    if sender and state in (State.DRAFT, State.SENT, State.REDIRECTED, State.ACCEPTED):
        actions.add("cancel")
    if (sender or receiver) and state not in service.CLOSED:
        actions.add("attach")
    return actions


def _detail_page(request: Request, db: Session, user: User, referral_id: int, *,
                 action_error: ActionError | None = None, status_code: int = 200) -> Response:
    address = client_address(request)
    referral = service.get_for(db, user=user, referral_id=referral_id, client_address=address)
    transitions = list(referral.transitions)
    attachments = service.attachments_of(db, referral)
    escalations = service.escalations_of(db, referral)
    children = list(db.execute(select(Referral).where(Referral.parent_referral_id == referral.id)
                               .order_by(Referral.id)).scalars())
    parent = db.get(Referral, referral.parent_referral_id) if referral.parent_referral_id else None
    names = display.Names.load(
        db, [referral, *children, *([parent] if parent else [])],
        user_ids=[*(t.by_user_id for t in transitions), *(a.uploaded_by_user_id for a in attachments),
                  *(u for e in escalations for u in e.notified_user_ids)],
        organisation_ids=[*(e.notified_organisation_id for e in escalations),
                          *(item.get("from_organisation_id") for item in referral.history),
                          *(item.get("to_organisation_id") for item in referral.history)],
        department_ids=[e.notified_department_id for e in escalations])
    record = patients.view(db, user=user, patient=resolve_patient(db, referral.patient_id))
    actions = allowed_actions(referral, user)
    needs_orgs = actions & {"decline", "redirect"}
    return render(request, "referrals/detail.html", {
        "r": referral, "names": names, "transitions": transitions, "attachments": attachments,
        "escalations": escalations, "children": children, "parent": parent, "patient": record,
        "age": display.age_on(record.birth_date), "countdown": display.countdown(referral),
        "vitals": display.vital_rows(referral.vital_signs), "medicines": [display.medicine_text(m)
                                                                        for m in referral.medicines],
        "plan_medicines": [display.medicine_text(m) for m in (referral.care_plan or {}).get("medicines", [])],
        "actions": actions, "action_error": action_error, "done": request.query_params.get("done", ""),
        "alliance_targets": _up_targets(db, user) if needs_orgs else [],
        "down_targets": _down_targets(db, user) if "send_down" in actions else [],
        "urgencies": URGENCIES, "consent_kinds": CONSENT_KINDS, "follow_up_rows": FOLLOW_UP_ROWS,
        "today": display.local_today().isoformat(),
    }, status_code=status_code)


@router.get("/referrals/{referral_id}")
def detail(request: Request, db: DbSession, user: CurrentUser, referral_id: int) -> Response:
    return _detail_page(request, db, user, referral_id)


@router.get("/referrals/{referral_id}/slip.pdf")
def slip_pdf(request: Request, db: DbSession, user: CurrentUser, referral_id: int) -> Response:
    """The printable 转诊单; printing is a disclosure of its own, so it is audited as one."""
    address = client_address(request)
    referral = service.get_for(db, user=user, referral_id=referral_id, client_address=address)
    audit.record(db, actor=actor_of(user, address), action="referral.slip", patient_id=referral.patient_id,
                 resource=f"referral:{referral.id}")
    pdf = slip.render_pdf(db, referral=referral, user=user)
    return Response(pdf, media_type="application/pdf", headers={
        "Content-Disposition": f"inline; filename=\"{referral.number}.pdf\"", "Cache-Control": "no-store"})


def _act(request: Request, db: Session, user: User, referral_id: int, action: str, values: dict[str, Any],
         call: Any) -> Response:
    """Run one action; on a refusal show the detail page again with the message inside that action's form."""
    try:
        result = call()
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        invalid = messages_by_field(exc.field_errors, FIELD_ON_FORM)
        error = ActionError(action=action, message=exc.message, invalid=invalid, values=values)
        return _detail_page(request, db, user, referral_id, action_error=error, status_code=exc.status_code)
    target = result.id if isinstance(result, Referral) else referral_id
    return RedirectResponse(f"/referrals/{target}?done={action}", status_code=303)


@router.post("/referrals/{referral_id}/send", dependencies=[CsrfChecked])
def send_submit(request: Request, db: DbSession, user: CurrentUser, referral_id: int,
                consent_kind: Annotated[str, Form(max_length=20)] = "") -> Response:
    """Send a draft; consent taken since the draft was saved is recorded first."""
    address = client_address(request)

    def consent_then_send() -> Referral:
        if consent_kind:
            service.record_consent(db, by=user, referral_id=referral_id, consent_kind=consent_kind,
                                   client_address=address)
        return service.send(db, by=user, referral_id=referral_id, client_address=address)

    return _act(request, db, user, referral_id, "send", {"consent_kind": consent_kind}, consent_then_send)


@router.post("/referrals/{referral_id}/accept", dependencies=[CsrfChecked])
def accept_submit(request: Request, db: DbSession, user: CurrentUser, referral_id: int,
                  appointment_at: FormText = "", bed: FormText = "") -> Response:
    def call() -> Referral:
        problems = FormProblems()
        when = _local_datetime(problems, "appointment_at", appointment_at)
        if len(bed.strip()) > 60:
            problems.add("bed", "床位最多 60 个字 / at most 60 characters")
        problems.raise_if_any()
        return service.accept(db, by=user, referral_id=referral_id, appointment_at=when, bed=bed.strip(),
                              client_address=client_address(request))

    values = {"appointment_at": appointment_at, "bed": bed}
    return _act(request, db, user, referral_id, "accept", values, call)


@router.post("/referrals/{referral_id}/decline", dependencies=[CsrfChecked])
def decline_submit(request: Request, db: DbSession, user: CurrentUser, referral_id: int, reason: FormText = "",
                   suggested_alternative_organisation_id: FormText = "") -> Response:
    def call() -> Referral:
        problems = FormProblems()
        alternative = problems.opt_int("suggested_alternative_organisation_id",
                                       suggested_alternative_organisation_id)
        problems.raise_if_any()
        return service.decline(db, by=user, referral_id=referral_id, reason=reason,
                               suggested_alternative_organisation_id=alternative,
                               client_address=client_address(request))

    values = {"reason": reason, "suggested_alternative_organisation_id": suggested_alternative_organisation_id}
    return _act(request, db, user, referral_id, "decline", values, call)


@router.post("/referrals/{referral_id}/redirect", dependencies=[CsrfChecked])
def redirect_submit(request: Request, db: DbSession, user: CurrentUser, referral_id: int, target: FormText = "",
                    reason: FormText = "") -> Response:
    def call() -> Referral:
        problems = FormProblems()
        org, dept = _split_target(problems, "target", target)
        if org is None and not problems.errors:
            problems.add("target", "请选择转介的机构 / choose where to pass the referral")
        problems.raise_if_any()
        assert org is not None
        return service.redirect(db, by=user, referral_id=referral_id, to_organisation_id=org, to_department_id=dept,
                                reason=reason.strip(), client_address=client_address(request))

    return _act(request, db, user, referral_id, "redirect", {"target": target, "reason": reason}, call)


@router.post("/referrals/{referral_id}/arrive", dependencies=[CsrfChecked])
def arrive_submit(request: Request, db: DbSession, user: CurrentUser, referral_id: int) -> Response:
    return _act(request, db, user, referral_id, "arrive", {}, lambda: service.mark_arrived(
        db, by=user, referral_id=referral_id, client_address=client_address(request)))


@router.post("/referrals/{referral_id}/complete", dependencies=[CsrfChecked])
def complete_submit(request: Request, db: DbSession, user: CurrentUser, referral_id: int,
                    outcome: FormText = "") -> Response:
    return _act(request, db, user, referral_id, "complete", {"outcome": outcome}, lambda: service.complete(
        db, by=user, referral_id=referral_id, outcome=outcome, client_address=client_address(request)))


@router.post("/referrals/{referral_id}/cancel", dependencies=[CsrfChecked])
def cancel_submit(request: Request, db: DbSession, user: CurrentUser, referral_id: int,
                  reason: FormText = "") -> Response:
    return _act(request, db, user, referral_id, "cancel", {"reason": reason}, lambda: service.cancel(
        db, by=user, referral_id=referral_id, reason=reason, client_address=client_address(request)))


@router.post("/referrals/{referral_id}/send-back-up", dependencies=[CsrfChecked])
def send_back_up_submit(request: Request, db: DbSession, user: CurrentUser, referral_id: int,
                        reason: FormText = "", urgency: FormText = "urgent", consent_kind: FormText = "") -> Response:
    def call() -> Referral:
        problems = FormProblems()
        try:
            wanted = Urgency(urgency)
        except ValueError:
            problems.add("urgency", "未知的紧急程度 / unknown urgency")
        if consent_kind not in CONSENT_KINDS:
            problems.add("consent_kind", "请记录患者知情同意 / record the patient's consent")
        problems.raise_if_any()
        return service.send_back_up(db, by=user, down_referral_id=referral_id, reason=reason, urgency=wanted,
                                    consent_kind=consent_kind, client_address=client_address(request))

    values = {"reason": reason, "urgency": urgency, "consent_kind": consent_kind}
    return _act(request, db, user, referral_id, "send_back_up", values, call)


@router.post("/referrals/{referral_id}/send-down", dependencies=[CsrfChecked])
def send_down_submit(request: Request, db: DbSession, user: CurrentUser, referral_id: int,
                     down_target: FormText = "", diagnosis_code: FormText = "", diagnosis_text: FormText = "",
                     reason: FormText = "", medicines: FormText = "", warning_signs: FormText = "",
                     consent_kind: FormText = "", follow_up_date: FormList = [],  # noqa: B006
                     follow_up_kind: FormList = []) -> Response:  # noqa: B006
    values: dict[str, Any] = {
        "down_target": down_target, "diagnosis_code": diagnosis_code, "diagnosis_text": diagnosis_text,
        "reason": reason, "medicines": medicines, "warning_signs": warning_signs, "consent_kind": consent_kind,
        "follow_up": list(zip(follow_up_date, follow_up_kind, strict=False))}

    def call() -> Referral:
        up = service.get_for(db, user=user, referral_id=referral_id, client_address=client_address(request))
        problems = FormProblems()
        org, team = _split_target(problems, "down_target", down_target)
        if org is None and not problems.errors:
            problems.add("down_target", "请选择下转的机构或团队 / choose where to send the patient")
        follow_up: list[dict[str, str]] = []
        for i, (due, kind) in enumerate(zip(follow_up_date, follow_up_kind, strict=False)):
            due, kind = due.strip(), kind.strip()
            if not due and not kind:
                continue
            if not due or not kind:
                problems.add(f"follow_up.{i}", "每行须有日期和随访内容 / each row needs a date and what to do")
                continue
            try:
                date.fromisoformat(due)
            except ValueError:
                problems.add(f"follow_up.{i}", "日期格式应为 2026-12-01 / date must look like 2026-12-01")
                continue
            follow_up.append({"due_on": due, "kind": kind[:60]})
        if not follow_up and not any(e["field"].startswith("follow_up") for e in problems.errors):
            problems.add("follow_up", "下转须至少有一次随访安排 / add at least one follow-up")
        consent = consent_kind or None
        if consent not in CONSENT_KINDS:
            problems.add("consent_kind", "请记录患者知情同意 / record the patient's consent")
        problems.raise_if_any()
        assert org is not None
        plan = {"diagnosis": diagnosis_text.strip(), "medicines": _lines(medicines), "follow_up": follow_up,
                "warning_signs": _lines(warning_signs)}
        data = service.ReferralInput(
            patient_id=up.patient_id, to_organisation_id=org, to_team_id=team, urgency=Urgency.ROUTINE,
            reason=reason.strip(), diagnosis_code=icd10.normalise(diagnosis_code) if diagnosis_code.strip() else "",
            diagnosis_text=diagnosis_text.strip(), case_summary=up.case_summary, consent_kind=consent,
            care_plan=plan, parent_referral_id=up.id)
        return service.send_down(db, by=user, data=data, client_address=client_address(request))

    return _act(request, db, user, referral_id, "send_down", values, call)


@router.post("/referrals/{referral_id}/attachments", dependencies=[CsrfChecked])
def attach_submit(request: Request, db: DbSession, user: CurrentUser, referral_id: int,
                  files: Uploads = [], description: FormText = "") -> Response:  # noqa: B006
    def call() -> None:
        if not _attach(db, user, referral_id, files, client_address(request), description=description[:200]):
            raise InvalidInput("请选择要上传的文件 / choose a file to upload",
                               field_errors=[field_error("attachments", "no file")])

    return _act(request, db, user, referral_id, "attach", {"description": description}, call)


# --- the patient's referral timeline --------------------------------------------------------------

@router.get("/patients/{patient_id}/referrals")
def patient_timeline(request: Request, db: DbSession, user: CurrentUser, patient_id: int) -> Response:
    """Every referral of the patient, oldest first: up and down, with states, places and dates."""
    survivor = resolve_patient(db, patient_id)
    if survivor.id != patient_id:
        return RedirectResponse(f"/patients/{survivor.id}/referrals", status_code=303)
    rows = service.referrals_of_patient(db, user=user, patient_id=patient_id, client_address=client_address(request))
    record = patients.view(db, user=user, patient=survivor)
    return render(request, "referrals/patient_timeline.html", {
        "rows": rows, "names": display.Names.load(db, rows), "patient": record,
        "age": display.age_on(record.birth_date)})
