"""The notification service: inbox rows, read state, who may see what, and nothing before commit."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.core.db import get_sessionmaker
from healthrelay.core.errors import InvalidInput, NotFound
from healthrelay.core.timers import Timer
from healthrelay.notifications import live, service
from healthrelay.notifications.models import Notification, OutboundMessage
from tests.notifications.conftest import People, collect_live


def _count(db: Session, model: type) -> int:
    return db.execute(select(func.count()).select_from(model)).scalar_one()


def test_send_puts_one_row_in_each_active_users_inbox(db: Session, people: People) -> None:
    notes = service.send(db, user_ids=[people.doctor.id, people.colleague.id, people.doctor.id, people.retired.id],
                         kind="referral.received", title="新的上转：王秀英（绿色通道）", body="东山镇卫生院 发来",
                         link="/referrals/12", resource="referral:12")
    db.commit()
    assert sorted(n.user_id for n in notes) == sorted([people.doctor.id, people.colleague.id])
    assert [n.title for n in service.inbox(db, user=people.doctor)] == ["新的上转：王秀英（绿色通道）"]
    assert service.inbox(db, user=people.retired) == []
    assert service.unread_count(db, user=people.colleague) == 1


def test_inbox_is_newest_first_and_read_state_is_per_user(db: Session, people: People) -> None:
    for n in range(3):
        service.send(db, user_ids=[people.doctor.id, people.colleague.id], kind="test", title=f"第{n}条")
    db.commit()
    titles = [n.title for n in service.inbox(db, user=people.doctor)]
    assert titles == ["第2条", "第1条", "第0条"]
    newest = service.inbox(db, user=people.doctor)[0]

    read = service.mark_read(db, user=people.doctor, notification_id=newest.id)
    db.commit()
    assert read.read_at is not None
    assert service.unread_count(db, user=people.doctor) == 2
    assert [n.title for n in service.inbox(db, user=people.doctor, unread_only=True)] == ["第1条", "第0条"]
    assert service.unread_count(db, user=people.colleague) == 3  # the colleague's copies are untouched
    first_read_at = read.read_at
    assert service.mark_read(db, user=people.doctor, notification_id=newest.id).read_at == first_read_at

    assert service.mark_all_read(db, user=people.doctor) == 2
    db.commit()
    assert service.unread_count(db, user=people.doctor) == 0
    assert service.mark_all_read(db, user=people.doctor) == 0
    assert service.unread_count(db, user=people.colleague) == 3


def test_paging_back_through_older_notifications(db: Session, people: People) -> None:
    for n in range(5):
        service.send(db, user_ids=[people.doctor.id], kind="test", title=f"消息{n}")
    db.commit()
    first = service.inbox(db, user=people.doctor, limit=2)
    second = service.inbox(db, user=people.doctor, limit=2, before_id=first[-1].id)
    assert [n.title for n in first + second] == ["消息4", "消息3", "消息2", "消息1"]


def test_one_user_cannot_read_or_mark_anothers_notification(db: Session, people: People) -> None:
    (note,) = service.send(db, user_ids=[people.doctor.id], kind="test", title="只给张医生")
    db.commit()
    with pytest.raises(NotFound):
        service.mark_read(db, user=people.colleague, notification_id=note.id)
    with pytest.raises(NotFound):
        service.get_for(db, user=people.colleague, notification_id=note.id)
    service.mark_all_read(db, user=people.colleague)
    db.commit()
    db.expire_all()
    assert db.get(Notification, note.id).read_at is None
    with pytest.raises(NotFound):
        service.mark_read(db, user=people.doctor, notification_id=note.id + 1000)


def test_email_always_sms_and_wechat_only_when_urgent(db: Session, people: People) -> None:
    (routine,) = service.send(db, user_ids=[people.doctor.id], kind="test", title="例行消息")
    (urgent,) = service.send(db, user_ids=[people.doctor.id], kind="test", title="绿色通道转诊", urgent=True)
    service.send(db, user_ids=[people.town_doctor.id], kind="test", title="没有地址", urgent=True)
    db.commit()
    rows = db.execute(select(OutboundMessage).order_by(OutboundMessage.id)).scalars().all()
    by_note = {}
    for row in rows:
        by_note.setdefault(row.notification_id, []).append((row.channel, row.recipient))
    assert by_note[routine.id] == [("email", "zhang@county.example")]
    assert by_note[urgent.id] == [("email", "zhang@county.example"), ("sms", "13912345678"),
                                  ("wechat", "oWx_zhang_0001abcd")]
    assert set(by_note) == {routine.id, urgent.id}  # the township doctor has no address: inbox only


def test_without_gateways_every_outbound_row_is_held_and_nothing_is_scheduled(db: Session, people: People) -> None:
    service.send(db, user_ids=[people.doctor.id], kind="test", title="紧急", urgent=True)
    db.commit()
    rows = db.execute(select(OutboundMessage)).scalars().all()
    assert {(r.channel, r.status) for r in rows} == {("email", "held"), ("sms", "held"), ("wechat", "held")}
    assert all(r.last_error for r in rows)
    assert _count(db, Timer) == 0


def test_full_id_and_mobile_numbers_never_reach_the_inbox_or_outbox(db: Session, people: People) -> None:
    (note,) = service.send(db, user_ids=[people.doctor.id], kind="test", title="患者 110101195603081234 已到院",
                           body="家属电话 13987654321，请回电", urgent=True)
    db.commit()
    assert "110101195603081234" not in note.title and note.title.startswith("患者 110")
    assert "13987654321" not in note.body and "139****4321" in note.body
    for row in db.execute(select(OutboundMessage)).scalars():
        assert "110101195603081234" not in row.body + row.subject
        assert "13987654321" not in row.body + row.subject


def test_bad_input_is_refused_before_anything_is_written(db: Session, people: People) -> None:
    with pytest.raises(InvalidInput) as empty:
        service.send(db, user_ids=[people.doctor.id], kind="test", title="  ")
    assert empty.value.field_errors[0]["field"] == "title"
    with pytest.raises(InvalidInput):
        service.send(db, user_ids=[people.doctor.id], kind="test", title="钓鱼", link="https://evil.example/")
    with pytest.raises(InvalidInput):
        service.send(db, user_ids=[people.doctor.id], kind="test", title="钓鱼", link="//evil.example/")
    with pytest.raises(InvalidInput):
        service.send(db, user_ids=[people.doctor.id], kind="", title="无类型")
    db.commit()
    assert _count(db, Notification) == 0
    long = service.send(db, user_ids=[people.doctor.id], kind="test", title="长" * 300)[0]
    assert len(long.title) == service.TITLE_MAX and long.title.endswith("…")


def test_a_rolled_back_send_leaves_nothing_and_pushes_nothing(db: Session, people: People) -> None:
    topic = service.user_topic(people.doctor.id)

    def act() -> None:
        with get_sessionmaker()() as session:
            service.send(session, user_ids=[people.doctor.id], kind="test", title="不该出现", urgent=True)
            service.publish(session, topic=topic, event={"type": "referral.changed", "referral_id": 1})
            session.rollback()
            service.publish(session, topic=topic, event={"type": "marker"})
            session.commit()

    events = collect_live([topic], act, until_type="marker")
    assert [e["type"] for e in events] == ["marker"]
    assert _count(db, Notification) == 0
    assert _count(db, OutboundMessage) == 0


def test_a_session_closed_without_commit_pushes_nothing(db: Session, people: People) -> None:
    topic = service.user_topic(people.doctor.id)

    def act() -> None:
        with get_sessionmaker()() as session:
            service.send(session, user_ids=[people.doctor.id], kind="test", title="关闭即丢弃")
        with get_sessionmaker()() as session:
            service.publish(session, topic=topic, event={"type": "marker"})
            session.commit()

    assert [e["type"] for e in collect_live([topic], act, until_type="marker")] == ["marker"]


def test_a_rolled_back_savepoint_drops_only_its_own_events(db: Session, people: People) -> None:
    topic = "org:77"

    def act() -> None:
        with get_sessionmaker()() as session:
            service.publish(session, topic=topic, event={"type": "kept", "n": 1})
            try:
                with session.begin_nested():
                    service.publish(session, topic=topic, event={"type": "dropped"})
                    raise RuntimeError("the inner step failed")
            except RuntimeError:
                pass
            with session.begin_nested():
                service.publish(session, topic=topic, event={"type": "kept", "n": 2})
            service.publish(session, topic=topic, event={"type": "marker"})
            session.commit()

    events = collect_live([topic], act, until_type="marker")
    assert [(e["type"], e.get("n")) for e in events] == [("kept", 1), ("kept", 2), ("marker", None)]


def test_committed_events_reach_subscribers_of_their_topic_only(db: Session, people: People) -> None:
    def act() -> None:
        with get_sessionmaker()() as session:
            service.send(session, user_ids=[people.doctor.id, people.colleague.id], kind="referral.received",
                         title="新转诊", link="/referrals/5", urgent=True)
            service.publish(session, topic=service.org_topic(people.county.id),
                            event={"type": "referral.changed", "referral_id": 5})
            session.commit()

    events = collect_live([service.user_topic(people.doctor.id), service.org_topic(people.county.id)], act,
                          until_type="referral.changed")
    assert [(e["type"], e["topic"]) for e in events] == [
        ("notification", f"user:{people.doctor.id}"), ("referral.changed", f"org:{people.county.id}")]
    note = events[0]
    assert note["title"] == "新转诊" and note["urgent"] is True and note["link"] == "/referrals/5"
    assert note["id"] == service.inbox(db, user=people.doctor)[0].id


def test_marking_read_tells_the_users_other_pages_the_new_count(db: Session, people: People) -> None:
    notes = service.send(db, user_ids=[people.doctor.id], kind="t", title="一") + \
        service.send(db, user_ids=[people.doctor.id], kind="t", title="二")
    db.commit()

    def act() -> None:
        with get_sessionmaker()() as session:
            service.mark_read(session, user=people.doctor, notification_id=notes[0].id)
            session.commit()

    events = collect_live([service.user_topic(people.doctor.id)], act, until_type="inbox.read")
    assert events[-1]["unread"] == 1


def test_oversized_events_travel_as_ids_only() -> None:
    payload = live.encode_for_notify("user:1", {"type": "notification", "id": 9, "title": "短标题",
                                                "body": "很长的正文" * 2000, "urgent": True})
    assert len(payload.encode()) < 8000
    assert '"id": 9' in payload and '"truncated": true' in payload and "很长的正文" not in payload
    small = live.encode_for_notify("org:1", {"type": "referral.changed", "referral_id": 3})
    assert "truncated" not in small


def test_topics_staff_get_their_organisation_patients_only_their_own(people: People) -> None:
    assert service.topics_for(people.doctor) == [f"user:{people.doctor.id}", f"org:{people.county.id}"]
    assert service.topics_for(people.resident) == [f"user:{people.resident.id}"]
