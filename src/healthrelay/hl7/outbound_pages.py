"""The admins' page of outbound HL7 messages (/admin/hl7/outbound): what went back to members' systems, what is
still trying, what failed and why, with a "retry now" button. Thin: the rules live in hl7/outbound.py.

Its own router; the app includes it beside hl7/pages.py.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response

from healthrelay.accounts.models import Role, User
from healthrelay.core.deps import CsrfChecked, DbSession, client_address, require_roles
from healthrelay.hl7 import outbound
from healthrelay.web.templating import render

router = APIRouter(include_in_schema=False)

AdminUser = require_roles(Role.ALLIANCE_ADMIN, Role.ORG_ADMIN)


@router.get("/admin/hl7/outbound")
def outbound_page(request: Request, db: DbSession, admin: User = AdminUser,
                  state: Annotated[str, Query(max_length=12)] = "",
                  retried: Annotated[int | None, Query(ge=1)] = None) -> Response:
    """Newest first; failed rows in red with the last answer or error; no message content (patient data)."""
    rows = outbound.outbound_list(db, user=admin, state=state.strip())
    return render(request, "hl7/outbound.html", {
        "rows": rows, "state": state.strip(), "states": outbound.STATES, "retried": retried,
        "max_attempts": outbound.MAX_ATTEMPTS})


@router.post("/admin/hl7/outbound/{outbound_id:int}/retry", dependencies=[CsrfChecked])
def retry(request: Request, db: DbSession, outbound_id: int, admin: User = AdminUser) -> Response:
    row = outbound.retry_now(db, outbound_id=outbound_id, by=admin, client_address=client_address(request))
    return RedirectResponse(f"/admin/hl7/outbound?retried={row.id}", status_code=303)
