"""Consultation pages: the list of requests, the request form, the reading worklist and the request detail
with its actions.

Server-rendered and usable without JavaScript; htmx refreshes the worklist and the detail's status on live
events (hr-live, from /static/live.js) with a 30 s poll as fallback, and runs the patient search. Every rule
lives in service.py; routes parse forms, call it and render what it answers, errors next to the fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.access import service as access
from healthrelay.accounts.models import User
from healthrelay.core.deps import CsrfChecked, CurrentUser, DbSession, client_address
from healthrelay.core.errors import DomainError, InvalidInput, field_error
from healthrelay.directory import service as directory
from healthrelay.directory.models import Organisation, TitleGrade
from healthrelay.patients import service as patients
from healthrelay.teleconsult import service
from healthrelay.teleconsult.models import (
    ConsultKind,
    ConsultRequest,
    ConsultState,
    CriticalResult,
    Priority,
    ReadingCentre,
    Report,
)
from healthrelay.web.forms import FormProblems, messages_by_field, reraise_if_access
from healthrelay.web.templating import render

router = APIRouter(include_in_schema=False)

FormText = Annotated[str, Form()]
PRIORITIES = (Priority.ROUTINE, Priority.URGENT, Priority.EMERGENCY)
KINDS = tuple(ConsultKind)
WANTED_GRADES = (TitleGrade.CHIEF, TitleGrade.ASSOCIATE_CHIEF, TitleGrade.ATTENDING)
MODALITIES = ("CT", "MR", "DX", "CR", "DR", "US", "MG", "XA", "RF", "NM", "PT", "ECG")
LIST_STATES = ("open", "all", *(s.value for s in ConsultState))
VIEWS = ("all", "unclaimed", "mine")
NEW_FORM_FIELDS = ("patient_id", "centre_id", "kind", "priority", "clinical_question", "case_summary",
                   "wanted_specialty_id", "wanted_grade", "consent_given", "consent_kind", "consent_note")
# Service field names -> where the form shows them.
FIELD_ON_FORM = {"to_user_id": "to_user_id"}


# --- small parsing helpers -----------------------------------------------------------------------







# --- the list -------------------------------------------------------------------------------------

@router.get("/teleconsult")
def request_list(request: Request, db: DbSession, user: CurrentUser, side: str = "", state: str = "open") -> Response:
    """What my organisation asked for, and what my centre received, with state filters."""
    reads = bool(service.centres_read_by(db, user))
    side = side if side in ("sent", "received") else ("received" if reads else "sent")
    if state not in LIST_STATES:
        raise InvalidInput("未知的状态筛选 / unknown state filter", field_errors=[field_error("state", "|".join(
            LIST_STATES))])
    states = (service.OPEN_STATES if state == "open" else () if state == "all" else (ConsultState(state),))
    rows = service.list_requests(db, user=user, side=side, states=states, client_address=client_address(request))
    return render(request, "teleconsult/list.html", {
        "rows": rows, "info": service.describe(db, rows), "side": side, "state": state, "states": LIST_STATES,
        "reads": reads, "overdue": {r.id for r in rows if service.is_overdue(r)},
        "done": request.query_params.get("done", "")})


# --- the request form -----------------------------------------------------------------------------

def _patient_card(db: Session, user: User, patient_id: int, address: str) -> dict[str, Any]:
    """Who the request is for, as the record shows it (audited read); the ID stays masked here."""
    record = patients.get(db, user=user, patient_id=patient_id, client_address=address)
    return {"id": record.id, "name": record.name, "sex": record.sex, "birth_date": record.birth_date,
            "masked_id": record.resident_id if record.resident_id_masked else "", "area_name": record.area_name}


def _new_page(request: Request, db: Session, user: User, *, form: dict[str, str], q: str = "",
              invalid: dict[str, str] | None = None, error: str = "", status_code: int = 200) -> Response:
    address = client_address(request)
    invalid = invalid or {}
    patient = None
    search_rows: list[Any] = []
    if form.get("patient_id", "").isdigit():
        patient = _patient_card(db, user, int(form["patient_id"]), address)
    elif q.strip():
        try:
            search_rows = patients.search(db, user=user, q=q, limit=20, client_address=address)
        except InvalidInput as exc:
            error = exc.message
    centres = service.sendable_centres(db, user=user)
    order = ("patient_id", "centre_id", "kind", "priority", "clinical_question", "case_summary",
             "wanted_specialty_id", "wanted_grade", "consent_given", "consent_kind", "consent_note")
    return render(request, "teleconsult/new.html", {
        "form": form, "q": q, "invalid": invalid, "error": error, "patient": patient, "search_rows": search_rows,
        "centres": centres, "centre_orgs": {c.id: service.organisation_name(db, c.organisation_id) for c in centres},
        "kinds": KINDS, "priorities": PRIORITIES, "grades": WANTED_GRADES, "consent_kinds": service.CONSENT_KINDS,
        "specialties": directory.list_specialties(db),
        "focus": next((f for f in order if f in invalid), "centre_id" if patient else "patient-q"),
    }, status_code=status_code)


@router.get("/teleconsult/new")
def new_page(request: Request, db: DbSession, user: CurrentUser, patient_id: str = "", q: str = "",
             centre_id: str = "", kind: str = "") -> Response:
    if patient_id and not patient_id.isdigit():
        raise InvalidInput("patient_id 须为数字 / patient_id must be a number",
                           field_errors=[field_error("patient_id", "not a number")])
    if patient_id:
        patient_id = str(access.resolve_patient(db, int(patient_id)).id)
    return _new_page(request, db, user, q=q, form={
        "patient_id": patient_id, "priority": str(Priority.ROUTINE), "centre_id": centre_id,
        "kind": kind or str(ConsultKind.IMAGING), "consent_kind": "written"})


@router.post("/teleconsult/new", dependencies=[CsrfChecked])
def new_submit(request: Request, db: DbSession, user: CurrentUser, patient_id: FormText = "",
               centre_id: FormText = "", kind: FormText = "", priority: FormText = "routine",
               clinical_question: FormText = "", case_summary: FormText = "", wanted_specialty_id: FormText = "",
               wanted_grade: FormText = "", consent_given: FormText = "", consent_kind: FormText = "",
               consent_note: FormText = "") -> Response:
    values = (patient_id, centre_id, kind, priority, clinical_question, case_summary, wanted_specialty_id,
              wanted_grade, consent_given, consent_kind, consent_note)
    form = {name: value.strip() for name, value in zip(NEW_FORM_FIELDS, values, strict=True)}
    form["case_summary"] = case_summary  # keep the doctor's line breaks
    try:
        consult = _create_from_form(db, user, form, client_address(request))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        invalid = messages_by_field(exc.field_errors, FIELD_ON_FORM)
        return _new_page(request, db, user, form=form, invalid=invalid, error=exc.message,
                         status_code=exc.status_code)
    return RedirectResponse(f"/teleconsult/{consult.id}?done=created", status_code=303)


def _create_from_form(db: Session, user: User, form: dict[str, str], address: str) -> ConsultRequest:
    problems = FormProblems()
    patient_id = problems.opt_int("patient_id", form["patient_id"])
    centre_id = problems.opt_int("centre_id", form["centre_id"])
    kind = problems.choice("kind", form["kind"] or "imaging", ConsultKind, "未知的会诊类型 / unknown kind")
    priority = problems.choice("priority", form["priority"] or "routine", Priority, "未知的紧急程度 / unknown priority")
    specialty = problems.opt_int("wanted_specialty_id", form["wanted_specialty_id"])
    if form["consent_given"] != "yes" and form["consent_kind"] != "emergency_waiver":
        problems.add("consent_given", "请确认已取得患者（或监护人）书面知情同意 / confirm the written consent")
    if form["clinical_question"] and len(form["clinical_question"]) > 2000:
        problems.add("clinical_question", "最多 2000 字 / at most 2000 characters")
    if len(form["consent_note"]) > 500:
        problems.add("consent_note", "最多 500 字 / at most 500 characters")
    try:
        data = service.RequestInput(
            patient_id=patient_id, centre_id=centre_id, kind=kind or ConsultKind.IMAGING,
            priority=priority or Priority.ROUTINE, clinical_question=form["clinical_question"],
            case_summary=form["case_summary"][:20000], wanted_specialty_id=specialty,
            wanted_grade=form["wanted_grade"], consent_kind=form["consent_kind"], consent_note=form["consent_note"])
        if problems.errors:
            # The service names its own problems too, so the page shows all of them at once.
            service.validate(db, by=user, data=data)
    except InvalidInput as exc:
        problems.errors += [e for e in exc.field_errors if e["field"] not in {p["field"] for p in problems.errors}]
    problems.raise_if_any()
    return service.create_request(db, by=user, data=data, created_via="web", client_address=address)


# --- the worklist ---------------------------------------------------------------------------------

@dataclass
class WorklistFilters:
    centre_id: int | None = None
    modality: str = ""
    organisation_id: int | None = None
    priority: Priority | None = None
    kind: ConsultKind | None = None
    view: str = "all"

    def query(self) -> str:
        return urlencode({"centre": self.centre_id or "", "modality": self.modality,
                          "organisation": self.organisation_id or "", "priority": self.priority or "",
                          "kind": self.kind or "", "view": self.view})


def _worklist_filters(centre: str, modality: str, organisation: str, priority: str, kind: str,
                      view: str) -> WorklistFilters:
    problems = FormProblems()
    filters = WorklistFilters(
        centre_id=problems.opt_int("centre", centre), modality=modality.strip().upper()[:16],
        organisation_id=problems.opt_int("organisation", organisation),
        priority=problems.choice("priority", priority, Priority, "未知的紧急程度 / unknown priority"),
        kind=problems.choice("kind", kind, ConsultKind, "未知的会诊类型 / unknown kind"),
        view=view if view in VIEWS else "all")
    problems.raise_if_any()
    return filters


def _worklist_context(request: Request, db: Session, user: User, filters: WorklistFilters) -> dict[str, Any]:
    rows = service.worklist(db, user=user, centre_id=filters.centre_id, modality=filters.modality,
                            inviting_organisation_id=filters.organisation_id, priority=filters.priority,
                            kind=filters.kind, mine=filters.view == "mine", unclaimed=filters.view == "unclaimed",
                            client_address=client_address(request))
    # Whether the user may claim: one check per centre, not per row.
    reads = {c.id: service.reads_for_centre(db, user=user, centre=c) for c in service.centres_read_by(db, user)}
    return {"rows": rows, "info": service.describe(db, rows), "filters": filters,
            "left": {r.id: service.minutes_left(r) for r in rows},
            "readers": {r.id: reads.get(r.centre_id, False) for r in rows}}


def _inviting_organisations(db: Session, centres: list[ReadingCentre]) -> list[tuple[int, str]]:
    """The members that have open requests at these centres (read off the partial index)."""
    if not centres:
        return []
    ids = select(ConsultRequest.inviting_organisation_id).where(
        ConsultRequest.centre_id.in_([c.id for c in centres]),
        ConsultRequest.state.in_([str(s) for s in service.OPEN_STATES])).distinct()
    return [(i, n) for i, n in db.execute(select(Organisation.id, Organisation.name)
                                          .where(Organisation.id.in_(ids)).order_by(Organisation.name)).all()]


@router.get("/teleconsult/worklist")
def worklist_page(request: Request, db: DbSession, user: CurrentUser, centre: str = "", modality: str = "",
                  organisation: str = "", priority: str = "", kind: str = "", view: str = "all") -> Response:
    filters = _worklist_filters(centre, modality, organisation, priority, kind, view)
    context = _worklist_context(request, db, user, filters)
    centres = service.centres_read_by(db, user)
    return render(request, "teleconsult/worklist.html", {
        **context, "centres": centres, "organisations": _inviting_organisations(db, centres),
        "modalities": MODALITIES, "priorities": PRIORITIES, "kinds": KINDS, "views": VIEWS})


@router.get("/teleconsult/_worklist")
def worklist_fragment(request: Request, db: DbSession, user: CurrentUser, centre: str = "", modality: str = "",
                      organisation: str = "", priority: str = "", kind: str = "", view: str = "all") -> Response:
    """The worklist table alone, for htmx to swap in on a live event or the 30 s poll."""
    filters = _worklist_filters(centre, modality, organisation, priority, kind, view)
    return render(request, "teleconsult/_worklist_rows.html",
                  {**_worklist_context(request, db, user, filters), "refresh": True})


# --- the detail page and its actions --------------------------------------------------------------

@dataclass
class ActionError:
    """A refused action, shown inside its own form with what the user typed."""

    action: str
    message: str
    invalid: dict[str, str]
    values: dict[str, Any]


def allowed_actions(db: Session, request: ConsultRequest, user: User) -> set[str]:
    """Which forms to offer; the service decides again when one is submitted."""
    centre = db.get(ReadingCentre, request.centre_id)
    assert centre is not None
    reader = service.reads_for_centre(db, user=user, centre=centre)
    manager = service.manages_centre(db, user=user, centre=centre)
    inviting = user.organisation_id == request.inviting_organisation_id
    state = request.state
    waiting = state in (ConsultState.REQUESTED, ConsultState.ACCEPTED)
    actions: set[str] = set()
    if (reader or manager) and state == ConsultState.REQUESTED:
        actions.add("accept")
    if (reader or manager) and waiting:
        actions.add("decline")
    if reader and waiting and request.claimed_by_user_id is None:
        actions.add("claim")
    if state == ConsultState.ACCEPTED and request.claimed_by_user_id is not None and (
            manager or service.holds_claim(request, user)):
        actions.add("release")
    if manager and waiting:
        actions.add("reassign")
    if inviting and waiting:
        actions.add("cancel")
    if state == ConsultState.ACCEPTED and service.holds_claim(request, user):
        actions.add("report")
    return actions


def _report_context(db: Session, request: ConsultRequest, user: User) -> dict[str, Any]:
    """What the report panel (reports' "_report_panel.html") is given: request, report, critical, user, can_write."""
    report = db.execute(select(Report).where(Report.request_id == request.id)).scalar()
    critical = db.execute(select(CriticalResult).where(CriticalResult.request_id == request.id)).scalar()
    return {"report": report, "critical": critical,
            "can_write": request.state == ConsultState.ACCEPTED and service.holds_claim(request, user)}


def _detail_page(request: Request, db: Session, user: User, request_id: int, *,
                 action_error: ActionError | None = None, status_code: int = 200) -> Response:
    address = client_address(request)
    consult = service.get_request_for(db, request_id=request_id, user=user, client_address=address)
    transitions = list(consult.transitions)
    escalations = service.escalations_of(db, consult)
    info = service.describe(db, [consult])[consult.id]
    centre = db.get(ReadingCentre, consult.centre_id)
    assert centre is not None
    patient = None
    if consult.patient_id is not None and access.decide(db, user=user, patient_id=consult.patient_id) is not None:
        record = patients.view(db, user=user, patient=access.resolve_patient(db, consult.patient_id))
        patient = {"id": record.id, "name": record.name, "sex": record.sex, "birth_date": record.birth_date,
                   "masked_id": record.resident_id, "area_name": record.area_name}
    user_ids = {t.by_user_id for t in transitions} | {u for e in escalations for u in e.notified_user_ids} | {
        consult.claimed_by_user_id, consult.requested_by_user_id, consult.consent_recorded_by_user_id,
        consult.accepted_by_user_id}
    wanted = [u for u in user_ids if u is not None]
    names = dict(db.execute(select(User.id, User.display_name).where(User.id.in_(wanted))).all()) if wanted else {}
    actions = allowed_actions(db, consult, user)
    readers = ([r for r in service.readers_of(db, centre) if r.id != consult.claimed_by_user_id]
               if "reassign" in actions else [])
    specialty = directory.get_specialty(db, consult.wanted_specialty_id) if consult.wanted_specialty_id else None
    return render(request, "teleconsult/detail.html", {
        # "request" is Starlette's own in every template; the report panel gets the consultation as
        # `request` through a {% with %} around its include (see detail.html).
        "consult": consult, "info": info, "centre": centre, "patient": patient,
        "transitions": transitions, "escalations": escalations, "names": names, "actions": actions,
        "action_error": action_error, "readers": readers, "done": request.query_params.get("done", ""),
        "overdue": service.is_overdue(consult), "left": service.minutes_left(consult), "specialty": specialty,
        "inviting_name": service.organisation_name(db, consult.inviting_organisation_id),
        **_report_context(db, consult, user),
    }, status_code=status_code)


@router.get("/teleconsult/{request_id:int}")
def detail(request: Request, db: DbSession, user: CurrentUser, request_id: int) -> Response:
    return _detail_page(request, db, user, request_id)


def _act(request: Request, db: Session, user: User, request_id: int, action: str, values: dict[str, Any],
         call: Any) -> Response:
    """Run one action; on a refusal show the detail page again with the message inside that action's form."""
    try:
        call()
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        invalid = messages_by_field(exc.field_errors, FIELD_ON_FORM)
        error = ActionError(action=action, message=exc.message, invalid=invalid, values=values)
        return _detail_page(request, db, user, request_id, action_error=error, status_code=exc.status_code)
    return RedirectResponse(f"/teleconsult/{request_id}?done={action}", status_code=303)


@router.post("/teleconsult/{request_id:int}/accept", dependencies=[CsrfChecked])
def accept_submit(request: Request, db: DbSession, user: CurrentUser, request_id: int) -> Response:
    return _act(request, db, user, request_id, "accept", {}, lambda: service.accept(
        db, by=user, request_id=request_id, client_address=client_address(request)))


@router.post("/teleconsult/{request_id:int}/decline", dependencies=[CsrfChecked])
def decline_submit(request: Request, db: DbSession, user: CurrentUser, request_id: int,
                   reason: FormText = "") -> Response:
    return _act(request, db, user, request_id, "decline", {"reason": reason}, lambda: service.decline(
        db, by=user, request_id=request_id, reason=reason[:2000], client_address=client_address(request)))


@router.post("/teleconsult/{request_id:int}/cancel", dependencies=[CsrfChecked])
def cancel_submit(request: Request, db: DbSession, user: CurrentUser, request_id: int,
                  reason: FormText = "") -> Response:
    return _act(request, db, user, request_id, "cancel", {"reason": reason}, lambda: service.cancel(
        db, by=user, request_id=request_id, reason=reason[:2000], client_address=client_address(request)))


@router.post("/teleconsult/{request_id:int}/claim", dependencies=[CsrfChecked])
def claim_submit(request: Request, db: DbSession, user: CurrentUser, request_id: int) -> Response:
    return _act(request, db, user, request_id, "claim", {}, lambda: service.claim(
        db, by=user, request_id=request_id, client_address=client_address(request)))


@router.post("/teleconsult/{request_id:int}/release", dependencies=[CsrfChecked])
def release_submit(request: Request, db: DbSession, user: CurrentUser, request_id: int,
                   reason: FormText = "") -> Response:
    return _act(request, db, user, request_id, "release", {"reason": reason}, lambda: service.release(
        db, by=user, request_id=request_id, reason=reason[:2000], client_address=client_address(request)))


@router.post("/teleconsult/{request_id:int}/reassign", dependencies=[CsrfChecked])
def reassign_submit(request: Request, db: DbSession, user: CurrentUser, request_id: int, to_user_id: FormText = "",
                    reason: FormText = "") -> Response:
    def call() -> ConsultRequest:
        problems = FormProblems()
        target = problems.opt_int("to_user_id", to_user_id)
        if target is None and not problems.errors:
            problems.add("to_user_id", "请选择改派给哪位医师 / choose the reader")
        problems.raise_if_any()
        assert target is not None
        return service.reassign(db, by=user, request_id=request_id, to_user_id=target, reason=reason[:2000],
                                client_address=client_address(request))

    return _act(request, db, user, request_id, "reassign", {"to_user_id": to_user_id, "reason": reason}, call)


# Report editor, report PDF and critical results (teleconsult/reports_pages.py).
from healthrelay.teleconsult import reports_pages  # noqa: E402

router.include_router(reports_pages.router)
