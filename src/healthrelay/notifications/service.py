"""Notifications: inbox rows, outbound messages and live events, all in the caller's transaction.

Other domains call `send` (tell people) and `publish` (tell open pages something changed). Nothing
leaves the process before the transaction commits: live events ride on the commit (see live.py)
and outbound messages are delivered afterwards by durable timers (see flows.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.core import timers
from healthrelay.core.db import utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NotFound, field_error
from healthrelay.core.logmask import mask_text
from healthrelay.notifications import channels, live
from healthrelay.notifications.models import Notification, OutboundMessage

log = logging.getLogger("healthrelay.notifications")

DELIVER_KIND = "notifications.deliver"
# The badge shows "99+" long before this; the cap keeps the count an index range scan, never a full one.
UNREAD_CAP = 1000
TITLE_MAX = 200
LIVE_BODY_MAX = 300
SMS_MAX = 140
SIGNATURE = "健康接力 HealthRelay"

QUEUED, SENT, FAILED, HELD = "queued", "sent", "failed", "held"
STATUSES = (QUEUED, SENT, FAILED, HELD)
CHANNELS = ("email", "sms", "wechat")


def user_topic(user_id: int) -> str:
    return f"user:{user_id}"


def org_topic(organisation_id: int) -> str:
    return f"org:{organisation_id}"


def topics_for(user: User) -> list[str]:
    """What a user's open pages listen to: their own inbox, and for staff their organisation's boards."""
    topics = [user_topic(user.id)]
    if user.role != Role.PATIENT and user.organisation_id is not None:
        topics.append(org_topic(user.organisation_id))
    return topics


# ---------------------------------------------------------------------------- sending

def _clean_text(value: str, *, kind: str, field: str) -> str:
    """Resident ID and mobile numbers never travel in a notification: masked, and the slip is logged."""
    masked = mask_text(value)
    if masked != value:
        log.warning("notification %s: a full ID or mobile number in %s was masked; callers must mask", kind, field)
    return masked


def _check_link(link: str) -> str:
    link = link.strip()
    # Only local paths: the inbox follows the link, so it must not lead to another site.
    if link and (not link.startswith("/") or link.startswith("//") or len(link) > 300):
        raise InvalidInput("通知链接必须是本站路径 / a notification link must be a local path",
                           field_errors=[field_error("link", "local path such as /referrals/12")])
    return link


def send(db: Session, *, user_ids: Iterable[int], kind: str, title: str, body: str = "",
         link: str = "", resource: str = "", urgent: bool = False) -> list[Notification]:
    """One inbox row per active user, outbound rows per address, and a live push; all after commit."""
    kind = kind.strip()
    title = " ".join(title.split())
    errors = []
    if not kind or len(kind) > 60:
        errors.append(field_error("kind", "1-60 characters"))
    if not title:
        errors.append(field_error("title", "required"))
    if len(resource) > 80:
        errors.append(field_error("resource", "at most 80 characters"))
    if errors:
        raise InvalidInput("通知内容不完整 / the notification is incomplete", field_errors=errors)
    link = _check_link(link)
    title = _clean_text(title, kind=kind, field="title")
    if len(title) > TITLE_MAX:
        title = title[:TITLE_MAX - 1] + "…"
    body = _clean_text(body.strip(), kind=kind, field="body")

    wanted = list(dict.fromkeys(int(i) for i in user_ids))
    if not wanted:
        return []
    users = db.execute(select(User).where(User.id.in_(wanted), User.is_active.is_(True))
                       .order_by(User.id)).scalars().all()
    created: list[Notification] = []
    for user in users:
        note = Notification(user_id=user.id, kind=kind, title=title, body=body, link=link, resource=resource,
                            urgent=urgent, created_at=utcnow())
        db.add(note)
        db.flush()
        for message in _outbound_for(user, note):
            db.add(message)
            db.flush()
            if message.status == QUEUED:
                schedule_delivery(db, message, attempt=1)
        publish(db, topic=user_topic(user.id), event=live_event(note))
        created.append(note)
    return created


def live_event(note: Notification) -> dict[str, Any]:
    return {"type": "notification", "id": note.id, "kind": note.kind, "title": note.title,
            "body": note.body[:LIVE_BODY_MAX], "link": note.link, "resource": note.resource,
            "urgent": note.urgent, "created_at": note.created_at.isoformat()}


def _outbound_for(user: User, note: Notification) -> list[OutboundMessage]:
    """Email whenever the user has an address; SMS and WeChat only for urgent news."""
    wanted: list[tuple[str, str, str, str]] = []
    footer = f"\n\n{note.link}" if note.link else ""
    if user.email:
        subject = f"【健康接力】{note.title}"[:TITLE_MAX]
        text = "\n\n".join(p for p in (note.title, note.body) if p)
        wanted.append(("email", user.email, subject,
                       f"{text}{footer}\n\n—— {SIGNATURE}（系统自动发送，请勿回复 / automatic message, do not reply）"))
    if note.urgent and user.mobile:
        sms = f"【健康接力】{note.title}" + (f"：{note.body}" if note.body else "")
        wanted.append(("sms", user.mobile, "", sms if len(sms) <= SMS_MAX else sms[:SMS_MAX - 1] + "…"))
    if note.urgent and user.wechat_openid:
        wanted.append(("wechat", user.wechat_openid, note.title, note.body[:500]))
    messages = []
    for channel_name, recipient, subject, text in wanted:
        channel = channels.get(channel_name)
        held = not channel.configured()
        messages.append(OutboundMessage(
            notification_id=note.id, channel=channel_name, recipient=recipient, subject=subject, body=text,
            status=HELD if held else QUEUED, attempts=0, created_at=utcnow(),
            last_error=f"{channel_name} 未配置发送通道 / no {channel_name} gateway configured" if held else ""))
    return messages


def schedule_delivery(db: Session, message: OutboundMessage, *, attempt: int, delay_seconds: float = 0) -> None:
    """One durable timer per delivery attempt; the key makes scheduling the same attempt twice a no-op."""
    timers.schedule(db, kind=DELIVER_KIND, due_at=utcnow() + timedelta(seconds=delay_seconds),
                    payload={"message_id": message.id}, dedupe_key=f"outbound:{message.id}:{attempt}")


def release_held(db: Session, *, channel: str) -> int:
    """Queue the held messages of a channel again, once its server or gateway adapter is configured."""
    if channel not in CHANNELS:
        raise InvalidInput("未知渠道 / unknown channel", field_errors=[field_error("channel", "|".join(CHANNELS))])
    if not channels.get(channel).configured():
        raise Conflict(f"{channel} 发送通道仍未配置，消息继续保存在发件箱 / the {channel} channel is still not "
                       "configured; its messages stay in the outbox")
    rows = db.execute(select(OutboundMessage).where(OutboundMessage.status == HELD,
                                                    OutboundMessage.channel == channel)).scalars().all()
    for message in rows:
        message.status = QUEUED
        message.last_error = ""
        db.flush()
        schedule_delivery(db, message, attempt=message.attempts + 1)
    return len(rows)


def publish(db: Session, *, topic: str, event: dict[str, Any]) -> None:
    """Live push only (no inbox row), delivered after commit, e.g. ("org:3", {"type": "referral.changed"})."""
    if not isinstance(event.get("type"), str):
        raise ValueError("a live event needs a string 'type'")
    live.publish(db, topic=topic, event=event)


# ---------------------------------------------------------------------------- the inbox

def inbox(db: Session, *, user: User, unread_only: bool = False, limit: int = 50,
          before_id: int | None = None) -> list[Notification]:
    """Newest first; `before_id` pages back through older ones."""
    query = select(Notification).where(Notification.user_id == user.id)
    if unread_only:
        query = query.where(Notification.read_at.is_(None))
    if before_id is not None:
        query = query.where(Notification.id < before_id)
    return list(db.execute(query.order_by(Notification.id.desc()).limit(max(1, min(limit, 500)))).scalars())


def unread_count(db: Session, *, user: User) -> int:
    capped = (select(Notification.id).where(Notification.user_id == user.id, Notification.read_at.is_(None))
              .limit(UNREAD_CAP).subquery())
    return int(db.execute(select(func.count()).select_from(capped)).scalar_one())


def get_for(db: Session, *, user: User, notification_id: int) -> Notification:
    note = db.get(Notification, notification_id)
    # Someone else's notification answers exactly like a missing one: its existence is not ours to know.
    if note is None or note.user_id != user.id:
        raise NotFound("找不到该消息 / notification not found")
    return note


def mark_read(db: Session, *, user: User, notification_id: int) -> Notification:
    note = get_for(db, user=user, notification_id=notification_id)
    if note.read_at is None:
        note.read_at = utcnow()
        db.flush()
        _tell_other_tabs(db, user)
    return note


def mark_all_read(db: Session, *, user: User) -> int:
    result = db.execute(update(Notification)
                        .where(Notification.user_id == user.id, Notification.read_at.is_(None))
                        .values(read_at=utcnow()).execution_options(synchronize_session=False))
    marked = int(result.rowcount or 0)
    if marked:
        _tell_other_tabs(db, user)
    return marked


def _tell_other_tabs(db: Session, user: User) -> None:
    """Every open page of this user updates its badge."""
    publish(db, topic=user_topic(user.id), event={"type": "inbox.read", "unread": unread_count(db, user=user)})


# ---------------------------------------------------------------------------- the outbox (admins)

def outbox_scope(admin: User) -> int | None:
    """The organisation whose users' messages an admin sees: None means all of them."""
    if admin.role == Role.ALLIANCE_ADMIN:
        return None
    if admin.role == Role.ORG_ADMIN and admin.organisation_id is not None:
        return admin.organisation_id
    raise AccessDenied("只有管理员可以查看发件箱 / only administrators see the outbox")


def outbox(db: Session, *, admin: User, status: str | None = None, channel: str | None = None,
           before_id: int | None = None, limit: int = 100) -> list[tuple[OutboundMessage, User | None]]:
    organisation_id = outbox_scope(admin)
    if status and status not in STATUSES:
        raise InvalidInput("未知状态 / unknown status", field_errors=[field_error("status", "|".join(STATUSES))])
    if channel and channel not in CHANNELS:
        raise InvalidInput("未知渠道 / unknown channel", field_errors=[field_error("channel", "|".join(CHANNELS))])
    query = (select(OutboundMessage, User)
             .outerjoin(Notification, Notification.id == OutboundMessage.notification_id)
             .outerjoin(User, User.id == Notification.user_id))
    if organisation_id is not None:
        query = query.where(User.organisation_id == organisation_id)
    if status:
        query = query.where(OutboundMessage.status == status)
    if channel:
        query = query.where(OutboundMessage.channel == channel)
    if before_id is not None:
        query = query.where(OutboundMessage.id < before_id)
    rows = db.execute(query.order_by(OutboundMessage.id.desc()).limit(max(1, min(limit, 500)))).all()
    return [(message, user) for message, user in rows]
