"""Who hears about a referral: the receiving department, then its head and the 医务科 when nobody answers,
and the sender when it is answered; never with the patient's name in the message."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.core import timers
from healthrelay.core.db import get_sessionmaker
from healthrelay.notifications.models import Notification, OutboundMessage
from healthrelay.referrals import service
from healthrelay.referrals.models import Urgency
from tests.referrals.conftest import World, move_due_into_past, sent_referral


def _inbox(db: Session, user_id: int) -> list[Notification]:
    db.expire_all()
    return list(db.execute(select(Notification).where(Notification.user_id == user_id)
                           .order_by(Notification.id)).scalars())


def test_green_channel_reaches_county_clinicians_urgently_without_the_patient_name(db: Session,
                                                                                   world: World) -> None:
    referral = sent_referral(db, world, urgency=Urgency.GREEN_CHANNEL)
    db.commit()
    for doctor in (world.county_doctor, world.county_doctor2):
        [note] = _inbox(db, doctor.id)
        assert note.kind == "referral.incoming" and note.urgent
        assert note.title.startswith("【绿色通道】") and referral.number in note.title
        assert note.link == f"/referrals/{referral.id}"
        assert world.patient.name not in note.title + note.body
    # The sender does not notify themselves, and another township hears nothing.
    assert _inbox(db, world.village_doctor.id) == []
    assert _inbox(db, world.town_b_doctor.id) == []


def test_the_sender_hears_the_answer(db: Session, world: World) -> None:
    referral = sent_referral(db, world)
    service.decline(db, by=world.county_doctor, referral_id=referral.id, reason="心内科无床位",
                    suggested_alternative_organisation_id=world.town_b.id)
    db.commit()
    [note] = _inbox(db, world.village_doctor.id)
    assert note.kind == "referral.declined" and "心内科无床位" in note.body


def test_escalation_notifies_the_head_then_the_medical_affairs_office_by_email_too(db: Session,
                                                                                   world: World) -> None:
    world.county_admin.email = "ywk@county.example"
    referral = sent_referral(db, world, urgency=Urgency.GREEN_CHANNEL)
    db.commit()
    fire: Callable[[], int] = lambda: timers.run_due(get_sessionmaker(), runner="test")  # noqa: E731
    move_due_into_past(db, referral)
    fire()
    assert [n.kind for n in _inbox(db, world.dept_head.id)][-1] == "referral.escalation.1"
    assert _inbox(db, world.county_admin.id) == []
    move_due_into_past(db, referral)
    fire()
    [note] = _inbox(db, world.county_admin.id)
    assert note.kind == "referral.escalation.2" and note.urgent and "医务科" in note.title
    email = db.execute(select(OutboundMessage).where(OutboundMessage.notification_id == note.id)).scalar_one()
    assert email.channel == "email" and email.recipient == "ywk@county.example"


def test_a_rolled_back_referral_notifies_nobody(db: Session, world: World) -> None:
    sent_referral(db, world)
    db.rollback()
    assert _inbox(db, world.county_doctor.id) == []
