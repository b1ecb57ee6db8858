"""Break the glass from the refusal page, and the admins' review of those accesses."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select

from healthrelay.access import service
from healthrelay.accounts.models import Role, User
from healthrelay.core.db import utcnow
from healthrelay.core.deps import CsrfChecked, CurrentUser, DbSession, client_address, require_roles
from healthrelay.core.errors import InvalidInput
from healthrelay.web.templating import render

router = APIRouter(include_in_schema=False)

AdminUser = require_roles(Role.ALLIANCE_ADMIN, Role.ORG_ADMIN)


@router.post("/patients/{patient_id}/break-glass", dependencies=[CsrfChecked])
def break_glass_submit(patient_id: int, request: Request, db: DbSession, user: CurrentUser,
                       reason: Annotated[str, Form()] = "") -> Response:
    try:
        grant = service.break_glass(db, user=user, patient_id=patient_id, reason=reason,
                                    client_address=client_address(request))
    except InvalidInput as exc:
        # The same refusal page again, with its break-glass form and what was wrong with the reason.
        error = exc.to_dict() | {"code": "no_care_relationship", "patient_id": patient_id}
        return render(request, "errors/error.html", {"status": exc.status_code, "error": error,
                                                     "reason": reason}, status_code=exc.status_code)
    return RedirectResponse(f"/patients/{grant.patient_id}", status_code=303)


@router.get("/admin/break-glass")
def review_page(request: Request, db: DbSession, admin: User = AdminUser, reviewed: int | None = None) -> Response:
    organisation_id = service.review_scope(admin)
    pending = service.list_unreviewed_break_glass(db, organisation_id=organisation_id)
    recent = service.list_recently_reviewed_break_glass(db, organisation_id=organisation_id)
    reviewer_ids = {g.reviewed_by_user_id for g in recent if g.reviewed_by_user_id}
    reviewers = dict(db.execute(select(User.id, User.display_name).where(User.id.in_(reviewer_ids))).all()
                     ) if reviewer_ids else {}
    return render(request, "access/break_glass_review.html", {
        "pending": pending, "recent": recent, "reviewers": reviewers, "now": utcnow(),
        "just_reviewed": reviewed, "scope_organisation": admin.organisation if organisation_id else None,
    })


@router.post("/admin/break-glass/{grant_id}/review", dependencies=[CsrfChecked])
def review_submit(grant_id: int, request: Request, db: DbSession, admin: User = AdminUser,
                  outcome: Annotated[str, Form()] = "", note: Annotated[str, Form()] = "") -> Response:
    service.review_break_glass(db, grant_id=grant_id, reviewer=admin, outcome=outcome, note=note,
                               client_address=client_address(request))
    return RedirectResponse(f"/admin/break-glass?reviewed={grant_id}", status_code=303)
