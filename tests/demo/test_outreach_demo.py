"""The demo county's outreach year: agreements, aid rotations, weekly clinics, studio visits and what happened."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import User
from healthrelay.core.db import LOCAL_TZ, local_today, utcnow
from healthrelay.core.errors import InvalidInput
from healthrelay.demo import county
from healthrelay.demo.outreach import EXPIRED_STUDIO
from healthrelay.directory.models import Organisation, Practitioner, Team, TeamKind, TeamMember
from healthrelay.outreach import booking, service
from healthrelay.outreach.models import (
    ActivityPatient,
    ActivityProcedure,
    AidBatch,
    AidRotation,
    ExpertAvailability,
    OutreachBooking,
    OutreachSchedule,
    OutreachSession,
    SessionActivity,
    StudioAgreement,
)


def _local_day(session: OutreachSession) -> date:
    return session.starts_at.astimezone(LOCAL_TZ).date()


def _user(db: Session, username: str) -> User:
    return db.execute(select(User).where(User.username == username)).scalar_one()


def test_the_outreach_stage_runs_last_and_reports_what_it_made(built: list[str]) -> None:
    stages = [line for line in built if line.startswith("[")]
    assert "] outreach: " in stages[-1]
    assert "9 aid batches (35 rotations)" in stages[-1] and "patients seen" in stages[-1]


def test_studio_sessions_stay_inside_agreements_and_an_expired_studio_is_refused(built: list[str],
                                                                                 db: Session) -> None:
    studios = list(db.scalars(select(Team).where(Team.kind == TeamKind.EXPERT_STUDIO)))
    periods = defaultdict(list)
    for a in db.scalars(select(StudioAgreement)):
        periods[a.team_id].append((a.starts_on, a.ends_on))
    assert len(studios) == 32 and all(periods[s.id] for s in studios)
    sessions = list(db.scalars(select(OutreachSession).where(OutreachSession.studio_team_id.is_not(None))))
    assert len(sessions) > 500
    outside = [s.number for s in sessions
               if not any(a <= _local_day(s) <= b for a, b in periods[s.studio_team_id])]
    assert outside == []
    members = {(m.team_id, m.practitioner_id) for m in db.scalars(select(TeamMember))}
    assert all((s.studio_team_id, s.practitioner_id) in members for s in sessions)
    # some visits go down to township centres
    hosts = {s.host_organisation_id for s in sessions}
    township_hosts = db.scalars(select(Organisation.id).where(Organisation.id.in_(hosts),
                                                             Organisation.code.like("QX-C%"))).all()
    assert township_hosts

    # The studio whose agreement ended last month: nothing after it, and planning one is refused.
    expired = next(s for s in studios if s.code == EXPIRED_STUDIO)
    ended = max(b for _, b in periods[expired.id])
    assert ended < local_today().replace(day=1)
    assert all(_local_day(s) <= ended for s in sessions if s.studio_team_id == expired.id)
    leader = db.scalars(select(TeamMember.practitioner_id).where(TeamMember.team_id == expired.id,
                                                                  TeamMember.role == "leader")).one()
    next_week = service.local_dt(local_today() + timedelta(days=7), "09:00")
    with pytest.raises(InvalidInput) as refused:
        service.create_session(db, by=None, plan=service.SessionPlan(
            kind="clinic", title="专家门诊", practitioner_id=leader, host_organisation_id=expired.organisation_id,
            starts_at=next_week, minutes=180, capacity=20, studio_team_id=expired.id))
    assert "agreement" in str(refused.value.field_errors)


def test_nobody_is_in_two_places_at_once(built: list[str], db: Session) -> None:
    live = list(db.scalars(select(OutreachSession).where(OutreachSession.status != "cancelled")
                           .order_by(OutreachSession.practitioner_id, OutreachSession.starts_at)))
    orgs = {o.id: o for o in db.scalars(select(Organisation))}
    settings = service.settings_of(db)
    travel: dict[tuple[int, int], float] = {}
    clashes = []
    for before, after in zip(live, live[1:], strict=False):
        if before.practitioner_id != after.practitioner_id:
            continue
        gap = timedelta(0)
        if before.host_organisation_id != after.host_organisation_id and _local_day(before) == _local_day(after):
            key = (before.host_organisation_id, after.host_organisation_id)
            if key not in travel:
                travel[key] = service.travel_minutes(db, orgs[key[0]], orgs[key[1]], settings=settings) or 0.0
            gap = timedelta(minutes=travel[key])
        if after.starts_at < before.ends_at + gap:
            clashes.append((before.number, after.number))
    assert clashes == []


def test_weekly_clinics_skip_holidays_and_shimen_has_a_free_place_for_its_resident(built: list[str],
                                                                                    db: Session) -> None:
    schedules = list(db.scalars(select(OutreachSchedule)))
    assert len(schedules) >= 12
    for sch in schedules:
        days = [_local_day(s) for s in db.scalars(select(OutreachSession).where(
            OutreachSession.schedule_id == sch.id, OutreachSession.status != "cancelled"))]
        assert days and all(d.weekday() == sch.weekday and sch.starts_on <= d <= sch.ends_on for d in days)
        assert not set(days) & {date.fromisoformat(x) for x in sch.skip_dates}
    assert any(sch.skip_dates for sch in schedules)
    # doc.outreach holds the weekly 石门镇 clinic; its next date has places left and patient.shimen books one
    shimen = db.execute(select(Organisation).where(Organisation.code == county.centre_code(county.TOWNSHIPS[2]))
                        ).scalar_one()
    doc = _user(db, "doc.outreach")
    upcoming = service.upcoming(db, host_ids=[shimen.id])
    clinic = next(s for s in upcoming if s.kind == "clinic" and s.schedule_id is not None)
    assert clinic.practitioner_id == doc.practitioner_id
    assert clinic.booked_count < clinic.capacity
    resident = _user(db, "patient.shimen")
    made = booking.book(db, by=resident, session_id=clinic.id)
    assert made.status == "booked"


def test_bookings_never_exceed_places_and_counts_agree(built: list[str], db: Session) -> None:
    counted = dict(db.execute(select(OutreachBooking.session_id, func.count()).where(
        OutreachBooking.status.in_(("booked", "attended", "no_show"))).group_by(OutreachBooking.session_id)).all())
    waiting = dict(db.execute(select(OutreachBooking.session_id, func.count()).where(
        OutreachBooking.status == "waitlisted").group_by(OutreachBooking.session_id)).all())
    clinics = list(db.scalars(select(OutreachSession).where(OutreachSession.kind == "clinic")))
    assert all(s.booked_count <= s.capacity and s.waitlist_count <= s.waitlist_limit for s in clinics)
    assert all(counted.get(s.id, 0) == s.booked_count and waiting.get(s.id, 0) == s.waitlist_count
               for s in clinics)
    now = utcnow()
    assert any(s.starts_at > now and s.booked_count == s.capacity and s.waitlist_count for s in clinics)
    statuses = set(db.scalars(select(OutreachBooking.status).distinct()))
    assert {"attended", "no_show", "cancelled", "booked", "waitlisted"} <= statuses
    # only clinics take bookings
    assert not db.scalar(select(func.count()).select_from(OutreachBooking).join(OutreachSession).where(
        OutreachSession.kind != "clinic"))


def test_activity_aid_and_availability_look_like_a_county_year(built: list[str], db: Session) -> None:
    past_done = db.scalar(select(func.count()).select_from(OutreachSession).where(OutreachSession.status == "done"))
    recorded = db.scalar(select(func.count()).select_from(SessionActivity))
    assert past_done == recorded and recorded > 1000
    outcomes = dict(db.execute(select(ActivityPatient.outcome, func.count()).group_by(ActivityPatient.outcome)).all())
    seen = sum(outcomes.values())
    assert seen > 3000 and 0.04 < outcomes["referred_up"] / seen < 0.14
    kinds = set(db.scalars(select(OutreachSession.kind).join(SessionActivity).join(ActivityProcedure).distinct()))
    assert kinds == {"demonstration_operation", "guided_procedure"}
    # expert.cardio has sessions of his own waiting for him to record
    expert = _user(db, "expert.cardio")
    waiting = list(db.scalars(select(OutreachSession).where(
        OutreachSession.practitioner_id == expert.practitioner_id, OutreachSession.status == "published",
        OutreachSession.ends_at < utcnow())))
    assert waiting and all(service.may_manage_session(expert, s) for s in waiting)
    # paired aid: nine three-month batches, the last one current, 35 rotations inside their batches
    batches = list(db.scalars(select(AidBatch).order_by(AidBatch.number)))
    assert [b.number for b in batches] == list(range(1, 10))
    assert batches[-1].starts_on <= local_today() <= batches[-1].ends_on
    rotations = list(db.scalars(select(AidRotation)))
    by_id = {b.id: b for b in batches}
    assert len(rotations) == 35 and sum(r.role == "挂职科室主任" for r in rotations) >= 3
    assert all(by_id[r.batch_id].starts_on <= r.starts_on <= r.ends_on <= by_id[r.batch_id].ends_on
               for r in rotations)
    aid_expert = _user(db, "expert.aid")
    assert any(r.practitioner_id == aid_expert.practitioner_id and r.batch_id == batches[-1].id for r in rotations)
    # the roster planner knows when every studio expert and every county specialist who goes down is free
    experts = set(db.scalars(select(TeamMember.practitioner_id).join(Team).where(
        Team.kind == TeamKind.EXPERT_STUDIO, TeamMember.role.in_(("leader", "member")))))
    available = {a.practitioner_id: a for a in db.scalars(select(ExpertAvailability))}
    county_doc = db.scalars(select(Practitioner.id).where(
        Practitioner.code == f"{county.COUNTY_HOSPITAL}-CARD-2")).one()
    assert experts | {county_doc} <= set(available)
    assert all(a.weekdays and 60 <= a.max_travel_minutes <= 180 and 2 <= a.max_sessions_per_month <= 6
               for a in available.values())


def test_the_planner_can_propose_next_months_roster(built: list[str], db: Session) -> None:
    from healthrelay.outreach import roster

    planner = _user(db, "planner.county")
    plan = roster.propose(db, by=planner, month=roster.next_month(roster.month_start(local_today())), time_limit=3)
    items = roster.items_of(db, plan.id)
    assert items and plan.covered > 0 and all(i.reason for i in items)
    db.rollback()
