"""Tele-ECG pages: the clinic's upload form, the ECG worklist, and the viewer with the coded report editor.

Server-rendered and usable without JavaScript (ecg.js adds zoom, calipers and shortcuts); rules live in
service.py and teleconsult.reports; routes parse forms, call them and show refusals in place.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from healthrelay.access import service as access
from healthrelay.accounts.models import User
from healthrelay.core.deps import CsrfChecked, CurrentUser, DbSession, client_address
from healthrelay.core.errors import DomainError, InvalidInput, field_error
from healthrelay.ecg import codes as vocab
from healthrelay.ecg import flows as flows  # noqa: F401 - registers the STEMI hook on report signatures
from healthrelay.ecg import render, service
from healthrelay.ecg.api import read_uploads
from healthrelay.ecg.models import MATCH_UNMATCHED, EcgRecording
from healthrelay.patients import service as patients
from healthrelay.teleconsult import reports
from healthrelay.teleconsult import service as consult
from healthrelay.teleconsult.models import ConsultKind, ConsultRequest, Priority
from healthrelay.web.forms import FormProblems, messages_by_field, parse_local, reraise_if_access
from healthrelay.web.templating import render as render_page

router = APIRouter(include_in_schema=False)

FormText = Annotated[str, Form()]
PRIORITIES = (Priority.ROUTINE, Priority.URGENT, Priority.EMERGENCY)
ACCEPT = ".dcm,.xml,.csv,.txt,.hea,.dat,application/dicom,text/xml,text/csv"
MEASUREMENT_KEYS = tuple(service.MEASUREMENTS)
DONE = ("saved", "signed", "linked", "claimed")


# --- upload -------------------------------------------------------------------------------------------

def _upload_page(request: Request, db: Session, user: User, *, form: dict[str, str], q: str = "",
                 invalid: dict[str, str] | None = None, error: str = "", status_code: int = 200) -> Response:
    address = client_address(request)
    patient = None
    search_rows: list[Any] = []
    if form.get("patient_id", "").isdigit():
        record = patients.get(db, user=user, patient_id=int(form["patient_id"]), client_address=address)
        patient = {"id": record.id, "name": record.name, "sex": record.sex, "birth_date": record.birth_date,
                   "masked_id": record.resident_id if record.resident_id_masked else "",
                   "area_name": record.area_name}
    elif q.strip():
        try:
            search_rows = patients.search(db, user=user, q=q, limit=20, client_address=address)
        except InvalidInput as exc:
            error = exc.message
    centre = service.ecg_centre_for(db, user.organisation_id) if user.organisation_id else None
    return render_page(request, "ecg/upload.html", {
        "form": form, "q": q, "invalid": invalid or {}, "error": error, "patient": patient,
        "search_rows": search_rows, "priorities": PRIORITIES, "accept": ACCEPT,
        "centre": centre[0] if centre else None}, status_code=status_code)


@router.get("/ecg/upload")
def upload_page(request: Request, db: DbSession, user: CurrentUser, patient_id: str = "", q: str = "") -> Response:
    if patient_id and not patient_id.isdigit():
        raise InvalidInput("patient_id 须为数字 / patient_id must be a number",
                           field_errors=[field_error("patient_id", "not a number")])
    return _upload_page(request, db, user, q=q[:60], form={"patient_id": patient_id, "priority": "urgent"})


@router.post("/ecg/upload", dependencies=[CsrfChecked])
async def upload_submit(request: Request, db: DbSession, user: CurrentUser,
                        files: Annotated[list[UploadFile | str], File()] = [],  # noqa: B006 - FastAPI's form default
                        patient_id: FormText = "", priority: FormText = "urgent",
                        clinical_question: FormText = "", first_contact_at: FormText = "") -> Response:
    form = {"patient_id": patient_id.strip(), "priority": priority.strip(), "clinical_question": clinical_question,
            "first_contact_at": first_contact_at.strip()}
    try:
        data: dict[str, bytes] = await read_uploads([f for f in files if not isinstance(f, str)])
        unread: DomainError | None = None
    except DomainError as exc:
        data, unread = {}, exc
    # The database work runs in the thread pool: see report_submit.
    return await run_in_threadpool(_upload_submit, request, db, user, form, data, unread)


def _upload_submit(request: Request, db: Session, user: User, form: dict[str, str], data: dict[str, bytes],
                   unread: DomainError | None) -> Response:
    try:
        problems = FormProblems()
        pid = problems.opt_int("patient_id", form["patient_id"])
        problems.raise_if_any()
        first_contact = parse_local(form["first_contact_at"], "first_contact_at") if form["first_contact_at"] else None
        if unread is not None:
            raise unread
        if user.organisation_id is None:
            raise InvalidInput("只有机构人员可以上传心电图 / only staff of an organisation upload ECGs")
        rec = service.ingest(db, files=data, organisation_id=user.organisation_id, by=user, patient_id=pid,
                             priority=form["priority"] or "urgent", clinical_question=form["clinical_question"].strip(),
                             via="web", client_address=client_address(request), first_contact_at=first_contact)
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        invalid = messages_by_field(exc.field_errors)
        for name in list(invalid):  # a problem inside a file (named by its part) shows at the file input
            if name not in ("patient_id", "priority", "clinical_question", "first_contact_at", "files"):
                invalid.setdefault("files", invalid.pop(name))
        return _upload_page(request, db, user, form=form, invalid=invalid, error=exc.message,
                            status_code=exc.status_code)
    return RedirectResponse(f"/teleconsult/{rec.consult_request_id}?done=ecg_uploaded", status_code=303)


# --- the ECG worklist ------------------------------------------------------------------------------------

def _worklist_context(request: Request, db: Session, user: User) -> dict[str, Any]:
    rows = consult.worklist(db, user=user, kind=ConsultKind.ECG, client_address=client_address(request))
    return {"rows": rows, "info": consult.describe(db, rows),
            "recordings": service.recordings_by_request(db, [r.id for r in rows]),
            "left": {r.id: consult.minutes_left(r) for r in rows}}


@router.get("/ecg/worklist")
def worklist_page(request: Request, db: DbSession, user: CurrentUser) -> Response:
    """The ECG centre's open requests by deadline, with each tracing's quality flags and automatic rate."""
    return render_page(request, "ecg/worklist.html", _worklist_context(request, db, user))


@router.get("/ecg/_worklist")
def worklist_fragment(request: Request, db: DbSession, user: CurrentUser) -> Response:
    return render_page(request, "ecg/_worklist_rows.html", {**_worklist_context(request, db, user), "refresh": True})


# --- the viewer ---------------------------------------------------------------------------------------------

@router.get("/ecg/requests/{request_id:int}")
def for_request(request: Request, db: DbSession, user: CurrentUser, request_id: int) -> Response:
    """The tracing of an ECG request (links from the teleconsult pages); a request made without a tracing
    goes to teleconsult's own report editor (claim holder) or request page."""
    row = consult.get_request_for(db, request_id=request_id, user=user, client_address=client_address(request))
    found = service.recordings_of(db, request_id)
    if not found:
        holder = consult.holds_claim(row, user) and row.state == "accepted"
        return RedirectResponse(f"/teleconsult/{request_id}/report" if holder else f"/teleconsult/{request_id}",
                                status_code=303)
    return RedirectResponse(f"/ecg/recordings/{found[-1].id}", status_code=303)


def _report_form(rec: EcgRecording, view: reports.ReportView) -> dict[str, Any]:
    """What the editor shows: the draft's coded content, else the automatic suggestions and measurements."""
    report = view.report
    structured = report.structured if report is not None and report.structured else None
    if structured:
        codes = list(structured.get("codes", []))
        measured = {k: structured.get("measurements", {}).get(k) for k in MEASUREMENT_KEYS}
        note = structured.get("rhythm_note", "")
    else:
        codes = list(rec.suggested_codes)
        measured = {k: rec.measurements.get(k) for k in MEASUREMENT_KEYS}
        note = ""
    # Automatic values are offered rounded to whole units, as a reader writes them.
    return {"codes": codes, "measurements": {k: "" if v is None else f"{round(v):d}" if isinstance(v, float | int)
                                             else v for k, v in measured.items()},
            "rhythm_note": note, "findings": report.findings if report else "",
            "impression": report.impression if report else "",
            "recommendation": report.recommendation if report else "",
            "critical": bool(report.critical) if report else False,
            "critical_finding": report.critical_finding if report else ""}


def _viewer(request: Request, db: Session, user: User, recording_id: int, *, form: dict[str, Any] | None = None,
            invalid: dict[str, str] | None = None, error: str = "", status_code: int = 200) -> Response:
    address = client_address(request)
    rec = service.get_recording_for(db, recording_id=recording_id, user=user, client_address=address)
    request_row = db.get(ConsultRequest, rec.consult_request_id)
    assert request_row is not None
    view = reports.view_for(db, request=request_row, user=user)
    patient = None
    if rec.patient_id is not None and access.decide(db, user=user, patient_id=rec.patient_id) is not None:
        record = patients.view(db, user=user, patient=access.resolve_patient(db, rec.patient_id))
        patient = {"id": record.id, "name": record.name, "sex": record.sex, "birth_date": record.birth_date,
                   "masked_id": record.resident_id}
    svg = render.render_svg(service.tracing_of(rec))
    can_claim = (request_row.state in ("requested", "accepted") and request_row.claimed_by_user_id is None
                 and consult.is_centre_reader(db, user=user, request=request_row))
    done = request.query_params.get("done", "")
    return render_page(request, "ecg/viewer.html", {
        "rec": rec, "consult": request_row, "view": view, "patient": patient, "svg": svg,
        "form": form or _report_form(rec, view), "invalid": invalid or {}, "error": error,
        "groups": [(g, vocab.GROUPS[g], vocab.in_group(g)) for g in vocab.GROUPS],
        "by_code": vocab.BY_CODE, "suggested": set(rec.suggested_codes), "measurement_labels": service.MEASUREMENTS,
        "blocking": [f for f in rec.quality_flags if f.get("blocking")],
        "warnings": [f for f in rec.quality_flags if not f.get("blocking")],
        "can_claim": can_claim, "can_link": rec.patient_match == MATCH_UNMATCHED,
        "structured": view.report.structured if view.report is not None else {},
        "done": done if done in DONE else "",
        "uploader": db.execute(select(User.display_name).where(User.id == rec.uploaded_by_user_id)).scalar()
        if rec.uploaded_by_user_id else "",
        "sender": consult.organisation_name(db, rec.organisation_id),
    }, status_code=status_code)


@router.get("/ecg/recordings/{recording_id:int}")
def viewer(request: Request, db: DbSession, user: CurrentUser, recording_id: int) -> Response:
    return _viewer(request, db, user, recording_id)


@router.post("/ecg/recordings/{recording_id:int}/claim", dependencies=[CsrfChecked])
def claim_submit(request: Request, db: DbSession, user: CurrentUser, recording_id: int) -> Response:
    rec = service.get_recording_for(db, recording_id=recording_id, user=user, client_address=client_address(request))
    try:
        consult.claim(db, by=user, request_id=rec.consult_request_id, client_address=client_address(request))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return _viewer(request, db, user, recording_id, error=exc.message, status_code=exc.status_code)
    return RedirectResponse(f"/ecg/recordings/{recording_id}?done=claimed#report", status_code=303)


def _form_from(values: Any) -> dict[str, Any]:
    return {"codes": [str(c) for c in values.getlist("codes")],
            "measurements": {k: str(values.get(f"m_{k}", "")).strip() for k in MEASUREMENT_KEYS},
            "rhythm_note": str(values.get("rhythm_note", "")),
            "findings": str(values.get("findings", "")), "impression": str(values.get("impression", "")),
            "recommendation": str(values.get("recommendation", "")),
            "critical": values.get("critical") == "yes", "critical_finding": str(values.get("critical_finding", ""))}


def _invalid_on_form(errors: list[dict[str, Any]]) -> dict[str, str]:
    out = messages_by_field(errors)
    return {(k.replace("measurements.", "m_") if k.startswith("measurements.") else k): v for k, v in out.items()}


@router.post("/ecg/recordings/{recording_id:int}/report", dependencies=[CsrfChecked])
async def report_submit(request: Request, db: DbSession, user: CurrentUser, recording_id: int) -> Response:
    """Save the draft or sign it (action=save|sign) through teleconsult's report rules."""
    values = await request.form()
    # The database work runs in the thread pool: blocking the event loop on SQLite's write lock would stall
    # the request that holds it (its commit needs the loop) until the busy timeout.
    return await run_in_threadpool(_report_submit, request, db, user, recording_id, values)


def _report_submit(request: Request, db: Session, user: User, recording_id: int, values: Any) -> Response:
    form = _form_from(values)
    action = str(values.get("action", "save"))
    rec = service.get_recording_for(db, recording_id=recording_id, user=user, client_address=client_address(request))
    measured = {k: v for k, v in form["measurements"].items() if v != ""}
    data = reports.ReportInput(
        findings=form["findings"][:reports.TEXT_MAX + 1], impression=form["impression"][:reports.TEXT_MAX + 1],
        recommendation=form["recommendation"][:reports.TEXT_MAX + 1], critical=form["critical"],
        critical_finding=form["critical_finding"][:reports.CRITICAL_MAX + 1],
        structured={"codes": form["codes"], "measurements": measured, "rhythm_note": form["rhythm_note"]})
    try:
        if action == "sign":
            reports.sign(db, request_id=rec.consult_request_id, by=user, data=data,
                         client_address=client_address(request))
        else:
            reports.save_draft(db, request_id=rec.consult_request_id, by=user, data=data,
                               client_address=client_address(request))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return _viewer(request, db, user, recording_id, form=form, invalid=_invalid_on_form(exc.field_errors),
                       error=exc.message, status_code=exc.status_code)
    done = "signed" if action == "sign" else "saved"
    return RedirectResponse(f"/ecg/recordings/{recording_id}?done={done}#report", status_code=303)


@router.post("/ecg/recordings/{recording_id:int}/patient", dependencies=[CsrfChecked])
def link_patient_submit(request: Request, db: DbSession, user: CurrentUser, recording_id: int,
                        patient_id: FormText = "", reason: FormText = "") -> Response:
    try:
        problems = FormProblems()
        pid = problems.opt_int("patient_id", patient_id)
        if pid is None and not problems.errors:
            problems.add("patient_id", "请填写患者编号 / enter the patient's number")
        problems.raise_if_any()
        assert pid is not None
        service.link_patient(db, recording_id=recording_id, patient_id=pid, by=user, reason=reason[:500],
                             client_address=client_address(request))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return _viewer(request, db, user, recording_id, invalid=messages_by_field(exc.field_errors),
                       error=exc.message, status_code=exc.status_code)
    return RedirectResponse(f"/ecg/recordings/{recording_id}?done=linked", status_code=303)
