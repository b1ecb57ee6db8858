"""After commit: deliver each outbound message on its own durable timer, retrying with backoff."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.core import timers
from healthrelay.core.db import utcnow
from healthrelay.notifications import channels, service
from healthrelay.notifications.models import OutboundMessage

log = logging.getLogger("healthrelay.notifications")

MAX_SEND_ATTEMPTS = 5


def retry_delay_seconds(attempts: int) -> float:
    """30 s, 2 min, 8 min, 32 min: a mail server's hiccup passes, a long outage is not hammered."""
    return min(30.0 * 4 ** (attempts - 1), 3600.0)


@timers.handler(service.DELIVER_KIND)
def deliver(db: Session, payload: dict[str, Any]) -> None:
    """Send one message once: only a `queued` row is sent, and it is marked sent in this transaction."""
    query = select(OutboundMessage).where(OutboundMessage.id == int(payload["message_id"]))
    if db.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    message = db.execute(query).scalar()
    if message is None or message.status != service.QUEUED:
        return
    try:
        channels.get(message.channel).deliver(message)
    except channels.ChannelNotConfigured as exc:
        message.status = service.HELD
        message.last_error = str(exc)
        return
    except Exception as exc:  # noqa: BLE001 - any failure of the far side is retried, then recorded
        message.attempts += 1
        message.last_error = f"{type(exc).__name__}: {exc}"[:2000]
        if message.attempts >= MAX_SEND_ATTEMPTS:
            message.status = service.FAILED
            log.warning("outbound %s message %s failed after %s attempts", message.channel, message.id,
                        message.attempts)
        else:
            service.schedule_delivery(db, message, attempt=message.attempts + 1,
                                      delay_seconds=retry_delay_seconds(message.attempts))
        return
    message.attempts += 1
    message.status = service.SENT
    message.sent_at = utcnow()
    message.last_error = ""
