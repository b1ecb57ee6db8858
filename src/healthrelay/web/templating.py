"""One Jinja environment for every domain's pages, with the helpers the base layout needs."""

from __future__ import annotations

import secrets
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import HTMLResponse

from healthrelay.core.security import csrf_token_for
from healthrelay.web.i18n import pick_locale, translate
from healthrelay.web.navigation import current_entry, menu_for

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
_ROOT = Path(__file__).resolve().parent.parent

# Every domain keeps its templates in <domain>/templates/<domain>/...; the loader searches them all.
_template_dirs = [str(_ROOT / "web" / "templates")] + [
    str(p) for p in sorted(_ROOT.glob("*/templates")) if p.parent.name != "web"
]
templates = Jinja2Templates(directory=_template_dirs)


def local_time(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    if value is None:
        return ""
    return value.astimezone(LOCAL_TZ).strftime(fmt)


def iso_date(value: date | None) -> str:
    return value.isoformat() if value else ""


templates.env.filters["local"] = local_time
templates.env.filters["isodate"] = iso_date


def request_locale(request: Request) -> str:
    user = getattr(request.state, "user", None)
    return pick_locale(request.cookies.get("lang"), getattr(user, "locale", None),
                       request.headers.get("accept-language"))


def csrf_token(request: Request) -> str:
    if "session" not in request.scope:  # the 500 page renders outside the session middleware
        return ""
    nonce = request.session.get("nonce")
    if not nonce:
        nonce = request.session["nonce"] = secrets.token_urlsafe(16)
    return csrf_token_for(nonce)


def render(request: Request, name: str, context: dict[str, Any] | None = None, *,
           status_code: int = 200) -> HTMLResponse:
    locale = request_locale(request)
    user = getattr(request.state, "user", None)

    def t(key: str, **params: object) -> str:
        return translate(key, locale, **params)

    menu = menu_for(user)
    ctx: dict[str, Any] = {
        "user": user,
        "locale": locale,
        "t": t,
        "csrf_token": csrf_token(request),
        "menu": menu,
        "current_menu_path": current_entry(menu, request.url.path),
        "current_path": request.url.path,
    }
    ctx.update(context or {})
    return templates.TemplateResponse(request, name, ctx, status_code=status_code)
