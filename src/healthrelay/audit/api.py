"""Searching and verifying the audit trail (JSON); every search is itself audited."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from healthrelay.accounts.models import Role, User
from healthrelay.audit import service
from healthrelay.audit.export import mask_ids
from healthrelay.audit.schemas import AuditEventOut, AuditPage, AuditQuery, ChainBreakOut, Outcome, VerifyOut
from healthrelay.core.deps import CurrentActor, DbSession, require_roles

router = APIRouter(tags=["audit"])


@router.get("/audit/events", response_model=AuditPage)
def list_events(
    db: DbSession, actor: CurrentActor,
    admin: User = require_roles(Role.ALLIANCE_ADMIN, Role.ORG_ADMIN),
    user: Annotated[int | None, Query(description="user id")] = None,
    username: Annotated[str | None, Query(max_length=60)] = None,
    patient_id: int | None = None,
    action: Annotated[str | None, Query(max_length=60, description="action prefix, e.g. patient.")] = None,
    outcome: Outcome | None = None,
    since: Annotated[datetime | None, Query(description="inclusive; UTC unless a zone is given")] = None,
    until: Annotated[datetime | None, Query(description="exclusive; UTC unless a zone is given")] = None,
    before_id: Annotated[int | None, Query(description="keyset paging: next_before_id of the last page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditPage:
    """Newest first. Alliance admins see every event; organisation admins their organisation's."""
    query = AuditQuery(user_id=user, username=username, patient_id=patient_id, action=action, outcome=outcome,
                       since=since, until=until, organisation_id=service.read_scope(admin))
    events = service.search(db, **query.filters(), limit=limit, before_id=before_id)
    service.record(db, actor=actor, action="audit.read", purpose="audit",
                   detail={"filters": query.described(), "before_id": before_id, "rows": len(events), "via": "api"})
    out = []
    for event in events:
        item = AuditEventOut.model_validate(event)
        out.append(item.model_copy(update={"detail": mask_ids(item.detail), "resource": mask_ids(item.resource)}))
    return AuditPage(events=out, next_before_id=events[-1].id if len(events) == limit else None)


@router.get("/audit/verify", response_model=VerifyOut)
def verify(db: DbSession, actor: CurrentActor, _admin: User = require_roles(Role.ALLIANCE_ADMIN)) -> VerifyOut:
    """Recompute the whole hash chain (the same check as `healthrelay audit verify`)."""
    checked, breaks = service.verify_chain(db)
    service.record(db, actor=actor, action="audit.verify", purpose="audit",
                   outcome="ok" if not breaks else "failed", detail={"checked": checked, "breaks": len(breaks)})
    return VerifyOut(checked=checked, breaks=[ChainBreakOut(event_id=b.event_id, problem=b.problem) for b in breaks])
