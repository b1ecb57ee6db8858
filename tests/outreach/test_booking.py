"""Booking an expert clinic as residents and township doctors do it: places, the waitlist that moves up, a
cancellation, attendance and no-shows, and the reminder the day before."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role
from healthrelay.core import timers
from healthrelay.core.db import utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NeedToKnowDenied
from healthrelay.notifications.models import Notification
from healthrelay.outreach import booking, service
from healthrelay.outreach import flows as flows  # noqa: F401 - registers the care relationship a booking makes
from healthrelay.outreach.models import OutreachBooking
from tests import factories as f
from tests.outreach.conftest import World, clinic, next_weekday


def _inbox(db: Session, user_id: int, kind: str) -> list[Notification]:
    return list(db.scalars(select(Notification).where(Notification.user_id == user_id, Notification.kind == kind)))


def test_a_resident_books_once_is_told_and_reminded_the_day_before(db: Session, world: World) -> None:
    session = clinic(db, world)
    row = booking.book(db, by=world.resident_user, session_id=session.id, phone="13800001111")
    db.commit()
    assert row.status == "booked" and row.number.startswith("YY") and row.via == "self"
    db.refresh(session)
    assert session.booked_count == 1
    assert _inbox(db, world.resident_user.id, "outreach.booked")
    with pytest.raises(Conflict) as exc:
        booking.book(db, by=world.resident_user, session_id=session.id)
    assert exc.value.code == "already_booked"
    db.rollback()
    timer = db.scalars(select(timers.Timer).where(timers.Timer.dedupe_key == f"outreach:booking:{row.id}:remind")).one()
    assert timer.due_at == session.starts_at - timedelta(hours=24)
    booking.remind(db, {"booking_id": row.id})
    assert _inbox(db, world.resident_user.id, "outreach.reminder") and row.reminded_at is not None
    booking.remind(db, {"booking_id": row.id})  # a timer fired twice reminds once
    assert len(_inbox(db, world.resident_user.id, "outreach.reminder")) == 1


def test_full_session_fills_the_waitlist_then_refuses_and_a_cancellation_moves_the_first_up(
        db: Session, world: World) -> None:
    session = clinic(db, world, capacity=1, waitlist=1)
    first = booking.book(db, by=world.resident_user, session_id=session.id)
    waiting = booking.book(db, by=world.town_doctor, session_id=session.id, patient_id=world.neighbour.id)
    assert (first.status, waiting.status, waiting.via) == ("booked", "waitlisted", "clinic")
    assert booking.waitlist_position(db, waiting) == 1
    third = f.patient(db, name="孙玉梅", registered_at=world.town)
    db.commit()
    with pytest.raises(Conflict) as exc:
        booking.book(db, by=world.town_doctor, session_id=session.id, patient_id=third.id)
    assert exc.value.code == "session_full"
    db.rollback()
    booking.cancel(db, by=world.resident_user, booking_id=first.id, reason="家里有事")
    db.refresh(waiting)
    db.refresh(session)
    assert waiting.status == "booked" and waiting.promoted_at is not None
    assert (session.booked_count, session.waitlist_count) == (1, 0)
    # The neighbour has no account: the clinic doctor who booked is told, to phone them.
    assert _inbox(db, world.town_doctor.id, "outreach.promoted")
    # Booking again after cancelling takes the waitlist (the place went to the neighbour).
    again = booking.book(db, by=world.resident_user, session_id=session.id)
    assert again.id == first.id and again.status == "waitlisted"


def test_past_cancelled_and_non_clinic_sessions_take_no_booking(db: Session, world: World) -> None:
    past = clinic(db, world, day=next_weekday(1, weeks_ahead=-2), allow_past=True)
    with pytest.raises(Conflict) as exc:
        booking.book(db, by=world.resident_user, session_id=past.id)
    assert exc.value.code == "session_past"
    rounds = clinic(db, world, kind="teaching_round", capacity=0, day=next_weekday(3))
    with pytest.raises(InvalidInput):
        booking.book(db, by=world.resident_user, session_id=rounds.id)
    later = clinic(db, world, day=next_weekday(4))
    service.cancel_session(db, by=world.planner, session_id=later.id, reason="专家生病")
    with pytest.raises(Conflict) as exc:
        booking.book(db, by=world.resident_user, session_id=later.id)
    assert exc.value.code == "session_closed"
    assert db.scalar(select(func.count()).select_from(OutreachBooking)) == 0


def test_staff_book_only_for_residents_they_care_for_and_residents_only_for_themselves(
        db: Session, world: World) -> None:
    session = clinic(db, world)
    with pytest.raises(NeedToKnowDenied):
        booking.book(db, by=world.outsider, session_id=session.id, patient_id=world.neighbour.id)
    with pytest.raises(AccessDenied):
        booking.book(db, by=world.resident_user, session_id=session.id, patient_id=world.neighbour.id)
    bureau = f.user(db, role=Role.HEALTH_BUREAU, with_practitioner=False)
    with pytest.raises(AccessDenied):
        booking.book(db, by=bureau, session_id=session.id, patient_id=world.neighbour.id)
    with pytest.raises(InvalidInput):
        booking.book(db, by=world.town_doctor, session_id=session.id, patient_id=world.neighbour.id, phone="call me")


def test_the_expert_sees_the_booked_resident_and_records_came_or_not_after_the_start(
        db: Session, world: World) -> None:
    from healthrelay.access import service as access

    session = clinic(db, world, person=world.expert, studio=True)
    row = booking.book(db, by=world.resident_user, session_id=session.id)
    assert access.decide(db, user=world.expert, patient_id=world.resident.id) == "outreach_session"
    assert access.decide(db, user=world.outsider, patient_id=world.resident.id) is None
    with pytest.raises(Conflict) as exc:
        booking.mark(db, by=world.expert, booking_id=row.id, attended=True)
    assert exc.value.code == "session_not_started"
    session.starts_at = utcnow() - timedelta(minutes=5)
    db.flush()
    with pytest.raises(AccessDenied):
        booking.mark(db, by=world.outsider, booking_id=row.id, attended=False)
    assert booking.mark(db, by=world.expert, booking_id=row.id, attended=False).status == "no_show"
    assert booking.mark(db, by=world.expert, booking_id=row.id, attended=True).status == "attended"
    with pytest.raises(Conflict):  # too late to cancel once it has started
        booking.cancel(db, by=world.resident_user, booking_id=row.id)
    names = [r.patient_name for r in booking.session_bookings(db, by=world.expert, session=session)]
    assert names == [world.resident.name]
    with pytest.raises(AccessDenied):
        booking.session_bookings(db, by=world.outsider, session=session)


def test_cancelling_a_session_cancels_its_bookings_and_tells_the_residents(db: Session, world: World) -> None:
    session = clinic(db, world, capacity=1, waitlist=5)
    booking.book(db, by=world.resident_user, session_id=session.id)
    booking.book(db, by=world.town_doctor, session_id=session.id, patient_id=world.neighbour.id)
    with pytest.raises(AccessDenied):
        service.cancel_session(db, by=world.town_doctor, session_id=session.id, reason="x")
    with pytest.raises(InvalidInput):
        service.cancel_session(db, by=world.planner, session_id=session.id, reason=" ")
    service.cancel_session(db, by=world.planner, session_id=session.id, reason="道路塌方")
    statuses = set(db.scalars(select(OutreachBooking.status).where(OutreachBooking.session_id == session.id)))
    assert statuses == {"cancelled"}
    told = _inbox(db, world.resident_user.id, "outreach.cancelled")
    assert told and "道路塌方" in told[0].body
    with pytest.raises(Conflict):
        service.cancel_session(db, by=world.planner, session_id=session.id, reason="again")
