"""Admin pages of the HL7 interface: the senders registry (/admin/hl7), dead letters to inspect, replay or
discard (/admin/hl7/dead-letters) and recent messages with what they created (/admin/hl7/messages).

Org admins see their own organisation's senders and traffic, the alliance admin all of it. The dead-letter
list refreshes on live events (hr-live `hl7.dead_letter`) with a 30 s poll as fallback. Payloads are shown
as text through Jinja's escaping, never as markup.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.core.deps import CsrfChecked, DbSession, client_address, require_roles
from healthrelay.core.errors import DomainError, InvalidInput
from healthrelay.directory.models import Organisation
from healthrelay.hl7 import outbound_pages, service
from healthrelay.web.forms import FormProblems, messages_by_field, reraise_if_access
from healthrelay.web.templating import render

router = APIRouter(include_in_schema=False)
router.include_router(outbound_pages.router)

AdminUser = require_roles(Role.ALLIANCE_ADMIN, Role.ORG_ADMIN)
FormText = Annotated[str, Form()]
PAGE_SIZE = 50


def _organisations(db: Session, admin: User) -> list[Organisation]:
    scope = service.admin_scope(admin)
    query = select(Organisation).order_by(Organisation.name)
    if scope is not None:
        query = query.where(Organisation.id == scope)
    return list(db.scalars(query))


def _open_dead_letters(db: Session, admin: User) -> int:
    rows = service.list_dead_letters(db, admin=admin, state="open", limit=500)
    return len(rows)


def _senders_page(request: Request, db: Session, admin: User, *, form: dict[str, str] | None = None,
                  invalid: dict[str, str] | None = None, error: str = "", done: str = "",
                  status_code: int = 200) -> Response:
    senders = service.list_senders(db, admin=admin)
    orgs = {o.id: o for o in _organisations(db, admin)}
    names = {o.id: o.name for o in db.scalars(select(Organisation).where(
        Organisation.id.in_({s.organisation_id for s in senders})))}
    return render(request, "hl7/senders.html", {
        "senders": senders, "org_names": names, "organisations": list(orgs.values()),
        "form": form or {}, "invalid": invalid or {}, "error": error, "done": done,
        "open_dead_letters": _open_dead_letters(db, admin),
        "focus": next(iter(invalid or {}), "facility"),
    }, status_code=status_code)


@router.get("/admin/hl7")
def senders_page(request: Request, db: DbSession, admin: User = AdminUser,
                 done: Annotated[str, Query(max_length=20)] = "") -> Response:
    return _senders_page(request, db, admin, done=done)


@router.post("/admin/hl7/senders", dependencies=[CsrfChecked])
def add_sender(request: Request, db: DbSession, admin: User = AdminUser, facility: FormText = "",
               application: FormText = "", organisation_id: FormText = "", note: FormText = "") -> Response:
    form = {"facility": facility, "application": application, "organisation_id": organisation_id, "note": note}
    problems = FormProblems()
    org_id = problems.opt_int("organisation_id", organisation_id)
    if org_id is None and not problems.errors:
        problems.add("organisation_id", "必填 / required")
    try:
        problems.raise_if_any()
        service.register_sender(db, facility=facility, application=application, organisation_id=org_id or 0,
                                note=note, by=admin, client_address=client_address(request))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        return _senders_page(request, db, admin, form=form, invalid=messages_by_field(exc.field_errors),
                             error=exc.message, status_code=exc.status_code)
    return RedirectResponse("/admin/hl7?done=added", status_code=303)


@router.post("/admin/hl7/senders/{sender_id}/active", dependencies=[CsrfChecked])
def set_active(sender_id: int, request: Request, db: DbSession, admin: User = AdminUser,
               active: FormText = "") -> Response:
    if active not in ("0", "1"):
        raise InvalidInput("active 须为 0 或 1 / active must be 0 or 1")
    service.set_sender_active(db, sender_id=sender_id, active=active == "1", by=admin,
                              client_address=client_address(request))
    return RedirectResponse(f"/admin/hl7?done={'enabled' if active == '1' else 'disabled'}", status_code=303)


# --- dead letters ------------------------------------------------------------------------------------

def _dead_letter_context(db: Session, admin: User, state: str, before: int | None) -> dict[str, Any]:
    rows = service.list_dead_letters(db, admin=admin, state=state, limit=PAGE_SIZE + 1, before_id=before)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    handlers = {u.id: u.display_name for u in db.scalars(select(User).where(
        User.id.in_({r.handled_by_user_id for r in rows if r.handled_by_user_id})))}
    return {"rows": [(r, service.decoded_text(r)) for r in rows], "more": more, "state": state,
            "states": service.DEAD_LETTER_STATES, "handlers": handlers, "before": before}


@router.get("/admin/hl7/dead-letters")
def dead_letters_page(request: Request, db: DbSession, admin: User = AdminUser,
                      state: Annotated[str, Query(max_length=12)] = "open",
                      before: Annotated[int | None, Query(ge=1)] = None,
                      done: Annotated[str, Query(max_length=20)] = "",
                      id: Annotated[int | None, Query(ge=1)] = None) -> Response:  # noqa: A002 - the query name
    context = _dead_letter_context(db, admin, state, before)
    if request.headers.get("hx-request"):
        return render(request, "hl7/_dead_letter_rows.html", context)
    return render(request, "hl7/dead_letters.html", {**context, "done": done, "done_id": id, "error": "",
                                                     "error_id": None})


@router.post("/admin/hl7/dead-letters/{dead_letter_id}/replay", dependencies=[CsrfChecked])
def replay(dead_letter_id: int, request: Request, db: DbSession, admin: User = AdminUser) -> Response:
    try:
        message = service.replay(db, dead_letter_id=dead_letter_id, by=admin, client_address=client_address(request))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        context = _dead_letter_context(db, admin, "open", None)
        return render(request, "hl7/dead_letters.html", {**context, "done": "", "done_id": None,
                                                         "error": exc.message, "error_id": dead_letter_id},
                      status_code=exc.status_code)
    return RedirectResponse(f"/admin/hl7/dead-letters?done=replayed&id={message.id}", status_code=303)


@router.post("/admin/hl7/dead-letters/{dead_letter_id}/discard", dependencies=[CsrfChecked])
def discard(dead_letter_id: int, request: Request, db: DbSession, admin: User = AdminUser,
            note: FormText = "") -> Response:
    try:
        service.discard(db, dead_letter_id=dead_letter_id, by=admin, note=note,
                        client_address=client_address(request))
    except DomainError as exc:
        reraise_if_access(exc)
        db.rollback()
        context = _dead_letter_context(db, admin, "open", None)
        return render(request, "hl7/dead_letters.html", {**context, "done": "", "done_id": None,
                                                         "error": exc.message, "error_id": dead_letter_id},
                      status_code=exc.status_code)
    return RedirectResponse(f"/admin/hl7/dead-letters?done=discarded&id={dead_letter_id}", status_code=303)


# --- messages --------------------------------------------------------------------------------------------

@router.get("/admin/hl7/messages")
def messages_page(request: Request, db: DbSession, admin: User = AdminUser,
                  before: Annotated[int | None, Query(ge=1)] = None,
                  message_type: Annotated[str, Query(max_length=20)] = "") -> Response:
    rows = service.list_messages(db, admin=admin, limit=PAGE_SIZE + 1, before_id=before, message_type=message_type)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    context = {"rows": [(m, s, _ack_text(m)) for m, s in rows], "more": more, "message_type": message_type,
               "types": sorted(_known_types()), "before": before}
    if request.headers.get("hx-request"):
        return render(request, "hl7/_message_rows.html", context)
    return render(request, "hl7/messages.html", context)


def _known_types() -> set[str]:
    try:
        from healthrelay.hl7.mapping import SUPPORTED_TYPES
    except ImportError:  # the mapping is not there yet: the filter offers the types the brief names
        return {"ADT^A01", "ADT^A04", "ADT^A08", "ORU^R01", "ORM^O01", "OML^O21"}
    return set(SUPPORTED_TYPES)


def _ack_text(message: Any) -> str:
    """MSA-3 of the ACK we answered (empty for AA)."""
    charset = service.resolve_charset(message.charset or "")
    try:
        return service.ack_fields(message.ack_text.encode(charset[1] if charset else "utf-8"),
                                  charset[1] if charset else "utf-8")["text"] if message.ack_text else ""
    except Exception:  # noqa: BLE001 - a display nicety only
        return ""

