"""Imaging pages: the studies list (with the flagged "待匹配" ones and linking them to a resident) and the
web viewer.

The viewer page puts the first frame's rendered image in its initial HTML (and a preload hint in the
head), so the first image is on screen without waiting for the study JSON; viewer.js then fetches
/api/v1/imaging/studies/{uid} and takes over (scrolling, presets, zoom, measurement, priors).
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from healthrelay.accounts.models import User
from healthrelay.core.deps import CsrfChecked, CurrentUser, DbSession, client_address
from healthrelay.core.errors import DomainError, InvalidInput, field_error
from healthrelay.imaging import studies
from healthrelay.imaging.models import PatientMatch
from healthrelay.patients import service as patients
from healthrelay.web.templating import render

router = APIRouter(include_in_schema=False)

FormText = Annotated[str, Form()]
MODALITIES = ("CT", "MR", "DX", "CR", "US", "MG", "XA", "NM", "PT", "ECG")
# Window/level presets (center, width); "default" is the file's own VOI and has no entry.
PRESETS = (("lung", -600, 1500), ("mediastinum", 40, 400), ("bone", 400, 1800), ("brain", 40, 80))


def _date_param(name: str, value: str, errors: list[dict[str, Any]]) -> date | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        errors.append(field_error(name, "日期格式应为 2026-11-24 / date must look like 2026-11-24"))
        return None


def _filters(unmatched: str, modality: str, organisation: str, date_from: str,
             date_to: str) -> studies.StudyFilters:
    errors: list[dict[str, Any]] = []
    org_id = None
    if organisation.strip():
        if organisation.strip().isdigit():
            org_id = int(organisation)
        else:
            errors.append(field_error("organisation", "须为数字 / must be a number"))
    filters = studies.StudyFilters(
        unmatched=unmatched in ("1", "true", "on"), modality=studies.check_modality(modality),
        organisation_id=org_id, date_from=_date_param("date_from", date_from, errors),
        date_to=_date_param("date_to", date_to, errors))
    if errors:
        raise InvalidInput("请检查筛选条件 / please check the filters", field_errors=errors)
    return filters


@router.get("/imaging")
def studies_page(request: Request, db: DbSession, user: CurrentUser, unmatched: str = "", modality: str = "",
                 organisation: str = "", date_from: str = "", date_to: str = "", cursor: str = "") -> Response:
    filters = _filters(unmatched, modality, organisation, date_from, date_to)
    page = studies.list_studies(db, user=user, filters=filters, cursor=cursor[:80],
                                client_address=client_address(request))
    query = {"unmatched": "1" if filters.unmatched else "", "modality": filters.modality,
             "organisation": str(filters.organisation_id or ""), "date_from": date_from, "date_to": date_to}
    next_url = (f"/imaging?{urlencode({**query, 'cursor': page.next_cursor})}" if page.next_cursor else "")
    return render(request, "imaging/list.html", {
        "page": page, "filters": filters, "query": query, "next_url": next_url, "first_page": not cursor,
        "modalities": MODALITIES, "organisations": studies.organisations_seen(db, user=user),
        "waiting": studies.count_unmatched(db, user=user), "linked": request.query_params.get("linked", "")})


# --- linking a flagged study -----------------------------------------------------------------------

def _link_page(request: Request, db: Session, user: User, study_uid: str, *, q: str = "", error: str = "",
               status_code: int = 200) -> Response:
    address = client_address(request)
    detail = studies.study_detail(db, user=user, study_uid=study_uid, client_address=address)
    rows: list[Any] = []
    if q.strip() and detail.patient_match == PatientMatch.UNMATCHED:
        try:
            rows = patients.search(db, user=user, q=q, limit=20, client_address=address)
        except InvalidInput as exc:
            error = exc.message
    return render(request, "imaging/link.html", {"study": detail, "q": q, "rows": rows, "error": error},
                  status_code=status_code)


@router.get("/imaging/studies/{study_uid}/link")
def link_page(request: Request, db: DbSession, user: CurrentUser, study_uid: str, q: str = "") -> Response:
    return _link_page(request, db, user, study_uid, q=q[:60])


@router.post("/imaging/studies/{study_uid}/link", dependencies=[CsrfChecked])
def link_submit(request: Request, db: DbSession, user: CurrentUser, study_uid: str, patient_id: FormText = "",
                note: FormText = "", q: FormText = "") -> Response:
    try:
        if not patient_id.strip().isdigit():
            raise InvalidInput("请先选择患者 / choose the patient first",
                               field_errors=[field_error("patient_id", "required")])
        studies.link_patient(db, by=user, study_uid=study_uid, patient_id=int(patient_id), note=note[:200],
                             client_address=client_address(request))
    except DomainError as exc:
        if exc.status_code in (401, 403, 404):
            raise  # the error page (with break-the-glass for a resident the user has no relationship with)
        db.rollback()
        return _link_page(request, db, user, study_uid, q=q[:60], error=exc.message, status_code=exc.status_code)
    return RedirectResponse(f"/imaging?{urlencode({'linked': study_uid})}", status_code=303)


# --- the viewer --------------------------------------------------------------------------------------

@router.get("/imaging/studies/{study_uid}/viewer")
def viewer(request: Request, db: DbSession, user: CurrentUser, study_uid: str) -> Response:
    study = studies.readable_study(db, user=user, study_uid=study_uid, client_address=client_address(request))
    summary = studies.detail_header(db, user=user, study=study)
    first = studies.first_frame(studies.series_of(db, study), study.study_instance_uid)
    return render(request, "imaging/viewer.html", {
        "study": summary, "first": first, "presets": PRESETS,
        "api_url": f"/api/v1/imaging/studies/{study.study_instance_uid}"})
