"""The inbox page, the admins' outbox page, and the live event stream (server-sent events)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy import select
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.core.config import get_settings
from healthrelay.core.db import get_sessionmaker
from healthrelay.core.deps import CsrfChecked, CurrentActor, CurrentUser, DbSession, require_roles
from healthrelay.notifications import live, service
from healthrelay.notifications.models import Notification
from healthrelay.patients.identity import mask_phone
from healthrelay.web.templating import render

log = logging.getLogger("healthrelay.live")
router = APIRouter(include_in_schema=False)

AdminUser = require_roles(Role.ALLIANCE_ADMIN, Role.ORG_ADMIN)
PAGE_SIZE = 50
# Keep-alive comments stop proxies from closing an idle stream.
PING_SECONDS = 15
# The browser waits this long before reconnecting; it then sends Last-Event-ID.
RETRY_MS = 3000
# A stream ends after this and the browser reconnects, so a disabled account loses its stream soon.
MAX_STREAM_SECONDS = 3600
REPLAY_MAX = 50
SEND_TIMEOUT_SECONDS = 30


# ---------------------------------------------------------------------------- inbox

@router.get("/inbox")
def inbox_page(request: Request, db: DbSession, user: CurrentUser,
               before: Annotated[int | None, Query(ge=1)] = None, unread: bool = False,
               marked: Annotated[int | None, Query(ge=0)] = None) -> Response:
    notes = service.inbox(db, user=user, unread_only=unread, limit=PAGE_SIZE + 1, before_id=before)
    more = len(notes) > PAGE_SIZE
    fragment = bool(request.headers.get("hx-request"))
    context = {"notes": notes[:PAGE_SIZE], "more": more, "before": before, "unread_only": unread,
               "unread": service.unread_count(db, user=user), "marked": marked,
               # A live refresh must not pull the keyboard focus away from where the user is.
               "autofocus": not fragment}
    # htmx refreshes just the list when a live event arrives.
    return render(request, "notifications/_inbox_list.html" if fragment else "notifications/inbox.html", context)


@router.post("/inbox/read-all", dependencies=[CsrfChecked])
def inbox_read_all(db: DbSession, user: CurrentUser) -> Response:
    marked = service.mark_all_read(db, user=user)
    return RedirectResponse(f"/inbox?marked={marked}", status_code=303)


@router.post("/inbox/{notification_id}/open", dependencies=[CsrfChecked])
def inbox_open(notification_id: int, db: DbSession, user: CurrentUser) -> Response:
    """Opening a message marks it read and follows its link (always a local path)."""
    note = service.mark_read(db, user=user, notification_id=notification_id)
    return RedirectResponse(note.link or f"/inbox#n{note.id}", status_code=303)


# ---------------------------------------------------------------------------- outbox

def masked_recipient(channel: str, recipient: str) -> str:
    if channel == "sms":
        return mask_phone(recipient)
    if channel == "wechat" and len(recipient) > 8:
        return f"{recipient[:4]}…{recipient[-4:]}"
    return recipient


@router.get("/admin/outbox")
def outbox_page(request: Request, db: DbSession, admin: User = AdminUser,
                status: Annotated[str, Query(max_length=20)] = "",
                channel: Annotated[str, Query(max_length=20)] = "",
                before: Annotated[int | None, Query(ge=1)] = None,
                released: Annotated[int | None, Query(ge=0)] = None) -> Response:
    rows = service.outbox(db, admin=admin, status=status or None, channel=channel or None, before_id=before,
                          limit=PAGE_SIZE + 1)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    return render(request, "notifications/outbox.html", {
        "rows": [(m, u, masked_recipient(m.channel, m.recipient)) for m, u in rows], "more": more,
        "status": status, "channel": channel, "statuses": service.STATUSES, "channels": service.CHANNELS,
        "scope_organisation": admin.organisation if service.outbox_scope(admin) else None,
        "released": released, "may_release": admin.role == Role.ALLIANCE_ADMIN,
    })


@router.post("/admin/outbox/release", dependencies=[CsrfChecked])
def outbox_release(db: DbSession, actor: CurrentActor, channel: Annotated[str, Form()] = "",
                   _admin: User = require_roles(Role.ALLIANCE_ADMIN)) -> Response:
    """Once a mail server or gateway is configured, the messages that waited for it go out."""
    released = service.release_held(db, channel=channel)
    audit.record(db, actor=actor, action="notifications.outbox.release", detail={"channel": channel,
                                                                                "released": released})
    return RedirectResponse(f"/admin/outbox?channel={channel}&released={released}", status_code=303)


# ---------------------------------------------------------------------------- live stream

@dataclass
class _Who:
    user_id: int
    topics: list[str]


@dataclass
class _Snapshot:
    unread: int
    max_id: int
    # The user's newest ids: events for these that were already queued when the snapshot was taken
    # are duplicates (the hello count includes them).
    recent_ids: set[int] = field(default_factory=set)
    missed: list[dict[str, Any]] = field(default_factory=list)


def _whoami(user_id: int) -> _Who | None:
    # Its own short session: a request-scoped one would hold a pooled connection for the whole stream.
    with get_sessionmaker()() as db:
        user = db.get(User, user_id)
        if user is None or not user.is_active:
            return None
        return _Who(user_id=user.id, topics=service.topics_for(user))


def _snapshot(user_id: int, after_id: int | None) -> _Snapshot:
    """The unread count, the newest ids, and (on reconnect) what arrived after `after_id`."""
    with get_sessionmaker()() as db:
        user = db.get(User, user_id)
        if user is None:
            return _Snapshot(unread=0, max_id=after_id or 0)
        newest = db.execute(select(Notification).where(Notification.user_id == user_id)
                            .order_by(Notification.id.desc()).limit(REPLAY_MAX)).scalars().all()
        missed = [service.live_event(n) | {"replay": True, "read": n.read_at is not None}
                  for n in reversed(newest) if after_id is not None and n.id > after_id]
        return _Snapshot(unread=service.unread_count(db, user=user), max_id=newest[0].id if newest else 0,
                         recent_ids={n.id for n in newest}, missed=missed)


def _message(event: dict[str, Any], topic: str, *, event_id: int | None = None,
             retry: int | None = None) -> ServerSentEvent:
    data = json.dumps({**event, "topic": topic}, ensure_ascii=False, default=str)
    return ServerSentEvent(data=data, id=str(event_id) if event_id is not None else None, retry=retry)


async def _events(who: _Who, after_id: int | None) -> AsyncIterator[ServerSentEvent]:
    """Hello (unread count), then what was missed since Last-Event-ID, then live events until the client leaves.

    Inbox items are told apart by id, not by order: two transactions may commit in the other order
    than they took their ids. The SSE id is the highest notification id sent, so a reconnect replays
    what came after it.
    """
    sub = live.bus.subscribe(who.topics)
    own = service.user_topic(who.user_id)
    try:
        # Listening before the snapshot, so nothing committed in between is lost (duplicates are skipped).
        if not await run_in_threadpool(live.ensure_listener, get_settings().database_url):
            log.warning("live listener not ready; the stream resyncs when it connects")
        snap = await run_in_threadpool(_snapshot, who.user_id, after_id)
        known, high = set(snap.recent_ids), max(snap.max_id, after_id or 0)
        yield _message({"type": "hello", "unread": snap.unread}, own,
                       event_id=None if snap.missed else high, retry=RETRY_MS)
        for event in snap.missed:
            yield _message(event, own, event_id=event["id"])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MAX_STREAM_SECONDS
        while not sub.overflowed:  # fallen behind: end, and the browser's reconnect replays the gap
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                topic, event = await sub.get(timeout=remaining)
            except TimeoutError:
                return
            kind = event.get("type")
            if kind == "notification":
                note_id = int(event.get("id", 0))
                if note_id in known:
                    continue
                known.add(note_id)
                high = max(high, note_id)
                yield _message(event, topic, event_id=high)
            elif kind == "resync":
                snap = await run_in_threadpool(_snapshot, who.user_id, high)
                yield _message({"type": "resync", "unread": snap.unread}, own)
                for missed in snap.missed:
                    if missed["id"] not in known:
                        known.add(missed["id"])
                        high = max(high, missed["id"])
                        yield _message(missed, own, event_id=high)
            else:
                yield _message(event, topic)
            if len(known) > 4 * REPLAY_MAX:  # only recent ids can still arrive twice
                known = set(sorted(known)[-REPLAY_MAX:])
    finally:
        live.bus.unsubscribe(sub)


@router.get("/notifications/stream")
async def stream(request: Request) -> Response:
    """Live events for the signed-in user (session cookie): their inbox and, for staff, their organisation."""
    user_id = request.session.get("uid")
    who = await run_in_threadpool(_whoami, int(user_id)) if user_id else None
    if who is None:
        # Not a redirect: EventSource cannot follow a login page, and any non-200 makes it stop retrying.
        return JSONResponse(status_code=401, content={"code": "not_authenticated", "field_errors": [],
                                                      "message": "请先登录 / please sign in"})
    # The browser's own reconnect sends the header; live.js says it in the URL after a fresh start.
    raw = (request.headers.get("last-event-id") or request.query_params.get("last_event_id") or "").strip()
    after_id = int(raw) if raw.isdigit() else None
    # A client that stops reading (a frozen tab) is cut off instead of holding the stream forever.
    return EventSourceResponse(_events(who, after_id), ping=PING_SECONDS, send_timeout=SEND_TIMEOUT_SECONDS)
