"""Break the glass (JSON): open time-limited access with a reason; admins review it afterwards."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from healthrelay.access import service
from healthrelay.access.models import BreakGlassGrant
from healthrelay.access.schemas import BreakGlassIn, BreakGlassListItem, BreakGlassOut, BreakGlassReviewIn
from healthrelay.accounts.models import Role, User
from healthrelay.core.deps import CurrentUser, DbSession, client_address, require_roles

router = APIRouter(tags=["access"])


def _list_item(grant: BreakGlassGrant) -> BreakGlassListItem:
    base = BreakGlassOut.model_validate(grant).model_dump()
    return BreakGlassListItem(**base, username=grant.user.username, user_display_name=grant.user.display_name,
                              organisation_id=grant.user.organisation_id)


@router.post("/patients/{patient_id}/break-glass", response_model=BreakGlassOut,
             status_code=status.HTTP_201_CREATED)
def break_glass(patient_id: int, body: BreakGlassIn, request: Request, db: DbSession,
                user: CurrentUser) -> BreakGlassGrant:
    return service.break_glass(db, user=user, patient_id=patient_id, reason=body.reason,
                               client_address=client_address(request))


@router.get("/access/break-glass", response_model=list[BreakGlassListItem])
def list_break_glass(db: DbSession, unreviewed: bool = True,
                     admin: User = require_roles(Role.ALLIANCE_ADMIN, Role.ORG_ADMIN)) -> list[BreakGlassListItem]:
    """Unreviewed grants (or, with unreviewed=false, those reviewed in the last 30 days), newest first."""
    organisation_id = service.review_scope(admin)
    if unreviewed:
        grants = service.list_unreviewed_break_glass(db, organisation_id=organisation_id)
    else:
        grants = service.list_recently_reviewed_break_glass(db, organisation_id=organisation_id)
    return [_list_item(g) for g in grants]


@router.post("/access/break-glass/{grant_id}/review", response_model=BreakGlassOut)
def review_break_glass(grant_id: int, body: BreakGlassReviewIn, request: Request, db: DbSession,
                       admin: User = require_roles(Role.ALLIANCE_ADMIN, Role.ORG_ADMIN)) -> BreakGlassGrant:
    return service.review_break_glass(db, grant_id=grant_id, reviewer=admin, outcome=body.outcome,
                                      note=body.note, client_address=client_address(request))
