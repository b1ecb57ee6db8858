"""The admins' audit page: search, page back through time, export, verify the chain."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from sqlalchemy import select
from starlette.background import BackgroundTask

from healthrelay.accounts.models import Role, User
from healthrelay.audit import export, service
from healthrelay.audit.schemas import AuditQuery
from healthrelay.core.deps import CsrfChecked, CurrentActor, DbSession, require_roles
from healthrelay.core.errors import InvalidInput, field_error
from healthrelay.directory.models import Organisation
from healthrelay.web.templating import LOCAL_TZ, render

router = APIRouter(include_in_schema=False)

AdminUser = require_roles(Role.ALLIANCE_ADMIN, Role.ORG_ADMIN)
PAGE_SIZE = 100
OUTCOMES = ("ok", "denied", "failed")
FORM_FIELDS = ("username", "patient_id", "action", "outcome", "date_from", "date_to")


def _form_values(request: Request) -> dict[str, str]:
    return {name: request.query_params.get(name, "").strip() for name in FORM_FIELDS}


def _local_day_start(value: str, field: str, errors: list[dict[str, Any]]) -> datetime | None:
    """A date typed in local time (Asia/Shanghai) as the UTC instant its day starts."""
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        errors.append(field_error(field, "YYYY-MM-DD"))
        return None
    return datetime.combine(day, time.min, tzinfo=LOCAL_TZ).astimezone(UTC)


def parse_query(values: dict[str, str], *, organisation_id: int | None) -> AuditQuery:
    """The search form as filters; raises InvalidInput naming each field that is wrong."""
    errors: list[dict[str, Any]] = []
    patient_id = None
    if values["patient_id"]:
        if values["patient_id"].isdigit():
            patient_id = int(values["patient_id"])
        else:
            errors.append(field_error("patient_id", "a whole number"))
    if values["outcome"] and values["outcome"] not in OUTCOMES:
        errors.append(field_error("outcome", " / ".join(OUTCOMES)))
    since = _local_day_start(values["date_from"], "date_from", errors)
    until_day = _local_day_start(values["date_to"], "date_to", errors)
    until = until_day + timedelta(days=1) if until_day else None  # the end date counts in full
    if since and until and since >= until:
        errors.append(field_error("date_to", "on or after the start date"))
    if errors:
        raise InvalidInput("查询条件有误 / invalid search", field_errors=errors)
    return AuditQuery(username=values["username"][:60] or None, patient_id=patient_id,
                      action=values["action"][:60] or None, outcome=values["outcome"] or None,
                      since=since, until=until, organisation_id=organisation_id)


def _organisation_names(db: DbSession, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    return dict(db.execute(select(Organisation.id, Organisation.name).where(Organisation.id.in_(ids))).all())


def _audit_page(request: Request, db: DbSession, actor: CurrentActor, admin: User,
                verify_result: dict[str, Any] | None = None) -> Response:
    values = _form_values(request)
    scope = service.read_scope(admin)
    raw_before = request.query_params.get("before_id", "")
    before_id = int(raw_before) if raw_before.isdigit() else None
    try:
        query = parse_query(values, organisation_id=scope)
    except InvalidInput as exc:
        return render(request, "audit/search.html", {
            "values": values, "events": [], "errors": {e["field"]: e["message"] for e in exc.field_errors},
            "message": exc.message, "scope": admin.organisation if scope else None,
            "can_verify": admin.role == Role.ALLIANCE_ADMIN, "verify": verify_result, "outcomes": OUTCOMES,
        }, status_code=exc.status_code)
    events = service.search(db, **query.filters(), limit=PAGE_SIZE, before_id=before_id)
    service.record(db, actor=actor, action="audit.read", purpose="audit",
                   detail={"filters": query.described(), "before_id": before_id, "rows": len(events)})
    filters_qs = urlencode({k: v for k, v in values.items() if v})
    older = None
    if len(events) == PAGE_SIZE:
        older = "/admin/audit?" + urlencode({**{k: v for k, v in values.items() if v}, "before_id": events[-1].id})
    return render(request, "audit/search.html", {
        "values": values, "events": events, "errors": {}, "message": None,
        "organisations": _organisation_names(db, {e.organisation_id for e in events if e.organisation_id}),
        "older": older, "newest": "/admin/audit" + (f"?{filters_qs}" if filters_qs else "") if before_id else None,
        "filters_qs": filters_qs, "scope": admin.organisation if scope else None,
        "can_verify": admin.role == Role.ALLIANCE_ADMIN, "verify": verify_result, "outcomes": OUTCOMES,
        "detail_text": export.detail_text, "mask": export.mask_ids, "max_rows": export.EXPORT_MAX_ROWS,
    })


@router.get("/admin/audit")
def audit_page(request: Request, db: DbSession, actor: CurrentActor, admin: User = AdminUser) -> Response:
    return _audit_page(request, db, actor, admin)


@router.post("/admin/audit/verify", dependencies=[CsrfChecked])
def verify_chain(request: Request, db: DbSession, actor: CurrentActor,
                 admin: User = require_roles(Role.ALLIANCE_ADMIN)) -> Response:
    checked, breaks = service.verify_chain(db)
    service.record(db, actor=actor, action="audit.verify", purpose="audit",
                   outcome="ok" if not breaks else "failed", detail={"checked": checked, "breaks": len(breaks)})
    return _audit_page(request, db, actor, admin, verify_result={"checked": checked, "breaks": breaks[:50],
                                                                 "total_breaks": len(breaks)})


def _export(request: Request, db: DbSession, actor: CurrentActor, admin: User, kind: str) -> Response:
    query = parse_query(_form_values(request), organisation_id=service.read_scope(admin))
    writer = export.write_csv if kind == "csv" else export.write_xlsx
    path, count = writer(db, query)
    try:
        service.record(db, actor=actor, action="audit.export", purpose="audit",
                       detail={"filters": query.described(), "format": kind, "rows": count,
                               "truncated": count >= export.EXPORT_MAX_ROWS})
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    stamp = datetime.now(LOCAL_TZ).strftime("%Y%m%d-%H%M")
    media = ("text/csv; charset=utf-8" if kind == "csv" else
             "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
    return FileResponse(path, media_type=media, filename=f"audit-{stamp}.{kind}",
                        headers={"X-Export-Rows": str(count)}, background=BackgroundTask(os.unlink, path))


@router.get("/admin/audit/export.csv")
def export_csv(request: Request, db: DbSession, actor: CurrentActor, admin: User = AdminUser) -> Response:
    return _export(request, db, actor, admin, "csv")


@router.get("/admin/audit/export.xlsx")
def export_xlsx(request: Request, db: DbSession, actor: CurrentActor, admin: User = AdminUser) -> Response:
    return _export(request, db, actor, admin, "xlsx")
