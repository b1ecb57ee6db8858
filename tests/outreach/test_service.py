"""Planning outreach as the county's 医务科 meets it: one person cannot be in two places (road time counted),
a studio's sessions stay inside its agreement, a weekly extension clinic is all-or-nothing with its exceptions."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.core.db import local_today
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput
from healthrelay.outreach import booking, service
from healthrelay.outreach.models import OutreachSchedule, OutreachSession, StudioAgreement
from tests.outreach.conftest import World, at, clinic, next_weekday


def fields_of(exc: pytest.ExceptionInfo) -> set[str]:
    return {e["field"] for e in exc.value.field_errors}


def _plan(w: World, **changes: object) -> service.SessionPlan:
    assert w.county_doctor.practitioner_id is not None
    base = dict(kind="clinic", title="心内科延伸门诊", practitioner_id=w.county_doctor.practitioner_id,
                host_organisation_id=w.town.id, starts_at=at(next_weekday(1)), minutes=180, capacity=20)
    base.update(changes)
    return service.SessionPlan(**base)  # type: ignore[arg-type]


def test_every_problem_of_a_plan_is_named_at_once_and_nothing_is_written(db: Session, world: World) -> None:
    bad = _plan(world, kind="party", title=" ", starts_at=at(local_today() - timedelta(days=2)), minutes=5,
                capacity=0)
    with pytest.raises(InvalidInput) as exc:
        service.create_session(db, by=world.planner, plan=bad)
    assert fields_of(exc) == {"kind", "title", "starts_at", "minutes"}
    clinic_without_places = _plan(world, capacity=0)
    with pytest.raises(InvalidInput) as exc:
        service.create_session(db, by=world.planner, plan=clinic_without_places)
    assert fields_of(exc) == {"capacity"}
    with pytest.raises(AccessDenied):
        service.create_session(db, by=world.town_doctor, plan=_plan(world))
    assert db.scalar(select(func.count()).select_from(OutreachSession)) == 0


def test_a_person_cannot_be_in_two_places_and_road_time_between_hosts_counts(db: Session, world: World) -> None:
    day = next_weekday(2)
    first = clinic(db, world, day=day, host=world.town, hhmm="09:00")  # 09:00-12:00 at the township
    assert first.number.startswith("XC") and first.status == "published"
    with pytest.raises(Conflict) as exc:  # same host, overlapping
        service.create_session(db, by=world.planner, plan=_plan(world, starts_at=at(day, "11:00")))
    assert exc.value.code == "person_busy" and first.number in exc.value.message
    # The county hospital is ~33 km from the township: 12:00 there is too early, the afternoon is fine.
    travel = service.travel_minutes(db, world.town, world.county)
    assert travel is not None and travel > 30
    with pytest.raises(Conflict) as exc:
        service.create_session(db, by=world.planner, plan=_plan(world, host_organisation_id=world.county.id,
                                                                 starts_at=at(day, "12:10")))
    assert "车程" in exc.value.message and "road" in exc.value.message
    later = service.create_session(db, by=world.planner, plan=_plan(world, host_organisation_id=world.county.id,
                                                                     starts_at=at(day, "14:30")))
    assert later.id != first.id
    # Another person may be at the township at the same time.
    assert world.expert.practitioner_id is not None
    service.create_session(db, by=world.planner, plan=_plan(world, practitioner_id=world.expert.practitioner_id))
    # A cancelled session frees the person.
    service.cancel_session(db, by=world.planner, session_id=first.id, reason="专家临时外出会诊")
    service.create_session(db, by=world.planner, plan=_plan(world, starts_at=at(day, "10:00")))


def test_a_studio_session_must_be_by_a_member_inside_the_agreement(db: Session, world: World) -> None:
    assert world.expert.practitioner_id is not None
    ok = service.create_session(db, by=world.planner, plan=_plan(
        world, practitioner_id=world.expert.practitioner_id, studio_team_id=world.studio.id))
    assert ok.specialty_id == world.cardiology.id  # taken from the studio
    outside = date(world.agreement.ends_on.year + 1, 3, 2)
    with pytest.raises(InvalidInput) as exc:
        service.create_session(db, by=world.planner, plan=_plan(
            world, practitioner_id=world.expert.practitioner_id, studio_team_id=world.studio.id,
            starts_at=at(outside)))
    assert fields_of(exc) == {"starts_at"} and str(world.agreement.ends_on) in str(exc.value.field_errors)
    with pytest.raises(InvalidInput) as exc:  # the county doctor is not a member of the studio
        service.create_session(db, by=world.planner, plan=_plan(world, studio_team_id=world.studio.id,
                                                                 starts_at=at(next_weekday(3))))
    assert fields_of(exc) == {"practitioner_id"}


def test_agreements_of_a_studio_do_not_overlap(db: Session, world: World) -> None:
    with pytest.raises(Conflict):
        service.add_agreement(db, by=world.planner, team_id=world.studio.id, starts_on=world.agreement.ends_on,
                              ends_on=world.agreement.ends_on + timedelta(days=365))
    with pytest.raises(InvalidInput):
        service.add_agreement(db, by=world.planner, team_id=world.studio.id, starts_on=date(2040, 2, 1),
                              ends_on=date(2040, 1, 1))
    row = service.add_agreement(db, by=world.planner, team_id=world.studio.id,
                                starts_on=world.agreement.ends_on + timedelta(days=1),
                                ends_on=world.agreement.ends_on + timedelta(days=365))
    assert db.scalar(select(func.count()).select_from(StudioAgreement)) == 2 and row.id


def test_a_weekly_extension_clinic_is_published_whole_with_its_skipped_dates(db: Session, world: World) -> None:
    start = next_weekday(1)
    plan = service.SchedulePlan(session=_plan(world), weekday=1, start_time="08:30", starts_on=start,
                                ends_on=start + timedelta(weeks=7), skip_dates=[start + timedelta(weeks=2)])
    schedule, sessions = service.publish_schedule(db, by=world.planner, plan=plan)
    assert len(sessions) == 7  # eight Tuesdays, one skipped
    assert all(s.starts_at.astimezone(service.LOCAL_TZ).weekday() == 1 for s in sessions)
    assert schedule.skip_dates == [(start + timedelta(weeks=2)).isoformat()]
    # A second schedule for the same person clashing on one date publishes nothing at all.
    clash = service.SchedulePlan(session=_plan(world, host_organisation_id=world.county.id), weekday=1,
                                 start_time="10:00", starts_on=start + timedelta(weeks=2),
                                 ends_on=start + timedelta(weeks=4))
    with pytest.raises(Conflict) as exc:
        service.publish_schedule(db, by=world.planner, plan=clash)
    assert exc.value.code == "person_busy"
    assert len(exc.value.field_errors) == 2  # weeks 3 and 4 clash; week 2 was skipped
    assert db.scalar(select(func.count()).select_from(OutreachSchedule)) == 1
    # An exception: the next session is cancelled, its booked resident told, the date remembered.
    booking.book(db, by=world.resident_user, session_id=sessions[0].id)
    service.skip_schedule_date(db, by=world.planner, schedule_id=schedule.id, day=start, reason="县里统一培训")
    db.refresh(sessions[0])
    assert sessions[0].status == "cancelled" and sessions[0].booked_count == 0
    assert start.isoformat() in schedule.skip_dates
    with pytest.raises(InvalidInput):  # nothing left that day
        service.skip_schedule_date(db, by=world.planner, schedule_id=schedule.id, day=start, reason="again")


def test_a_schedule_with_no_date_or_too_long_is_refused(db: Session, world: World) -> None:
    start = next_weekday(1)
    with pytest.raises(InvalidInput) as exc:
        service.publish_schedule(db, by=world.planner, plan=service.SchedulePlan(
            session=_plan(world), weekday=1, start_time="08:30", starts_on=start, ends_on=start + timedelta(days=400)))
    assert fields_of(exc) == {"ends_on"}
    with pytest.raises(InvalidInput) as exc:
        service.publish_schedule(db, by=world.planner, plan=service.SchedulePlan(
            session=_plan(world), weekday=3, start_time="08:30", starts_on=start, ends_on=start + timedelta(days=1)))
    assert fields_of(exc) == {"weekday"}
    with pytest.raises(InvalidInput) as exc:
        service.publish_schedule(db, by=world.planner, plan=service.SchedulePlan(
            session=_plan(world), weekday=1, start_time="25:00", starts_on=start, ends_on=start + timedelta(days=30)))
    assert fields_of(exc) == {"start_time"}
