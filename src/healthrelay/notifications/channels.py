"""Outbound channels behind one interface: email over SMTP, and outbox-held SMS and WeChat.

How a gateway plugs in: write a class with `name = "sms"` (or "wechat") whose `deliver()` hands
the message to the vendor's API and raises on any failure (the caller retries with backoff and
finally marks the row `failed`) - most simply a subclass of OutboxChannel overriding `post()` -
and register it at start-up: `register(MySmsGateway("sms", "sms_gateway_url"))`.
Rows that waited as `held` before the gateway existed are queued again with
`healthrelay.notifications.service.release_held(db, channel="sms")`.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Protocol, runtime_checkable

from healthrelay.core.config import Settings, get_settings
from healthrelay.notifications.models import OutboundMessage


class ChannelNotConfigured(Exception):
    """Nowhere to send yet: the message stays in the outbox as `held`."""


@runtime_checkable
class Channel(Protocol):
    name: str

    def configured(self) -> bool:
        """False while no server or gateway is set up; messages are then held, not attempted."""
        ...

    def deliver(self, message: OutboundMessage) -> None:
        """Hand the message over; raise on failure (ChannelNotConfigured means hold it)."""
        ...


class EmailChannel:
    """SMTP with STARTTLS and login when configured; UTF-8 MIME so Chinese subjects survive."""

    name = "email"
    timeout_seconds = 20.0

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings

    @property
    def settings(self) -> Settings:
        # Read at use, not at import, so a changed configuration (or a test's) takes effect.
        return self._settings or get_settings()

    def configured(self) -> bool:
        return bool(self.settings.smtp_host)

    def build(self, message: OutboundMessage) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self.settings.smtp_from
        mail["To"] = message.recipient
        mail["Subject"] = message.subject
        mail["Date"] = formatdate(localtime=False)
        mail["Message-ID"] = make_msgid(idstring=f"outbound.{message.id}", domain="healthrelay")
        mail.set_content(message.body or message.subject, charset="utf-8")
        return mail

    def deliver(self, message: OutboundMessage) -> None:
        s = self.settings
        if not s.smtp_host:
            raise ChannelNotConfigured("smtp_host is not set")
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=self.timeout_seconds) as smtp:
            smtp.ehlo()
            if s.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if s.smtp_username:
                smtp.login(s.smtp_username, s.smtp_password)
            smtp.send_message(self.build(message))


class OutboxChannel:
    """SMS or WeChat: the outbox row is the message until a gateway exists.

    Without a gateway URL (`sms_gateway_url`, `wechat_gateway_url`) the row is held. A gateway
    adapter subclasses this and implements `post()`; until one is registered, a configured URL
    alone still holds the row (with last_error saying why), since nothing here knows the vendor's API.
    """

    def __init__(self, name: str, url_setting: str, settings: Settings | None = None) -> None:
        self.name = name
        self.url_setting = url_setting
        self._settings = settings

    def gateway_url(self) -> str:
        return str(getattr(self._settings or get_settings(), self.url_setting, ""))

    def configured(self) -> bool:
        return bool(self.gateway_url()) and type(self).post is not OutboxChannel.post

    def deliver(self, message: OutboundMessage) -> None:
        url = self.gateway_url()
        if not url:
            raise ChannelNotConfigured(f"{self.url_setting} is not set; the message waits in the outbox")
        self.post(url, message)

    def post(self, url: str, message: OutboundMessage) -> None:
        """Send through the vendor's gateway at `url`; raise on failure. Adapters override this."""
        raise ChannelNotConfigured(f"no {self.name} gateway adapter is installed; the message waits in the outbox")


_channels: dict[str, Channel] = {}


def register(channel: Channel) -> None:
    _channels[channel.name] = channel


def get(name: str) -> Channel:
    try:
        return _channels[name]
    except KeyError:
        raise LookupError(f"unknown outbound channel {name!r}") from None


def reset() -> None:
    """The built-in channels (also used by tests to undo a registered fake gateway)."""
    _channels.clear()
    register(EmailChannel())
    register(OutboxChannel("sms", "sms_gateway_url"))
    register(OutboxChannel("wechat", "wechat_gateway_url"))


reset()
