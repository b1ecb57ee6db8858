"""JSON API of the inbox (mounted under /api/v1). Thin: the rules live in service.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from healthrelay.core.deps import CurrentUser, DbSession
from healthrelay.notifications import service
from healthrelay.notifications.schemas import MarkedOut, NotificationOut, UnreadCountOut

router = APIRouter(prefix="/notifications", tags=["notifications"])


@router.get("", response_model=list[NotificationOut])
def list_notifications(db: DbSession, user: CurrentUser, unread: bool = False,
                       before_id: Annotated[int | None, Query(description="keyset paging: the last id seen")] = None,
                       limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[NotificationOut]:
    """The caller's own notifications, newest first."""
    rows = service.inbox(db, user=user, unread_only=unread, limit=limit, before_id=before_id)
    return [NotificationOut.model_validate(n) for n in rows]


@router.get("/unread-count", response_model=UnreadCountOut)
def unread_count(db: DbSession, user: CurrentUser) -> UnreadCountOut:
    return UnreadCountOut(unread=service.unread_count(db, user=user))


@router.post("/read-all", response_model=MarkedOut)
def read_all(db: DbSession, user: CurrentUser) -> MarkedOut:
    return MarkedOut(marked=service.mark_all_read(db, user=user))


@router.get("/{notification_id}", response_model=NotificationOut)
def get(notification_id: int, db: DbSession, user: CurrentUser) -> NotificationOut:
    """One notification in full (a live event too large for the wire carries only its id)."""
    return NotificationOut.model_validate(service.get_for(db, user=user, notification_id=notification_id))


@router.post("/{notification_id}/read", response_model=NotificationOut)
def read(notification_id: int, db: DbSession, user: CurrentUser) -> NotificationOut:
    return NotificationOut.model_validate(service.mark_read(db, user=user, notification_id=notification_id))
