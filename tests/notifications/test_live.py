"""Live push over server-sent events, against the real app served by uvicorn (and a second process on PostgreSQL)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from healthrelay.core.db import get_sessionmaker
from healthrelay.notifications import live, service
from tests.conftest import PG_URL, ROOT, free_port
from tests.notifications.conftest import People, SseClient, signed_in

Opener = Callable[..., SseClient]


@pytest.fixture
def open_stream(live_server: str) -> Iterator[Opener]:
    """Open SSE streams as a signed-in user; all are closed before the server stops."""
    opened: list[SseClient] = []

    def opener(username: str, *, last_event_id: str | None = None, base_url: str = live_server) -> SseClient:
        client = SseClient(signed_in(base_url, username), last_event_id=last_event_id)
        opened.append(client)
        return client

    yield opener
    for client in opened:
        client.close()


def _wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def test_a_user_sees_a_notification_committed_by_another_session(db: Session, people: People,
                                                                 open_stream: Opener) -> None:
    service.send(db, user_ids=[people.doctor.id], kind="test", title="连接前的旧消息")
    db.commit()
    stream = open_stream("zhang_doc")
    hello = stream.next()
    assert hello["type"] == "hello" and hello["unread"] == 1

    (note,) = service.send(db, user_ids=[people.doctor.id], kind="referral.received", urgent=True,
                           title="新的上转：王**（绿色通道）", body="东山镇卫生院", link="/referrals/3")
    db.commit()
    event = stream.next()
    assert event["type"] == "notification" and event["title"] == "新的上转：王**（绿色通道）"
    assert event["urgent"] is True and event["link"] == "/referrals/3"
    assert event["_id"] == str(note.id)  # the browser's Last-Event-ID on reconnect

    service.publish(db, topic=service.org_topic(people.county.id), event={"type": "referral.changed",
                                                                          "referral_id": 3})
    db.commit()
    board = stream.next()
    assert board == {"type": "referral.changed", "referral_id": 3, "topic": f"org:{people.county.id}",
                     "_id": None}


def test_a_rolled_back_notification_never_reaches_the_page(db: Session, people: People,
                                                           open_stream: Opener) -> None:
    stream = open_stream("zhang_doc")
    assert stream.next()["type"] == "hello"
    service.send(db, user_ids=[people.doctor.id], kind="test", title="回滚了", urgent=True)
    db.rollback()
    service.send(db, user_ids=[people.doctor.id], kind="test", title="提交了")
    db.commit()
    assert stream.next()["title"] == "提交了"  # the rolled-back one, sent first, would have arrived first


def test_streams_hear_only_their_own_user_and_organisation(db: Session, people: People,
                                                           open_stream: Opener) -> None:
    town = open_stream("town_doc")
    resident = open_stream("resident_wang")
    assert town.next()["type"] == "hello" and resident.next()["type"] == "hello"
    service.publish(db, topic=service.org_topic(people.county.id), event={"type": "referral.changed"})
    service.send(db, user_ids=[people.doctor.id], kind="test", title="给张医生")
    service.send(db, user_ids=[people.town_doctor.id, people.resident.id], kind="test", title="给你")
    db.commit()
    assert town.next()["title"] == "给你"
    assert resident.next()["title"] == "给你"


def test_reconnecting_with_last_event_id_replays_what_was_missed(db: Session, people: People,
                                                                 open_stream: Opener) -> None:
    (seen,) = service.send(db, user_ids=[people.doctor.id], kind="test", title="已看过")
    db.commit()
    first = open_stream("zhang_doc")
    hello = first.next()
    assert hello["_id"] == str(seen.id)
    first.close()
    missed = [service.send(db, user_ids=[people.doctor.id], kind="test", title=title)[0]
              for title in ("断线时一", "断线时二")]
    db.commit()

    again = open_stream("zhang_doc", last_event_id=hello["_id"])
    assert again.next() == {"type": "hello", "unread": 3, "topic": f"user:{people.doctor.id}", "_id": None}
    replayed = [again.next(), again.next()]
    assert [(e["title"], e["_id"], e["replay"]) for e in replayed] == [
        ("断线时一", str(missed[0].id), True), ("断线时二", str(missed[1].id), True)]
    service.send(db, user_ids=[people.doctor.id], kind="test", title="重连后")
    db.commit()
    assert again.next()["title"] == "重连后"


def test_closing_the_page_unsubscribes(db: Session, people: People, open_stream: Opener) -> None:
    topic = service.user_topic(people.colleague.id)
    stream = open_stream("li_doc")
    assert stream.next()["type"] == "hello"
    assert live.bus.subscriber_count(topic) == 1
    stream.close()
    _wait_until(lambda: live.bus.subscriber_count(topic) == 0)


def test_signed_out_or_disabled_accounts_get_no_stream(db: Session, people: People, live_server: str) -> None:
    anonymous = httpx.get(f"{live_server}/notifications/stream", timeout=10)
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "not_authenticated"
    client = signed_in(live_server, "li_doc")
    people.colleague.is_active = False
    db.commit()
    try:
        assert client.get("/notifications/stream", timeout=10).status_code == 401
    finally:
        client.close()


@pytest.fixture
def second_process(data_dir: Path, database_url: str) -> Iterator[str]:
    """The app in another OS process on the same PostgreSQL database, as a scaled-out deployment runs it."""
    port = free_port()
    env = {**os.environ, "HEALTHRELAY_DATABASE_URL": database_url, "HEALTHRELAY_DATA_DIR": str(data_dir),
           "HEALTHRELAY_FAST_PASSWORD_HASH": "1", "HEALTHRELAY_ASSETS_DIR": str(ROOT / "node_modules")}
    env.pop("HEALTHRELAY_RUN_TIMERS", None)
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "healthrelay.asgi:app", "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning"], env=env, cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"second process did not start: {proc.stdout.read().decode()[-2000:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL: LISTEN/NOTIFY carries events between processes; "
                                       "SQLite is the single-process setup with in-process fan-out")
def test_a_notification_committed_here_reaches_a_stream_served_by_another_process(
        db: Session, people: People, second_process: str, open_stream: Opener) -> None:
    stream = open_stream("zhang_doc", base_url=second_process)
    assert stream.next(timeout=20)["type"] == "hello"  # the other process is listening now
    service.send(db, user_ids=[people.doctor.id], kind="test", title="回滚的不该到", urgent=True)
    db.rollback()
    (note,) = service.send(db, user_ids=[people.doctor.id], kind="referral.received", title="跨进程送达",
                           urgent=True)
    service.publish(db, topic=service.org_topic(people.county.id), event={"type": "referral.changed",
                                                                          "referral_id": 8})
    db.commit()
    event = stream.next()
    assert (event["type"], event["title"], event["_id"]) == ("notification", "跨进程送达", str(note.id))
    assert stream.next()["referral_id"] == 8


@pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL: only the LISTEN connection can drop")
def test_a_dropped_listener_reconnects_and_the_stream_catches_up(db: Session, people: People,
                                                                 open_stream: Opener) -> None:
    stream = open_stream("zhang_doc")
    assert stream.next()["type"] == "hello"
    killed = db.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE application_name = :name AND datname = current_database()"),
                        {"name": live.APPLICATION_NAME}).scalars().all()
    db.commit()
    assert killed == [True]
    # Committed while the listener may still be away: it arrives live or through the resync, once.
    (during,) = service.send(db, user_ids=[people.doctor.id], kind="test", title="断线期间")
    db.commit()
    seen: list[dict] = []
    while not (any(e["type"] == "resync" for e in seen) and any(e.get("title") == "断线期间" for e in seen)):
        seen.append(stream.next(timeout=20))
    assert [e["_id"] for e in seen if e.get("title") == "断线期间"] == [str(during.id)]
    service.send(db, user_ids=[people.doctor.id], kind="test", title="恢复之后")
    db.commit()
    assert stream.next()["title"] == "恢复之后"


@pytest.mark.skipif(not PG_URL, reason="SQLite serialises writers, so notification ids always follow commit order")
def test_notifications_committed_out_of_id_order_all_arrive(db: Session, people: People,
                                                            open_stream: Opener) -> None:
    stream = open_stream("zhang_doc")
    assert stream.next()["type"] == "hello"
    with get_sessionmaker()() as slow:
        (first,) = service.send(slow, user_ids=[people.doctor.id], kind="test", title="先取号后提交")
        (second,) = service.send(db, user_ids=[people.doctor.id], kind="test", title="后取号先提交")
        db.commit()
        assert stream.next()["title"] == "后取号先提交"
        slow.commit()
    late = stream.next()
    assert late["title"] == "先取号后提交" and first.id < second.id
