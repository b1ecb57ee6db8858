"""The web application: one FastAPI app serving the JSON API, the pages and the static assets."""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from healthrelay import __version__
from healthrelay.core import logmask
from healthrelay.core.config import get_settings
from healthrelay.core.db import get_engine
from healthrelay.core.errors import DomainError, NeedToKnowDenied, NotAuthenticated, TooManyAttempts

log = logging.getLogger("healthrelay")

# Each domain exposes `router` in api.py (mounted under /api/v1) and/or pages.py (mounted at /).
DOMAINS = ("accounts", "access", "audit", "directory", "patients", "referrals", "notifications", "teleconsult",
           "imaging", "ecg", "geo", "emergency", "pathways", "results", "recognition", "hl7", "chronic",
           "screening", "outreach", "web")


# Requests that carry files get the attachment limit instead of the general body limit.
UPLOAD_PATHS = re.compile(r"(/attachments|^/referrals/new|^/ecg/upload|^/api/v1/ecg/recordings)/?$")
# DICOMweb STOW-RS uploads whole series.
STOW_PATHS = re.compile(r"^/dicomweb/studies(/[0-9.]+)?/?$")

VENDOR_ASSETS = {"htmx": "htmx.org/dist", "echarts": "echarts/dist"}


class BodySizeLimit:
    """Refuse oversized bodies before reading them, whether Content-Length is sent or not.

    File uploads (UPLOAD_PATHS) may be larger: up to `upload_max_bytes`.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, upload_max_bytes: int, stow_max_bytes: int) -> None:
        self.app = app
        self.default_max_bytes = max_bytes
        self.upload_max_bytes = upload_max_bytes
        self.stow_max_bytes = stow_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit = (self.stow_max_bytes if STOW_PATHS.match(path) else
                 self.upload_max_bytes if UPLOAD_PATHS.search(path) else self.default_max_bytes)
        headers = dict(scope["headers"])
        wants_html = b"text/html" in headers.get(b"accept", b"")
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(limit, wants_html)(scope, receive, send)
            return
        seen = 0

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _BodyTooLarge:
            await _too_large(limit, wants_html)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int, wants_html: bool = False) -> Response:
    message = f"请求体超过 {limit // 1024} KB 上限 / request body exceeds the {limit // 1024} KB limit"
    if wants_html:
        # Before the session is read, so a plain page rather than the full layout.
        return HTMLResponse(status_code=413, content=(
            '<!doctype html><html lang="zh-CN"><meta charset="utf-8"><title>413</title>'
            f'<main style="font-family:sans-serif;margin:2em"><h1>文件太大 / Too large</h1><p>{message}</p>'
            '<p><a href="javascript:history.back()">返回 / Back</a></p></main></html>'))
    return JSONResponse(status_code=413, content={"code": "body_too_large", "message": message, "field_errors": []})


def _wants_html(request: Request) -> bool:
    path = request.url.path
    if path.startswith(("/api/", "/healthz", "/openapi", "/dicomweb/")):
        return False
    return "text/html" in request.headers.get("accept", "") or request.method == "GET"


def _error_response(request: Request, status: int, body: dict[str, Any],
                    headers: dict[str, str] | None = None) -> Response:
    if _wants_html(request):
        from healthrelay.web.templating import render

        return render(request, "errors/error.html", {"status": status, "error": body},
                      status_code=status)
    return JSONResponse(status_code=status, content=body, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain_error(request: Request, exc: DomainError) -> Response:
        if isinstance(exc, NotAuthenticated) and _wants_html(request):
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        body = exc.to_dict()
        headers = None
        if isinstance(exc, NeedToKnowDenied):
            body["patient_id"] = exc.patient_id
        if isinstance(exc, TooManyAttempts):
            headers = {"Retry-After": str(exc.retry_after_seconds)}
        if isinstance(exc, NotAuthenticated):
            headers = {"WWW-Authenticate": "Bearer"}
        return _error_response(request, exc.status_code, body, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        field_errors = []
        malformed = any(e.get("type") == "json_invalid" for e in exc.errors())
        for err in ([] if malformed else exc.errors()):
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "form")]
            field_errors.append({"field": ".".join(loc) or "body", "message": err.get("msg", "invalid")})
        body = {
            "code": "malformed_json" if malformed else "invalid_input",
            "message": ("请求体不是合法的 JSON / request body is not valid JSON" if malformed else
                        "输入有误：" + "; ".join(f"{f['field']}: {f['message']}" for f in field_errors)),
            "field_errors": field_errors or [{"field": "body", "message": "malformed JSON"}],
        }
        return _error_response(request, 422, body)

    @app.exception_handler(IntegrityError)
    async def _integrity_error(request: Request, exc: IntegrityError) -> Response:
        # Services check first; this only catches two requests racing for the same unique value.
        # Only the constraint's name: the driver's message quotes the clashing value (an ID number, say).
        constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None) or type(exc.orig).__name__
        log.warning("integrity error on %s %s: %s", request.method, request.url.path, constraint)
        body = {"code": "conflict", "message": "与已有数据冲突（可能有人同时提交了相同内容），请刷新后重试 / "
                "conflicts with existing data (perhaps submitted twice at once); reload and try again",
                "field_errors": []}
        return _error_response(request, 409, body)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        messages = {404: "找不到该页面或资源 / not found", 405: "不支持该请求方法 / method not allowed"}
        body = {"code": {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error"),
                "message": messages.get(exc.status_code, str(exc.detail)), "field_errors": []}
        return _error_response(request, exc.status_code, body)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        body = {"code": "internal_error",
                "message": "系统出错，已记录；请稍后重试 / something went wrong; it was logged",
                "field_errors": []}
        return _error_response(request, 500, body)


def create_app() -> FastAPI:
    settings = get_settings()
    logmask.install()
    app = FastAPI(title="HealthRelay 健康接力", version=__version__, openapi_url="/openapi.json",
                  docs_url="/api/docs", redoc_url=None)
    install_error_handlers(app)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok", "database": get_engine().dialect.name, "version": __version__}

    for domain in DOMAINS:
        for layer, prefix in (("api", "/api/v1"), ("pages", "")):
            try:
                module = importlib.import_module(f"healthrelay.{domain}.{layer}")
            except ModuleNotFoundError as exc:
                if exc.name != f"healthrelay.{domain}.{layer}":
                    raise
                continue
            app.include_router(module.router, prefix=prefix)

    # DICOMweb (STOW-RS, QIDO-RS, WADO-RS) where viewers such as OHIF or Weasis expect it.
    from healthrelay.imaging.dicomweb import router as dicomweb_router

    app.include_router(dicomweb_router, prefix="/dicomweb")

    static_dir = Path(__file__).parent / "web" / "static"
    app.mount("/static", StaticFiles(directory=static_dir), name="static")
    # Only the built files of the npm packages we use, never the whole node_modules.
    for url_name, package_dist in VENDOR_ASSETS.items():
        folder = settings.assets_dir.resolve() / package_dist
        if folder.is_dir():
            app.mount(f"/vendor/{url_name}", StaticFiles(directory=folder), name=f"vendor-{url_name}")
        else:
            log.warning("front-end assets not found at %s; run `npm ci`", folder)

    app.add_middleware(SessionMiddleware, secret_key=settings.secret_key, session_cookie="hr_session",
                       max_age=settings.session_max_age_seconds, same_site="lax",
                       https_only=settings.cookie_secure)
    # Multipart framing around an attachment adds a little; the service checks the file's own size.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes,
                       upload_max_bytes=max(settings.max_body_bytes, settings.attachment_max_bytes + 64 * 1024),
                       stow_max_bytes=settings.stow_max_bytes)
    return app
