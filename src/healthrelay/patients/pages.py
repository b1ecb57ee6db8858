"""Pages of the master patient index: search, registration, the record, duplicates and merge."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from healthrelay.access.service import resolve_patient
from healthrelay.core.deps import CsrfChecked, CurrentUser, DbSession, client_address
from healthrelay.core.errors import DomainError, InvalidInput
from healthrelay.patients import service
from healthrelay.patients.models import IdentifierType
from healthrelay.patients.schemas import PatientCreate
from healthrelay.web.templating import render

router = APIRouter(include_in_schema=False)
FormText = Annotated[str, Form()]
# The registration form's fields in screen order (the ID sits high: it fills sex and birth date).
ON_SCREEN = ("name", "resident_id", "sex", "birth_date", "phone", "area_id", "grid", "address_line",
             "insurance_card", "record_number")

FORM_FIELDS = ("name", "sex", "birth_date", "resident_id", "phone", "area_id", "grid", "address_line",
               "insurance_card", "record_number")


def _field_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(str(p) for p in err["loc"]) or "form", "message": err["msg"]} for err in exc.errors()]


def _age(born: date, today: date | None = None) -> int:
    today = today or date.today()
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


@router.get("/patients")
def search_page(request: Request, db: DbSession, user: CurrentUser, q: str = "") -> Response:
    rows: list[Any] = []
    error = ""
    try:
        rows = service.search(db, user=user, q=q, client_address=client_address(request)) if q.strip() else []
    except InvalidInput as exc:
        error = exc.message
    return render(request, "patients/search.html", {"q": q, "rows": rows, "error": error,
                                                     "searched": bool(q.strip())})


def _form_page(request: Request, db: DbSession, *, form: dict[str, str], status_code: int = 200,
               error: str = "", field_errors: list[dict[str, Any]] | None = None,
               candidates: list[Any] | None = None, existing_patient_id: int | None = None) -> Response:
    invalid = {fe["field"]: fe["message"] for fe in (field_errors or [])}
    # Where the keyboard should be: the confirmation after a warning, else the first bad field.
    focus = "confirm_not_duplicate" if candidates else next((f for f in ON_SCREEN if f in invalid), "name")
    return render(request, "patients/new.html", {
        "form": form, "error": error, "candidates": candidates or [], "invalid": invalid, "focus": focus,
        "existing_patient_id": existing_patient_id, "villages": service.village_choices(db),
        "today": date.today().isoformat(),
    }, status_code=status_code)


@router.get("/patients/new")
def new_page(request: Request, db: DbSession, user: CurrentUser) -> Response:
    return _form_page(request, db, form={"sex": ""})


@router.post("/patients/new", dependencies=[CsrfChecked])
def new_submit(request: Request, db: DbSession, user: CurrentUser, name: FormText = "", sex: FormText = "",
               birth_date: FormText = "", resident_id: FormText = "", phone: FormText = "", area_id: FormText = "",
               grid: FormText = "", address_line: FormText = "", insurance_card: FormText = "",
               record_number: FormText = "", confirm_not_duplicate: FormText = "") -> Response:
    values = (name, sex, birth_date, resident_id, phone, area_id, grid, address_line, insurance_card, record_number)
    form = {field: value.strip() for field, value in zip(FORM_FIELDS, values, strict=True)}
    confirm = confirm_not_duplicate in ("on", "1", "true")
    try:
        data = PatientCreate.model_validate({
            **{k: v for k, v in form.items() if v != ""},
            "name": form["name"], "sex": form["sex"] or "U", "confirm_not_duplicate": confirm})
    except ValidationError as exc:
        return _form_page(request, db, form=form, status_code=422, field_errors=_field_errors(exc),
                          error="请检查标红的栏目 / please check the marked fields")
    try:
        patient = service.register(db, by=user, data=data, confirm_not_duplicate=confirm,
                                   client_address=client_address(request))
    except service.LikelyDuplicates as exc:
        db.rollback()
        return _form_page(request, db, form=form, status_code=409, error=exc.message, candidates=exc.candidates)
    except service.DuplicateIdentifier as exc:
        db.rollback()
        return _form_page(request, db, form=form, status_code=409, error=exc.message,
                          field_errors=exc.field_errors, existing_patient_id=exc.existing_patient_id)
    except InvalidInput as exc:
        db.rollback()
        return _form_page(request, db, form=form, status_code=422, error=exc.message, field_errors=exc.field_errors)
    return RedirectResponse(f"/patients/{patient.id}?registered=1", status_code=303)


def _record_page(request: Request, db: DbSession, user: CurrentUser, patient_id: int, *,
                 error: str = "", status_code: int = 200) -> Response:
    record = service.get(db, user=user, patient_id=patient_id, client_address=client_address(request))
    return render(request, "patients/record.html", {
        "p": record, "age": _age(record.birth_date), "is_admin": user.role in service.ADMIN_ROLES,
        "error": error, "flags": request.query_params, "identifier_types": [
            IdentifierType.INSURANCE_CARD, IdentifierType.MEDICAL_RECORD, IdentifierType.RESIDENT_ID],
    }, status_code=status_code)


@router.get("/patients/{patient_id}")
def record_page(request: Request, db: DbSession, user: CurrentUser, patient_id: int) -> Response:
    survivor = resolve_patient(db, patient_id)
    if survivor.id != patient_id:
        return RedirectResponse(f"/patients/{survivor.id}?merged_from={patient_id}", status_code=303)
    return _record_page(request, db, user, patient_id)


@router.post("/patients/{patient_id}/identifiers", dependencies=[CsrfChecked])
def add_identifier_submit(request: Request, db: DbSession, user: CurrentUser, patient_id: int,
                          type: FormText = "", value: FormText = "") -> Response:
    try:
        kind = IdentifierType(type)
        service.add_identifier(db, by=user, patient_id=patient_id, kind=kind, value=value,
                               client_address=client_address(request))
    except ValueError:
        db.rollback()
        return _record_page(request, db, user, patient_id, status_code=422,
                            error="请选择号码类型 / choose the kind of number")
    except (InvalidInput, service.DuplicateIdentifier) as exc:
        db.rollback()
        return _record_page(request, db, user, patient_id, status_code=exc.status_code, error=exc.message)
    return RedirectResponse(f"/patients/{patient_id}?identifier_added=1", status_code=303)


def _duplicates_page(request: Request, db: DbSession, user: CurrentUser, patient_id: int, *,
                     error: str = "", status_code: int = 200, form: dict[str, str] | None = None) -> Response:
    address = client_address(request)
    record = service.get(db, user=user, patient_id=patient_id, client_address=address)
    candidates = service.duplicates(db, user=user, patient_id=record.id, client_address=address)
    return render(request, "patients/duplicates.html", {
        "p": record, "candidates": candidates, "can_merge": user.role in service.ADMIN_ROLES,
        "error": error, "form": form or {},
    }, status_code=status_code)


@router.get("/patients/{patient_id}/duplicates")
def duplicates_page(request: Request, db: DbSession, user: CurrentUser, patient_id: int) -> Response:
    survivor = resolve_patient(db, patient_id)
    if survivor.id != patient_id:
        return RedirectResponse(f"/patients/{survivor.id}/duplicates", status_code=303)
    return _duplicates_page(request, db, user, patient_id)


@router.post("/patients/{patient_id}/merge", dependencies=[CsrfChecked])
def merge_submit(request: Request, db: DbSession, user: CurrentUser, patient_id: int, other_id: FormText = "",
                 keep: FormText = "", reason: FormText = "") -> Response:
    """The duplicates page's form: which candidate, which record survives, and why."""
    form = {"other_id": other_id.strip(), "keep": keep.strip(), "reason": reason.strip()}
    try:
        other_id = int(form["other_id"])
    except ValueError:
        return _duplicates_page(request, db, user, patient_id, status_code=422, form=form,
                                error="请选择要合并的档案 / choose the record to merge")
    survivor_id, merged_id = (patient_id, other_id) if form["keep"] != "other" else (other_id, patient_id)
    try:
        service.merge(db, by=user, survivor_id=survivor_id, merged_id=merged_id, reason=form["reason"],
                      client_address=client_address(request))
    except DomainError as exc:
        db.rollback()
        if exc.status_code == 403:
            raise
        return _duplicates_page(request, db, user, patient_id, status_code=exc.status_code, form=form,
                                error=exc.message)
    return RedirectResponse(f"/patients/{survivor_id}?merged=1", status_code=303)


@router.post("/patients/merges/{merge_id}/undo", dependencies=[CsrfChecked])
def undo_submit(request: Request, db: DbSession, user: CurrentUser, merge_id: int, reason: FormText = "") -> Response:
    record = service.undo_merge(db, by=user, merge_id=merge_id, reason=reason,
                                client_address=client_address(request))
    return RedirectResponse(f"/patients/{record.survivor_id}?unmerged={record.merged_id}", status_code=303)
