"""Outbound delivery after commit: email to a real SMTP server, held SMS/WeChat, retries, never twice."""

from __future__ import annotations

from collections.abc import Callable
from email import message_from_bytes
from email.header import decode_header, make_header
from email.policy import default as default_policy

from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.core.db import get_sessionmaker
from healthrelay.core.timers import Timer
from healthrelay.notifications import channels, flows, service
from healthrelay.notifications.models import OutboundMessage
from tests.conftest import free_port
from tests.notifications.conftest import Mailbox, People, move_timers_due, run_timers


def _rows(db: Session, channel: str | None = None) -> list[OutboundMessage]:
    db.expire_all()
    query = select(OutboundMessage).order_by(OutboundMessage.id)
    if channel:
        query = query.where(OutboundMessage.channel == channel)
    return list(db.execute(query).scalars())


def test_email_reaches_a_real_smtp_server_with_a_chinese_subject(db: Session, people: People,
                                                                 smtp_server: Mailbox) -> None:
    service.send(db, user_ids=[people.doctor.id], kind="referral.received", title="新的上转：王**（绿色通道）",
                 body="东山镇卫生院发来一份绿色通道转诊，请在 15 分钟内处理。", link="/referrals/12")
    assert smtp_server.messages == []  # nothing leaves before commit and the timer
    db.commit()
    run_timers()

    (mail,) = smtp_server.messages
    assert mail["X-RcptTo"] == "zhang@county.example"
    assert mail["To"] == "zhang@county.example"
    assert mail["From"] == "noreply@healthrelay.example"
    assert mail["Subject"].isascii()  # RFC 2047 encoded-words: any mail server and client can carry it
    assert str(make_header(decode_header(mail["Subject"]))) == "【健康接力】新的上转：王**（绿色通道）"
    parsed = message_from_bytes(mail.as_bytes(), policy=default_policy)
    assert parsed.get_content_charset() == "utf-8"
    text = parsed.get_content()
    assert "请在 15 分钟内处理" in text and "/referrals/12" in text

    (row,) = _rows(db, "email")
    assert row.status == "sent" and row.attempts == 1 and row.sent_at is not None and row.last_error == ""
    assert run_timers() == 0
    assert len(smtp_server.messages) == 1


def test_a_message_is_never_sent_twice_even_if_its_timer_runs_again(db: Session, people: People,
                                                                   smtp_server: Mailbox) -> None:
    service.send(db, user_ids=[people.colleague.id], kind="test", title="只发一次")
    db.commit()
    run_timers()
    (row,) = _rows(db, "email")
    with get_sessionmaker()() as session:  # a duplicate delivery attempt, as a confused runner would make
        flows.deliver(session, {"message_id": row.id})
        session.commit()
    assert len(smtp_server.messages) == 1


def test_sms_and_wechat_stay_held_in_the_outbox_while_email_goes(db: Session, people: People,
                                                                smtp_server: Mailbox) -> None:
    service.send(db, user_ids=[people.doctor.id, people.resident.id], kind="test", title="绿色通道", urgent=True)
    db.commit()
    run_timers()
    statuses = {(r.channel, r.recipient): r.status for r in _rows(db)}
    assert statuses == {("email", "zhang@county.example"): "sent", ("sms", "13912345678"): "held",
                        ("wechat", "oWx_zhang_0001abcd"): "held", ("sms", "13800001111"): "held"}
    sms = _rows(db, "sms")[0]
    assert sms.body.startswith("【健康接力】绿色通道") and len(sms.body) <= service.SMS_MAX


def test_a_gateway_url_without_an_adapter_still_holds(db: Session, people: People,
                                                      settings_env: Callable[..., None]) -> None:
    settings_env(sms_gateway_url="http://127.0.0.1:9/sms")
    service.send(db, user_ids=[people.resident.id], kind="test", title="复诊提醒", urgent=True)
    db.commit()
    (row,) = _rows(db, "sms")
    assert row.status == "held" and "sms" in row.last_error


class RecordingGateway(channels.OutboxChannel):
    """A gateway adapter as a deployment would plug one in (here it only records, or fails on demand)."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__("sms", "sms_gateway_url")
        self.fail = fail
        self.sent: list[tuple[str, str, str]] = []

    def post(self, url: str, message: OutboundMessage) -> None:
        if self.fail:
            raise ConnectionError("gateway answered 503")
        self.sent.append((url, message.recipient, message.body))


def test_a_registered_gateway_adapter_sends_and_releases_held_messages(db: Session, people: People,
                                                                       settings_env: Callable[..., None]) -> None:
    service.send(db, user_ids=[people.resident.id], kind="test", title="早先的消息", urgent=True)
    db.commit()
    assert _rows(db, "sms")[0].status == "held"

    settings_env(sms_gateway_url="http://127.0.0.1:9/sms")
    gateway = RecordingGateway()
    channels.register(gateway)
    service.send(db, user_ids=[people.resident.id], kind="test", title="新的消息", urgent=True)
    assert service.release_held(db, channel="sms") == 1
    db.commit()
    run_timers()
    assert sorted(body for _, _, body in gateway.sent) == ["【健康接力】新的消息", "【健康接力】早先的消息"]
    assert {r.status for r in _rows(db, "sms")} == {"sent"}
    assert gateway.sent[0][:2] == ("http://127.0.0.1:9/sms", "13800001111")


def test_a_failing_server_is_retried_with_backoff_then_marked_failed(db: Session, people: People,
                                                                     settings_env: Callable[..., None]) -> None:
    settings_env(smtp_host="127.0.0.1", smtp_port=free_port())  # nothing listens there
    service.send(db, user_ids=[people.colleague.id], kind="test", title="发不出去")
    db.commit()
    run_timers()
    (row,) = _rows(db, "email")
    assert row.status == "queued" and row.attempts == 1 and "ConnectionRefusedError" in row.last_error
    pending = db.execute(select(Timer).where(Timer.kind == service.DELIVER_KIND, Timer.fired_at.is_(None))
                         ).scalars().one()
    waited = (pending.due_at - row.created_at).total_seconds()
    assert waited >= flows.retry_delay_seconds(1) - 1
    assert run_timers() == 0  # the retry waits for its time

    for _ in range(flows.MAX_SEND_ATTEMPTS - 1):
        move_timers_due(db, service.DELIVER_KIND)
        assert run_timers() == 1
    (row,) = _rows(db, "email")
    assert row.status == "failed" and row.attempts == flows.MAX_SEND_ATTEMPTS and row.sent_at is None
    move_timers_due(db, service.DELIVER_KIND)
    assert run_timers() == 0  # nothing left to try


def test_a_transient_failure_is_retried_and_then_sent(db: Session, people: People, smtp_server: Mailbox,
                                                      settings_env: Callable[..., None]) -> None:
    settings_env(smtp_port=free_port())  # the mail server is "down"
    service.send(db, user_ids=[people.colleague.id], kind="test", title="稍后送达")
    db.commit()
    run_timers()
    assert _rows(db, "email")[0].status == "queued"
    settings_env(smtp_port=smtp_server.port)  # it is back
    move_timers_due(db, service.DELIVER_KIND)
    run_timers()
    (row,) = _rows(db, "email")
    assert row.status == "sent" and row.attempts == 2
    assert [m["X-RcptTo"] for m in smtp_server.messages] == ["li@county.example"]


def test_a_server_configured_later_finds_held_email_waiting(db: Session, people: People,
                                                            smtp_server: Mailbox,
                                                            settings_env: Callable[..., None]) -> None:
    settings_env(smtp_host="")
    service.send(db, user_ids=[people.colleague.id], kind="test", title="先存着")
    db.commit()
    assert _rows(db, "email")[0].status == "held"
    settings_env(smtp_host=smtp_server.host)
    service.release_held(db, channel="email")
    db.commit()
    run_timers()
    assert _rows(db, "email")[0].status == "sent" and len(smtp_server.messages) == 1
