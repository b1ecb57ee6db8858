"""Sign-in and sign-out pages (session cookie, CSRF-protected form) and user administration."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select

from healthrelay.accounts import service
from healthrelay.accounts.models import Role, User
from healthrelay.core.deps import CsrfChecked, DbSession, OptionalUser, client_address, require_roles
from healthrelay.core.errors import DomainError, InvalidInput, NotAuthenticated, TooManyAttempts, field_error
from healthrelay.directory.models import Organisation, Practitioner
from healthrelay.web.templating import render

router = APIRouter(include_in_schema=False)


def _safe_next(target: str | None) -> str:
    # Only local paths, so the login form cannot bounce a user to another site.
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return "/"


@router.get("/login")
def login_page(request: Request, user: OptionalUser, next: str = "/") -> Response:
    if user is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return render(request, "accounts/login.html", {"next": _safe_next(next)})


@router.post("/login", dependencies=[CsrfChecked])
def login_submit(request: Request, db: DbSession, username: Annotated[str, Form()] = "",
                 password: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/") -> Response:
    try:
        user = service.authenticate(db, username=username, password=password,
                                    client_address=client_address(request))
    except (NotAuthenticated, TooManyAttempts) as exc:
        response = render(request, "accounts/login.html",
                          {"next": _safe_next(next), "error": exc.message, "username": username},
                          status_code=exc.status_code)
        if isinstance(exc, TooManyAttempts):
            # Same header as the API's 429, so scripted clients and proxies know when to come back.
            response.headers["Retry-After"] = str(exc.retry_after_seconds)
        return response
    request.session.clear()
    # A fresh nonce on sign-in, so a CSRF token seen before login is worthless afterwards.
    request.session.update({"uid": user.id, "nonce": secrets.token_urlsafe(16)})
    return RedirectResponse(_safe_next(next), status_code=303)


@router.post("/logout", dependencies=[CsrfChecked])
def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


AdminUser = require_roles(Role.ALLIANCE_ADMIN, Role.ORG_ADMIN)
USER_FORM_FIELDS = ("username", "display_name", "role", "organisation_id", "practitioner_code", "patient_id")


def _roles_for(admin: User) -> list[Role]:
    if admin.role == Role.ALLIANCE_ADMIN:
        return list(Role)
    return [r for r in Role if r not in service.ALLIANCE_WIDE_ROLES]


def _organisations_for(db: DbSession, admin: User) -> list[tuple[int, str]]:
    q = select(Organisation.id, Organisation.name).order_by(Organisation.level, Organisation.name)
    if admin.role == Role.ORG_ADMIN:
        q = q.where(Organisation.id == admin.organisation_id)
    return [(row.id, row.name) for row in db.execute(q)]


def _users_page(request: Request, db: DbSession, admin: User, *, form: dict[str, str] | None = None,
                errors: dict[str, str] | None = None, message: str | None = None,
                status_code: int = 200) -> Response:
    q = request.query_params
    role_filter = q.get("role", "")
    org_filter = q.get("organisation_id", "")
    users = service.list_users(
        db, admin=admin, text=q.get("q", "")[:60], role=Role(role_filter) if role_filter in set(Role) else None,
        organisation_id=int(org_filter) if org_filter.isdigit() else None)
    organisations = _organisations_for(db, admin)
    return render(request, "accounts/users.html", {
        "users": users, "limit": 200, "roles": _roles_for(admin), "all_roles": list(Role),
        "organisations": organisations, "organisation_names": dict(organisations),
        "filters": {"q": q.get("q", ""), "role": role_filter, "organisation_id": org_filter},
        # Clinician preselected: the common case, and never an admin role by accident.
        "form": form or {"organisation_id": str(admin.organisation_id or ""), "role": Role.CLINICIAN.value},
        "errors": errors or {},
        "message": message, "created": q.get("created"), "is_org_admin": admin.role == Role.ORG_ADMIN,
    }, status_code=status_code)


@router.get("/admin/users")
def users_page(request: Request, db: DbSession, admin: User = AdminUser) -> Response:
    return _users_page(request, db, admin)


def _optional_int(value: str, field: str) -> int | None:
    value = value.strip()
    if not value:
        return None
    if not value.isdigit():
        raise InvalidInput("账号信息有误 / invalid account details",
                           field_errors=[field_error(field, "a whole number")])
    return int(value)


@router.post("/admin/users", dependencies=[CsrfChecked])
def create_user_submit(request: Request, db: DbSession, admin: User = AdminUser,
                       username: Annotated[str, Form()] = "", display_name: Annotated[str, Form()] = "",
                       password: Annotated[str, Form()] = "", role: Annotated[str, Form()] = "",
                       organisation_id: Annotated[str, Form()] = "", practitioner_code: Annotated[str, Form()] = "",
                       patient_id: Annotated[str, Form()] = "") -> Response:
    form = {"username": username, "display_name": display_name, "role": role, "organisation_id": organisation_id,
            "practitioner_code": practitioner_code, "patient_id": patient_id}
    try:
        if role not in set(Role):
            raise InvalidInput("请选择角色 / choose a role", field_errors=[field_error("role", "choose a role")])
        practitioner_id = None
        if practitioner_code.strip():
            practitioner_id = db.execute(select(Practitioner.id).where(
                Practitioner.code == practitioner_code.strip())).scalar()
            if practitioner_id is None:
                raise InvalidInput("没有该编码的医务人员 / no practitioner with that code",
                                   field_errors=[field_error("practitioner_code", "unknown practitioner code")])
        # create_user_as checks everything before it writes, so a refusal leaves nothing behind.
        user = service.create_user_as(
            db, admin=admin, username=username.strip(), password=password, display_name=display_name.strip(),
            role=Role(role), organisation_id=_optional_int(organisation_id, "organisation_id"),
            practitioner_id=practitioner_id, patient_id=_optional_int(patient_id, "patient_id"),
            client_address=client_address(request))
    except DomainError as exc:
        errors = {e["field"]: e["message"] for e in exc.field_errors}
        if "practitioner_id" in errors:
            errors["practitioner_code"] = errors.pop("practitioner_id")
        return _users_page(request, db, admin, form=form, errors=errors, message=exc.message,
                           status_code=exc.status_code)
    return RedirectResponse(f"/admin/users?created={user.username}", status_code=303)
