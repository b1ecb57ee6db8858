"""Sign-in and sign-out pages (session cookie, CSRF-protected form)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from healthrelay.accounts import service
from healthrelay.core.deps import CsrfChecked, DbSession, OptionalUser, client_address
from healthrelay.core.errors import NotAuthenticated, TooManyAttempts
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
        return render(request, "accounts/login.html",
                      {"next": _safe_next(next), "error": exc.message, "username": username},
                      status_code=exc.status_code)
    request.session.clear()
    # A fresh nonce on sign-in, so a CSRF token seen before login is worthless afterwards.
    request.session.update({"uid": user.id, "nonce": secrets.token_urlsafe(16)})
    return RedirectResponse(_safe_next(next), status_code=303)


@router.post("/logout", dependencies=[CsrfChecked])
def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/login", status_code=303)
