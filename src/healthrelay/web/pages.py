"""The home page and the language switch."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from healthrelay.core.deps import CurrentUser
from healthrelay.core.errors import NotFound
from healthrelay.web.i18n import SUPPORTED
from healthrelay.web.templating import render

router = APIRouter(include_in_schema=False)


@router.get("/")
def home(request: Request, user: CurrentUser) -> Response:
    return render(request, "home.html")


@router.get("/me")
def my_record(user: CurrentUser) -> Response:
    """A resident's own record; staff have no record of their own here."""
    if user.patient_id is None:
        raise NotFound("该账号没有关联的居民档案 / this account is not linked to a patient record")
    return RedirectResponse(f"/patients/{user.patient_id}", status_code=303)


@router.get("/lang/{code}")
def switch_language(code: str, next: str = "/") -> Response:
    target = next if next.startswith("/") and not next.startswith("//") else "/"
    response = RedirectResponse(target, status_code=303)
    if code in SUPPORTED:
        response.set_cookie("lang", code, max_age=365 * 24 * 3600, samesite="lax")
    return response
