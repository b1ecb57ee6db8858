"""The roster planned from demand: a small county where the best plan and the greedy one differ.

石门镇 sent 20 cardiology patients up last month, 河口乡 15 (five of them through a village clinic), 青山乡
10 neurology patients. Three experts, one session of 20 places each for the two cardiologists, a neurologist
with 5 places and up to three sessions. The TCM-hospital cardiologist (A) is nearest 石门镇 and can also reach
河口乡; the county cardiologist (B) can only reach 石门镇. Greedy sends A to 石门镇 first (same gain, less
travel) and leaves 河口乡 with nobody: 30 patients. The optimum sends B to 石门镇 and A to 河口乡: 45.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from itertools import count

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import User
from healthrelay.core.db import local_today
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput
from healthrelay.directory.models import Organisation, OrgKind, OrgLevel, Practitioner, Specialty, TeamMember
from healthrelay.outreach import roster, service
from healthrelay.outreach.models import ExpertAvailability, OutreachSession, RosterItem, RosterPlan
from healthrelay.referrals.models import Direction, Referral, State, Urgency
from tests import factories as f
from tests.outreach.conftest import World, clinic

_numbers = count(1)
ALL_DAYS = [0, 1, 2, 3, 4, 5, 6]


def next_month() -> date:
    return roster.next_month(roster.month_start(local_today()))


@dataclass
class County:
    w: World
    tcm: Organisation  # base of cardiologist A, next to 石门镇
    hekou: Organisation  # 河口乡 (world.other_town, placed north of the county seat)
    village: Organisation  # a village clinic under 河口乡
    qingshan: Organisation  # 青山乡
    neurology: Specialty
    a: User  # TCM cardiologist
    b: User  # county cardiologist (world.county_doctor)
    n: User  # county neurologist


def refer(db: Session, w: World, *, sender: Organisation, specialty: Specialty, n: int, days_ago: int = 10,
          direction: Direction = Direction.UP, sent: bool = True) -> None:
    """`n` referrals sent `days_ago` days ago, made directly as rows (their workflow is not under test)."""
    when = service.local_dt(local_today() - timedelta(days=days_ago), "10:00")
    for _ in range(n):
        db.add(Referral(number=f"ZZT{next(_numbers):06d}", direction=direction, urgency=Urgency.ROUTINE,
                        state=State.SENT if sent else State.DRAFT, patient_id=w.resident.id,
                        from_organisation_id=sender.id, from_user_id=w.town_doctor.id, to_organisation_id=w.county.id,
                        wanted_specialty_id=specialty.id, sent_at=when if sent else None, created_at=when))
    db.flush()


def offer(db: Session, user: User, base: Organisation, specialty: Specialty | None, *, max_travel: int = 90,
          sessions: int = 1, capacity: int = 20, weekdays: list[int] | None = None, away: list[str] | None = None,
          studio_team_id: int | None = None) -> ExpertAvailability:
    row = ExpertAvailability(practitioner_id=user.practitioner_id, base_organisation_id=base.id,
                             specialty_id=specialty.id if specialty else None, weekdays=weekdays or ALL_DAYS,
                             unavailable_dates=away or [], max_travel_minutes=max_travel,
                             max_sessions_per_month=sessions, session_capacity=capacity,
                             studio_team_id=studio_team_id)
    db.add(row)
    db.flush()
    return row


@pytest.fixture
def county(db: Session, world: World) -> County:
    w = world
    # county seat 30.00/111.00; 石门镇 30.20/111.25 (≈33 km, ≈43 min at the fallback 60 km/h × 1.3)
    tcm = f.organisation(db, name="青溪县中医院", level=OrgLevel.SECONDARY, kind=OrgKind.TCM_HOSPITAL)
    tcm.latitude, tcm.longitude = 30.24, 111.21  # ≈6 km from 石门镇
    hekou = w.other_town
    hekou.latitude, hekou.longitude = 30.45, 111.00  # ≈50 km north of the seat (≈65 min), ≈30 km from the TCM
    village = f.organisation(db, name="河口乡青石村卫生室", level=OrgLevel.VILLAGE, kind=OrgKind.VILLAGE_CLINIC)
    village.parent_id = hekou.id
    qingshan = f.organisation(db, name="青山乡卫生院")
    qingshan.latitude, qingshan.longitude = 29.90, 111.05
    neurology = Specialty(code="neurology", name="神经内科", name_en="Neurology")
    db.add(neurology)
    db.flush()
    a = f.user(db, organisation=tcm, username="tcm_card")
    n = f.user(db, organisation=w.county, username="county_neuro")
    refer(db, w, sender=w.town, specialty=w.cardiology, n=20)
    refer(db, w, sender=hekou, specialty=w.cardiology, n=10)
    refer(db, w, sender=village, specialty=w.cardiology, n=5)
    refer(db, w, sender=qingshan, specialty=neurology, n=10)
    # Not demand: a downward referral, a draft never sent, one from longer ago than the window.
    refer(db, w, sender=w.town, specialty=neurology, n=3, direction=Direction.DOWN)
    refer(db, w, sender=w.town, specialty=neurology, n=3, sent=False)
    refer(db, w, sender=w.town, specialty=neurology, n=3, days_ago=200)
    offer(db, a, tcm, w.cardiology, max_travel=90)
    offer(db, w.county_doctor, w.county, w.cardiology, max_travel=60)
    offer(db, n, w.county, neurology, max_travel=60, sessions=3, capacity=5)
    db.commit()
    return County(w=w, tcm=tcm, hekou=hekou, village=village, qingshan=qingshan, neurology=neurology, a=a,
                  b=w.county_doctor, n=n)


def live(db: Session, plan: RosterPlan) -> list[RosterItem]:
    return roster.items_of(db, plan.id)


# ---------------------------------------------------------------------------- the optimisation

def test_plan_covers_the_most_demand_and_beats_greedy(db: Session, county: County) -> None:
    c = county
    plan = roster.propose(db, by=c.w.planner, month=next_month(), months_back=1, time_limit=5)
    db.commit()
    assert plan.demand_total == 45
    assert plan.covered == 45
    assert plan.greedy_covered == 30
    assert plan.solver == "cp-sat"
    where = {(i.practitioner_id, i.host_organisation_id) for i in live(db, plan)}
    assert (c.b.practitioner_id, c.w.town.id) in where
    assert (c.a.practitioner_id, c.hekou.id) in where
    # the village clinic's five count for 河口乡, and the why says so
    hekou = next(d for d in plan.demand if d["host_id"] == c.hekou.id)
    assert (hekou["referrals"], hekou["from_villages"], hekou["unmet"], hekou["covered"]) == (15, 5, 15, 15)
    assert "河口乡卫生院" in hekou["why_zh"] and "15" in hekou["why_zh"]
    assert "referred 15 Cardiology patients up" in hekou["why_en"]
    # only sent upward referrals inside the window count: no neurology demand at 石门镇
    assert not any(d["host_id"] == c.w.town.id and d["specialty_id"] == c.neurology.id for d in plan.demand)
    item = next(i for i in live(db, plan) if i.host_organisation_id == c.hekou.id)
    assert item.expected_local == 15
    assert "河口乡卫生院" in item.reason and "车程约" in item.reason and "free on" in item.reason
    neuro = [i for i in live(db, plan) if i.specialty_id == c.neurology.id]
    assert len(neuro) == 2 and sum(i.expected_local for i in neuro) == 10


def test_pure_core_greedy_is_never_better(db: Session) -> None:
    d1, d2 = date(2031, 3, 3), date(2031, 3, 4)
    problem = roster.Problem(
        experts=[roster.ExpertSupply(1, 7, 20, 1, (d1, d2), {10: 9.0, 11: 37.0}),
                 roster.ExpertSupply(2, 7, 20, 1, (d1, d2), {10: 43.0})],
        demand={(10, 7): 20, (11, 7): 15}, time_limit=5)
    base = roster.greedy(problem)
    best = roster.solve(problem, hint=base)
    assert (base.total_covered, best.total_covered) == (20, 35)
    assert best.status == "OPTIMAL"
    # with no demand left anywhere there is nothing to choose
    empty = roster.solve(roster.Problem(experts=problem.experts, demand={(10, 7): 0}))
    assert empty.assignments == [] and empty.status == "EMPTY"


def test_constraints_hold(db: Session, county: County) -> None:
    c = county
    month = next_month()
    first_monday = month + timedelta(days=(0 - month.weekday()) % 7)
    # the neurologist: Mondays and Wednesdays only, away on the first Monday, at most two sessions
    avail = db.scalars(select(ExpertAvailability).where(
        ExpertAvailability.practitioner_id == c.n.practitioner_id)).one()
    avail.weekdays, avail.unavailable_dates, avail.max_sessions_per_month = [0, 2], [first_monday.isoformat()], 2
    refer(db, c.w, sender=c.qingshan, specialty=c.neurology, n=20)  # 30 wanted, 2 × 5 places possible
    # the county cardiologist's furthest trip is 30 min: 石门镇 (≈43 min) is now out of reach
    db.scalars(select(ExpertAvailability).where(
        ExpertAvailability.practitioner_id == c.b.practitioner_id)).one().max_travel_minutes = 30
    db.commit()
    plan = roster.propose(db, by=c.w.planner, month=month, months_back=1, time_limit=5)
    items = live(db, plan)
    per_day = {(i.practitioner_id, i.session_date) for i in items}
    assert len(per_day) == len(items), "one session a day per person"
    neuro = [i for i in items if i.practitioner_id == c.n.practitioner_id]
    assert len(neuro) == 2
    assert all(i.session_date.weekday() in (0, 2) and i.session_date != first_monday for i in neuro)
    assert all(month <= i.session_date < roster.next_month(month) and i.session_date > local_today() for i in items)
    assert not any(i.practitioner_id == c.b.practitioner_id for i in items)
    for i in items:
        limit = db.scalars(select(ExpertAvailability.max_travel_minutes).where(
            ExpertAvailability.practitioner_id == i.practitioner_id)).one()
        assert i.travel_minutes is not None and i.travel_minutes <= limit


def test_studio_expert_only_inside_the_agreement(db: Session, county: County) -> None:
    c = county
    month = next_month()
    for row in db.scalars(select(ExpertAvailability)):
        db.delete(row)
    c.w.agreement.ends_on = month + timedelta(days=9)
    offer(db, c.w.expert, c.w.county, None, max_travel=120, sessions=4, capacity=5,
          studio_team_id=c.w.studio.id)
    db.commit()
    plan = roster.propose(db, by=c.w.planner, month=month, months_back=1, time_limit=5)
    items = live(db, plan)
    assert items and all(i.session_date <= c.w.agreement.ends_on for i in items)
    assert all(i.studio_team_id == c.w.studio.id and i.specialty_id == c.w.cardiology.id for i in items)
    # an agreement that ended before the month leaves no day at all
    db.rollback()
    c.w.agreement.ends_on = month - timedelta(days=1)
    db.commit()
    with pytest.raises(Conflict) as refused:
        roster.propose(db, by=c.w.planner, month=month, months_back=1, time_limit=5)
    assert refused.value.code == "no_free_day" and "协议期" in refused.value.message


# ---------------------------------------------------------------------------- refusals

def _rosters(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(RosterPlan)) or 0


def test_bad_requests_are_explained_and_write_nothing(db: Session, county: County) -> None:
    c = county
    past = roster.month_start(local_today()) - timedelta(days=1)
    with pytest.raises(InvalidInput) as e1:
        roster.propose(db, by=c.w.planner, month=past, months_back=1)
    assert e1.value.field_errors[0]["field"] == "month" and "past" in e1.value.field_errors[0]["message"]
    with pytest.raises(InvalidInput) as e2:
        roster.propose(db, by=c.w.planner, month=next_month(), host_ids=[999999])
    assert e2.value.field_errors[0]["field"] == "host_ids" and "999999" in e2.value.field_errors[0]["message"]
    with pytest.raises(InvalidInput) as e3:
        roster.propose(db, by=c.w.planner, month=next_month(), host_ids=[c.village.id])
    assert "village" in e3.value.field_errors[0]["message"]
    with pytest.raises(AccessDenied):
        roster.propose(db, by=c.w.town_doctor, month=next_month())
    for row in db.scalars(select(ExpertAvailability)):
        row.max_sessions_per_month = 0
    db.flush()
    with pytest.raises(Conflict) as e4:
        roster.propose(db, by=c.w.planner, month=next_month(), months_back=1)
    assert e4.value.code == "no_sessions_allowed"
    for row in db.scalars(select(ExpertAvailability)):
        db.delete(row)
    db.flush()
    with pytest.raises(Conflict) as e5:
        roster.propose(db, by=c.w.planner, month=next_month(), months_back=1)
    assert e5.value.code == "no_availability" and "出诊意向" in e5.value.message
    db.rollback()
    assert _rosters(db) == 0


def test_no_demand_and_demand_already_covered(db: Session, county: County) -> None:
    c = county
    with pytest.raises(InvalidInput) as e1:  # only the hosts with nothing sent up
        roster.propose(db, by=c.w.planner, month=next_month(), months_back=1, host_ids=[c.tcm.id])
    assert e1.value.field_errors[0]["field"] == "months_back"
    # 石门镇 wants 20 a month; a published 20-place cardiology clinic there next month covers it
    day = next_month() + timedelta(days=3)
    clinic(db, c.w, day=day, capacity=20)
    with pytest.raises(Conflict) as e2:
        roster.propose(db, by=c.w.planner, month=next_month(), months_back=1, host_ids=[c.w.town.id])
    assert e2.value.code == "demand_covered"
    assert _rosters(db) == 0


def test_api_refusals_are_4xx(client, db: Session, county: County) -> None:  # noqa: ANN001
    head = f.bearer(client, "planner")
    past = (roster.month_start(local_today()) - timedelta(days=1)).isoformat()
    r1 = client.post("/api/v1/outreach/roster", json={"month": past, "months_back": 1}, headers=head)
    assert r1.status_code == 422 and r1.json()["field_errors"][0]["field"] == "month"
    r2 = client.post("/api/v1/outreach/roster", json={"month": next_month().isoformat(), "months_back": 1,
                                                     "host_ids": [999999]}, headers=head)
    assert r2.status_code == 422
    r3 = client.post("/api/v1/outreach/roster", json={"month": next_month().isoformat()},
                     headers=f.bearer(client, "town_doc"))
    assert r3.status_code == 403
    made = client.post("/api/v1/outreach/roster", json={"month": next_month().isoformat(), "months_back": 1,
                                                       "time_limit": 5}, headers=head)
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["covered"] == 45 and len(body["items"]) == 4 and body["number"].startswith("PB")
    rid = body["id"]
    assert client.get(f"/api/v1/outreach/roster/{rid}", headers=head).json()["id"] == rid
    item = body["items"][0]
    gone = client.post(f"/api/v1/outreach/roster/{rid}/items/{item['id']}/remove", headers=head)
    assert gone.status_code == 200 and len(gone.json()["items"]) == 3
    assert gone.json()["covered"] < 45
    published = client.post(f"/api/v1/outreach/roster/{rid}/publish", headers=head)
    assert published.status_code == 200 and published.json()["status"] == "published"
    again = client.post(f"/api/v1/outreach/roster/{rid}/publish", headers=head)
    assert again.status_code == 409 and again.json()["code"] == "roster_published"


# ---------------------------------------------------------------------------- adjusting and publishing

def test_publish_creates_sessions_once(db: Session, county: County) -> None:
    c = county
    plan = roster.propose(db, by=c.w.planner, month=next_month(), months_back=1, time_limit=5)
    db.commit()
    done, sessions = roster.publish(db, by=c.w.planner, roster_id=plan.id)
    db.commit()
    assert done.status == "published" and len(sessions) == 4
    shown = service.upcoming(db, days=75, host_ids=[c.hekou.id])
    assert [s.practitioner_id for s in shown] == [c.a.practitioner_id]
    assert shown[0].roster_id == plan.id and shown[0].kind == "clinic" and shown[0].capacity == 20
    assert all(i.session_id for i in live(db, plan))
    with pytest.raises(Conflict) as twice:
        roster.publish(db, by=c.w.planner, roster_id=plan.id)
    assert twice.value.code == "roster_published"
    with pytest.raises(Conflict):
        roster.remove_item(db, by=c.w.planner, roster_id=plan.id, item_id=live(db, plan)[0].id)
    assert db.scalar(select(func.count()).select_from(OutreachSession)) == 4


def test_move_onto_an_existing_session_is_refused_naming_it(db: Session, county: County) -> None:
    c = county
    plan = roster.propose(db, by=c.w.planner, month=next_month(), months_back=1, time_limit=5)
    db.commit()
    item = next(i for i in live(db, plan) if i.practitioner_id == c.b.practitioner_id)
    other_day = item.session_date + timedelta(days=1 if item.session_date.day < 20 else -1)
    existing = clinic(db, c.w, day=other_day, host=c.w.town)  # the county cardiologist, 09:00 at 石门镇
    with pytest.raises(Conflict) as refused:
        roster.move_item(db, by=c.w.planner, roster_id=plan.id, item_id=item.id, session_date=other_day)
    assert refused.value.code == "person_busy" and existing.number in refused.value.message
    db.rollback()
    # a weekday the expert does not work, a host beyond reach: refused, each naming why
    avail = db.scalars(select(ExpertAvailability).where(
        ExpertAvailability.practitioner_id == c.b.practitioner_id)).one()
    avail.weekdays, avail.max_sessions_per_month = [item.session_date.weekday()], 2
    db.commit()
    with pytest.raises(InvalidInput) as weekday:
        roster.move_item(db, by=c.w.planner, roster_id=plan.id, item_id=item.id,
                         session_date=item.session_date + timedelta(days=1 if item.session_date.day < 20 else -1))
    assert "只在" in weekday.value.field_errors[0]["message"]
    with pytest.raises(InvalidInput) as far:
        roster.move_item(db, by=c.w.planner, roster_id=plan.id, item_id=item.id, host_organisation_id=c.hekou.id)
    assert "上限 60" in far.value.field_errors[0]["message"]
    db.rollback()
    # a move that fits is taken, and the figures follow
    fine = item.session_date + timedelta(days=7) if item.session_date.day <= 21 else item.session_date - timedelta(7)
    moved = roster.move_item(db, by=c.w.planner, roster_id=plan.id, item_id=item.id, session_date=fine)
    assert moved.session_date == fine and moved.expected_local == 20


def test_publish_is_all_or_nothing(db: Session, county: County) -> None:
    c = county
    plan = roster.propose(db, by=c.w.planner, month=next_month(), months_back=1, time_limit=5)
    db.commit()
    item = next(i for i in live(db, plan) if i.practitioner_id == c.b.practitioner_id)
    # someone books the county cardiologist elsewhere that very morning after the roster was drawn
    clash = clinic(db, c.w, day=item.session_date, host=c.qingshan, hhmm="10:00")
    with pytest.raises(Conflict) as refused:
        roster.publish(db, by=c.w.planner, roster_id=plan.id)
    assert refused.value.code == "roster_conflicts"
    assert refused.value.field_errors[0]["field"] == f"items[{item.id}]"
    assert clash.number in refused.value.field_errors[0]["message"]
    db.rollback()
    assert db.get(RosterPlan, plan.id).status == "draft"
    assert db.scalar(select(func.count()).select_from(OutreachSession).where(
        OutreachSession.roster_id == plan.id)) == 0


def test_add_by_hand_is_checked(db: Session, county: County) -> None:
    c = county
    plan = roster.propose(db, by=c.w.planner, month=next_month(), months_back=1, time_limit=5)
    db.commit()
    day = next(d for d in (next_month() + timedelta(days=k) for k in range(28))
               if all(i.session_date != d for i in live(db, plan)))
    with pytest.raises(Conflict) as over:  # the TCM cardiologist's one session is already used
        roster.add_item(db, by=c.w.planner, roster_id=plan.id, practitioner_id=c.a.practitioner_id,
                        host_organisation_id=c.w.town.id, session_date=day)
    assert over.value.code == "max_sessions"
    with pytest.raises(InvalidInput) as nobody:
        roster.add_item(db, by=c.w.planner, roster_id=plan.id, practitioner_id=c.w.town_doctor.practitioner_id,
                        host_organisation_id=c.w.town.id, session_date=day)
    assert "没有登记出诊意向" in nobody.value.field_errors[0]["message"]
    db.rollback()
    avail = db.scalars(select(ExpertAvailability).where(
        ExpertAvailability.practitioner_id == c.a.practitioner_id)).one()
    avail.max_sessions_per_month = 2
    db.commit()
    added = roster.add_item(db, by=c.w.planner, roster_id=plan.id, practitioner_id=c.a.practitioner_id,
                            host_organisation_id=c.w.town.id, session_date=day, capacity=10)
    assert added.added_by_planner and added.specialty_id == c.w.cardiology.id and "手工添加" in added.reason
    # 石门镇's 20 are now shared by two sessions (20 + 10 places) in proportion
    town = [i for i in live(db, plan) if i.host_organisation_id == c.w.town.id]
    assert sorted(round(i.expected_local, 2) for i in town) == [6.67, 13.33]


def test_studio_membership_required(db: Session, county: County) -> None:
    c = county
    db.execute(TeamMember.__table__.delete().where(TeamMember.team_id == c.w.studio.id))
    for row in db.scalars(select(ExpertAvailability)):
        db.delete(row)
    offer(db, c.w.expert, c.w.county, None, studio_team_id=c.w.studio.id)
    db.commit()
    with pytest.raises(Conflict) as refused:
        roster.propose(db, by=c.w.planner, month=next_month(), months_back=1, time_limit=5)
    assert refused.value.code == "not_studio_member"
    assert db.get(Practitioner, c.w.expert.practitioner_id) is not None


def test_a_session_must_be_worth_the_trip(db: Session, county: County) -> None:
    d1, d2, d3 = date(2031, 3, 3), date(2031, 3, 4), date(2031, 3, 5)
    expert = roster.ExpertSupply(1, 7, 20, 3, (d1, d2, d3), {10: 9.0, 11: 20.0, 12: 30.0})
    demand = {(10, 7): 12, (11, 7): 2, (12, 7): 1}
    anyone = roster.Problem(experts=[expert], demand=demand, time_limit=5)
    assert roster.solve(anyone).total_covered == 15 and len(roster.solve(anyone).assignments) == 3
    worth = roster.Problem(experts=[expert], demand=demand, time_limit=5, min_patients=3)
    for solution in (roster.greedy(worth), roster.solve(worth)):
        assert [a.host for a in solution.assignments] == [10], solution  # one session, where 12 are waiting
        assert solution.total_covered == 12
    # Through propose: a minimum above every (host, specialty)'s demand is explained, and nothing is written.
    with pytest.raises(Conflict) as exc:
        roster.propose(db, by=county.w.planner, month=next_month(), months_back=1, min_patients=100)
    assert exc.value.code == "demand_too_small" and exc.value.field_errors[0]["field"] == "min_patients"
    with pytest.raises(InvalidInput):
        roster.propose(db, by=county.w.planner, month=next_month(), min_patients=0)
    assert _rosters(db) == 0


def test_the_minimum_comes_from_the_countys_setting_unless_asked(db: Session, county: County) -> None:
    from healthrelay.outreach.models import OutreachSetting

    assert roster.default_min_patients(db) == 3  # seeded by the migration
    db.get(OutreachSetting, "roster_min_patients").value = 100  # type: ignore[union-attr]
    db.commit()
    with pytest.raises(Conflict) as exc:
        roster.propose(db, by=county.w.planner, month=next_month(), months_back=1)
    assert exc.value.code == "demand_too_small"
    db.rollback()
    plan = roster.propose(db, by=county.w.planner, month=next_month(), months_back=1, min_patients=1)
    assert plan.params["min_patients"] == 1 and live(db, plan)
