"""The demo county's chronic disease content: registries sized like a real county's, derived columns that agree
with the stored visits and readings under `chronic.rules`, the showcase patients, and a deterministic build."""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from healthrelay.access.service import decide
from healthrelay.accounts.models import User
from healthrelay.audit.models import AuditEvent
from healthrelay.chronic import followups
from healthrelay.chronic import rules as R
from healthrelay.chronic.models import (
    ChronicCall,
    ChronicEnrolment,
    ChronicFollowUp,
    ChronicReading,
    ChronicTask,
    FamilyDoctorContract,
    MonitoringPoint,
)
from healthrelay.core.db import LOCAL_TZ, utcnow
from healthrelay.demo import county
from healthrelay.demo.chronic import (
    AUDIT_ACTION,
    HTN_MEDICINES,
    SHOWCASE_BP,
    SHOWCASE_DAYS_AGO,
    T2DM_MEDICINES,
    build_demo_chronic,
    showcase_controlled_enrolment,
    showcase_enrolment,
)
from healthrelay.demo.logins import logins
from healthrelay.directory.models import Area, Organisation, OrgKind, Team, TeamKind
from healthrelay.patients.models import Patient
from healthrelay.referrals.models import Direction, Referral, State
from healthrelay.screening.models import ScreeningResult
from tests.conftest import DEMO_SEED as SEED


def _today() -> date:
    return datetime.now(LOCAL_TZ).date()


def _local_day(at: datetime) -> date:
    return at.astimezone(LOCAL_TZ).date()


def _enrolments(db: Session, code: str | None = None) -> list[tuple[ChronicEnrolment, Patient]]:
    query = select(ChronicEnrolment, Patient).join(Patient, Patient.id == ChronicEnrolment.patient_id)
    if code:
        query = query.where(ChronicEnrolment.condition_code == code)
    return [(e, p) for e, p in db.execute(query.order_by(ChronicEnrolment.id)).all()]


def test_every_village_clinic_and_centre_has_a_monitoring_point(built: list[str], db: Session) -> None:
    points = list(db.execute(select(MonitoringPoint)).scalars())
    clinics = set(db.execute(select(Organisation.id).where(Organisation.kind == OrgKind.VILLAGE_CLINIC)).scalars())
    centres = set(db.execute(select(Organisation.id).where(
        Organisation.kind.in_([OrgKind.TOWNSHIP_CENTRE, OrgKind.COMMUNITY_CENTRE]))).scalars())
    assert {p.organisation_id for p in points if p.kind == "village_point"} == clinics
    assert {p.organisation_id for p in points if p.kind == "clinic"} == centres
    assert all(p.name.endswith("血压监测点") for p in points if p.kind == "village_point")
    assert any(p.device_serials for p in points)
    assert any("chronic:" in line and "hypertension" in line for line in built)


def test_registries_are_managed_shares_of_the_expected_cases(built: list[str], db: Session) -> None:
    today = _today()
    adults = sum(1 for b in db.execute(select(Patient.birth_date).where(Patient.merged_into_id.is_(None))).scalars()
                 if R.age_on(b, today) >= 35)
    htn, t2dm = _enrolments(db, "htn"), _enrolments(db, "t2dm")
    # About 60-70% of the 27.9% expected among adults 35+; diabetes 25-35% of 11.2% (wider: a small county).
    assert 0.45 <= len(htn) / (adults * 0.279) <= 0.85
    assert 0.12 <= len(t2dm) / (adults * 0.112) <= 0.6
    ages = [R.age_on(p.birth_date, today) for _, p in htn]
    assert min(ages) >= 35 and sum(a >= 65 for a in ages) > len(ages) / 3  # older people more often
    teams = {t.id: t for t in db.execute(select(Team)).scalars()}
    names = {n for n, _, _ in HTN_MEDICINES + T2DM_MEDICINES}
    for e, p in htn + t2dm:
        team = teams[e.team_id]
        assert p.area_id in team.area_ids and e.village_area_id == p.area_id
        assert e.organisation_id == team.organisation_id
        assert today - timedelta(days=8 * 365 + 2) <= e.diagnosed_on <= _local_day(e.enrolled_at) < today
        assert e.medicines and {m["name"] for m in e.medicines} <= names
    assert sum(bool(e.complications) for e, _ in htn) >= 1
    assert len({e.source for e, _ in htn + t2dm}) >= 3


def test_control_overdue_and_lost_shares_are_plausible(built: list[str], db: Session) -> None:
    today, now = _today(), utcnow()
    rules = R.rules_for(db, "htn")
    active = [(e, p) for e, p in _enrolments(db, "htn") if e.status == "active"]
    overdue = [e for e, _ in active if e.next_visit_due < today
               and (e.hidden_until is None or e.hidden_until < today)]
    assert 0.08 <= len(overdue) / len(active) <= 0.35
    denominator = [(e, p) for e, p in active if _local_day(e.enrolled_at) <= today - timedelta(days=90)]
    window = now - timedelta(days=rules.control_window_days)
    controlled = [e for e, p in denominator if e.last_bp_at and e.last_bp_at >= window
                  and R.bp_controlled(rules, sbp=e.last_sbp, dbp=e.last_dbp, age=R.age_on(p.birth_date, today))]
    seen = [e for e, _ in denominator if e.last_bp_at and e.last_bp_at >= window]
    assert 0.35 <= len(controlled) / len(denominator) <= 0.8
    assert 0.5 <= len(controlled) / len(seen) <= 0.85
    lost = [e for e, _ in active if e.last_contact_at is None or e.last_contact_at < now - timedelta(days=365)]
    assert 1 <= len(lost) <= len(active) * 0.15
    visits = list(db.execute(select(ChronicFollowUp)).scalars())
    modes = Counter(v.mode for v in visits)
    assert modes["clinic"] > modes["home"] > 0 and modes["phone"] > 0
    assert {v.visit_on for v in visits} and min(v.visit_on for v in visits) >= today - timedelta(days=731)
    assert max(v.visit_on for v in visits) < today


def _replay(rules: R.ConditionRules, e: ChronicEnrolment, patient: Patient, visits: list[ChronicFollowUp],
            readings: list[ChronicReading]) -> None:
    """Check the stored derived columns against the stored visits and point readings, with the rules and the
    schedule of chronic.followups (a phone call only brings a review forward)."""
    streak, due, kind = 0, None, "first"
    for v in visits:
        age = R.age_on(patient.birth_date, v.visit_on)
        label, uncontrolled, _ = R.classify_visit(
            rules, sbp=v.sbp, dbp=v.dbp, fasting_glucose=v.fasting_glucose, age=age, side_effects=v.side_effects,
            new_complication=v.classification == R.COMPLICATION)
        assert v.classification == label, (e.id, v.visit_on)
        assert set(v.symptoms) <= set(followups.SYMPTOMS)
        streak = streak + 1 if uncontrolled else 0
        face = v.mode in ("clinic", "home")
        if uncontrolled:
            review = v.visit_on + timedelta(days=rules.review_days)
            if face or due is None or review < due:
                due, kind = review, "review"
        elif face or due is None:
            due, kind = v.visit_on + timedelta(days=rules.routine_days), "routine"
        assert v.next_visit_on == due, (e.id, v.visit_on)
    if not visits:
        assert e.last_classification == "" and e.last_visit_on is None and e.last_contact_at is None
        return
    last = visits[-1]
    assert e.last_classification == last.classification and e.uncontrolled_streak == streak
    assert (e.next_visit_due, e.next_visit_kind) == (due, kind)
    face_days = [v.visit_on for v in visits if v.mode in ("clinic", "home")]
    assert e.last_visit_on == (face_days[-1] if face_days else None)
    _, _, danger = R.classify_visit(rules, sbp=last.sbp, dbp=last.dbp, fasting_glucose=last.fasting_glucose,
                                    age=0, side_effects="", new_complication=False)
    risk = R.risk_after_visit(danger=danger, classification=last.classification)
    later = [r for r in readings if _local_day(r.measured_at) > last.visit_on]
    if any((r.sbp and R.bp_danger(rules, sbp=r.sbp, dbp=r.dbp))
           or (r.glucose_mmol and R.glucose_danger(rules, value=r.glucose_mmol)) for r in later):
        risk = R.RISK_DANGER
    if not any(_local_day(r.measured_at) == last.visit_on for r in readings):
        assert e.risk_level == risk
    # The latest blood pressure: a later point reading's, else the last visit's that had one.
    bps = [(v.visit_on, v.sbp, v.dbp) for v in visits if v.sbp is not None]
    bps += [(_local_day(r.measured_at), r.sbp, r.dbp) for r in readings if r.kind == "bp"]
    if bps:
        latest_day = max(b[0] for b in bps)
        assert (e.last_sbp, e.last_dbp) in {(b[1], b[2]) for b in bps if b[0] == latest_day}
        assert _local_day(e.last_bp_at) == latest_day
    else:
        assert e.last_sbp is None
    contacts = [v.visit_on for v in visits] + [_local_day(r.measured_at) for r in readings]
    assert _local_day(e.last_contact_at) == max(contacts)


def test_derived_columns_agree_with_the_stored_visits_and_readings(built: list[str], db: Session) -> None:
    rules = {c: R.rules_for(db, c) for c in ("htn", "t2dm")}
    visits: dict[int, list[ChronicFollowUp]] = {}
    for v in db.execute(select(ChronicFollowUp).order_by(ChronicFollowUp.visit_on, ChronicFollowUp.id)).scalars():
        visits.setdefault(v.enrolment_id, []).append(v)
    readings: dict[int, list[ChronicReading]] = {}  # at the points: a visit's own numbers come with the visit
    for r in db.execute(select(ChronicReading).where(ChronicReading.source != "follow_up")).scalars():
        readings.setdefault(r.patient_id, []).append(r)
    # Every visit's numbers are also stored as readings of source follow_up (what the control rate reads).
    own = db.execute(select(func.count()).select_from(ChronicReading)
                     .where(ChronicReading.source == "follow_up")).scalar_one()
    assert own == sum(int(v.sbp is not None) + int(v.fasting_glucose is not None) for vs in visits.values() for v in vs)
    checked = 0
    for e, p in _enrolments(db):
        _replay(rules[e.condition_code], e, p, visits.get(e.id, []), readings.get(p.id, []))
        checked += 1
    assert checked > 50
    assert any(e.risk_level == R.RISK_DANGER for e, _ in _enrolments(db)) or any(
        v.classification == R.UNCONTROLLED and v.sbp and v.sbp >= 180 for vs in visits.values() for v in vs)


def test_calls_hide_overdue_patients_or_close_the_enrolment(built: list[str], db: Session) -> None:
    calls = list(db.execute(select(ChronicCall)).scalars())
    assert calls
    hide = {"agreed_to_visit": 14, "call_later": 3, "no_answer": 1}
    latest: dict[int, ChronicCall] = {}
    for c in sorted(calls, key=lambda c: c.called_at):
        latest[c.enrolment_id] = c
    for c in latest.values():
        e = db.get_one(ChronicEnrolment, c.enrolment_id)
        if c.outcome_code in hide:
            assert c.hidden_until == _local_day(c.called_at) + timedelta(days=hide[c.outcome_code])
            assert e.hidden_until == c.hidden_until and e.status == "active"
            assert e.next_visit_due < _local_day(c.called_at)  # only overdue patients are called
        else:
            assert e.status == c.outcome_code and e.closed_at == c.called_at


def _showcase_village() -> county.VillageSite:
    return county.geography().villages_by_township[3][0]


def test_the_showcase_patient_is_one_uncontrolled_visit_away_from_a_referral(built: list[str], db: Session) -> None:
    today = _today()
    e = showcase_enrolment(db)
    village = _showcase_village()
    patient = db.get_one(Patient, e.patient_id)
    assert e.condition_code == "htn" and e.status == "active"
    assert (e.last_sbp, e.last_dbp) == SHOWCASE_BP and e.last_classification == R.UNCONTROLLED
    assert e.uncontrolled_streak == 1 and e.risk_level == R.RISK_HIGH and e.hidden_until is None
    assert e.last_visit_on == today - timedelta(days=SHOWCASE_DAYS_AGO)
    assert e.next_visit_kind == "review" and e.next_visit_due == e.last_visit_on + timedelta(days=14) < today
    # The documented query finds the same row alone: the team serving the village, 162/98, streak 1.
    area = db.execute(select(Area).where(Area.code == village.code)).scalar_one()
    team = next(t for t in db.execute(select(Team).order_by(Team.id)).scalars()
                if t.kind == TeamKind.FAMILY_DOCTOR and area.id in t.area_ids)
    found = db.execute(select(ChronicEnrolment.id).where(
        ChronicEnrolment.team_id == team.id, ChronicEnrolment.condition_code == "htn",
        ChronicEnrolment.last_sbp == SHOWCASE_BP[0], ChronicEnrolment.last_dbp == SHOWCASE_BP[1],
        ChronicEnrolment.uncontrolled_streak == 1)).scalars().all()
    assert found == [e.id] and e.team_id == team.id
    # In the village itself when it has residents old enough (the full demo); the small one borrows a neighbour.
    if db.execute(select(func.count()).where(Patient.area_id == area.id)).scalar_one() >= 10:
        assert patient.area_id == area.id
    # One more uncontrolled visit makes two in a row: the rule that proposes the referral.
    _, uncontrolled, _ = R.classify_visit(R.rules_for(db, "htn"), sbp=158, dbp=96, fasting_glucose=None,
                                          age=R.age_on(patient.birth_date, today), side_effects="",
                                          new_complication=False)
    assert uncontrolled and e.uncontrolled_streak + 1 >= 2
    # The village doctor of that village sees the patient through the team's panel.
    vdoc_name = next(login.username for login in logins() if login.org_code == village.clinic_code)
    vdoc = db.execute(select(User).where(User.username == vdoc_name)).scalar_one()
    assert decide(db, user=vdoc, patient_id=e.patient_id) is not None
    detail = db.execute(select(AuditEvent.detail).where(AuditEvent.action == AUDIT_ACTION)).scalar_one()
    assert detail["uncontrolled_patient_id"] == e.patient_id


def test_the_controlled_showcase_and_the_patient_login(built: list[str], db: Session) -> None:
    today, now = _today(), utcnow()
    rules = R.rules_for(db, "htn")
    e = showcase_controlled_enrolment(db)
    patient = db.get_one(Patient, e.patient_id)
    assert e.last_classification == R.CONTROLLED and e.next_visit_due < today and e.next_visit_kind == "routine"
    assert e.last_bp_at >= now - timedelta(days=rules.control_window_days)
    assert R.bp_controlled(rules, sbp=e.last_sbp, dbp=e.last_dbp, age=R.age_on(patient.birth_date, today))
    login = db.execute(select(User).where(User.username == "patient.shimen")).scalar_one()
    mine = db.execute(select(ChronicEnrolment).where(ChronicEnrolment.patient_id == login.patient_id,
                                                     ChronicEnrolment.condition_code == "htn")).scalar_one()
    assert mine.status == "active" and mine.last_classification == R.CONTROLLED
    contract = db.execute(select(FamilyDoctorContract).where(FamilyDoctorContract.patient_id == login.patient_id,
                                                             FamilyDoctorContract.status == "active")).scalar_one()
    assert contract.package_code == "chronic" and contract.team_id == mine.team_id
    assert contract.starts_on <= today <= contract.ends_on


def test_contracts_cover_most_patients_once_each(built: list[str], db: Session) -> None:
    today = _today()
    contracts = list(db.execute(select(FamilyDoctorContract)).scalars())
    active = [c for c in contracts if c.status == "active"]
    per_patient = Counter(c.patient_id for c in active)
    assert per_patient and max(per_patient.values()) == 1
    assert all(c.starts_on <= today <= c.ends_on for c in active)
    ended = [c for c in contracts if c.status == "ended"]
    assert ended and all(c.ends_on < today and c.ended_at is not None for c in ended)
    assert len({c.number for c in contracts}) == len(contracts)
    assert {c.package_code for c in contracts} == {"chronic", "elderly", "basic"}
    enrolled = {e.patient_id for e, _ in _enrolments(db)}
    assert len(enrolled & set(per_patient)) >= 0.7 * len(enrolled)
    teams = {t.id: t for t in db.execute(select(Team)).scalars()}
    areas = {pid: area for pid, area in db.execute(select(Patient.id, Patient.area_id)).all()}
    assert all(areas[c.patient_id] in teams[c.team_id].area_ids for c in contracts)


def test_referral_checks_follow_proposed_referrals(built: list[str], db: Session) -> None:
    tasks = list(db.execute(select(ChronicTask).where(ChronicTask.kind == "referral_check")).scalars())
    assert tasks
    county_id = db.execute(select(Organisation.id).where(Organisation.code == county.COUNTY_HOSPITAL)).scalar_one()
    for task in tasks:
        referral = db.get_one(Referral, task.referral_id)
        assert referral.state == State.DRAFT and referral.direction == Direction.UP
        assert referral.to_organisation_id == county_id and referral.patient_id == task.patient_id
        visit = db.execute(select(ChronicFollowUp).where(ChronicFollowUp.referral_id == referral.id)).scalar_one()
        enrolment = db.get_one(ChronicEnrolment, visit.enrolment_id)
        assert enrolment.last_visit_on == visit.visit_on and task.enrolment_id == enrolment.id
        assert enrolment.uncontrolled_streak >= 2 or enrolment.risk_level == R.RISK_DANGER
        assert task.due_on == visit.visit_on + timedelta(days=14) and task.team_id == enrolment.team_id
        assert task.status == "open"


def _fingerprint(db: Session) -> list[tuple[object, ...]]:
    return [(e.patient_id, e.condition_code, e.diagnosed_on, e.next_visit_due, e.last_sbp, e.last_glucose,
             e.risk_level, e.status) for e in db.execute(select(ChronicEnrolment).order_by(
                 ChronicEnrolment.patient_id, ChronicEnrolment.condition_code)).scalars()]


def _clear(db: Session) -> None:
    db.execute(update(ScreeningResult).values(task_id=None))  # the screening stage's findings point at tasks
    for model in (ChronicTask, ChronicCall, ChronicFollowUp, ChronicReading, FamilyDoctorContract, ChronicEnrolment,
                  MonitoringPoint):
        db.execute(delete(model))


def test_the_same_seed_builds_the_same_content(built: list[str], db: Session) -> None:
    first = db.execute(select(AuditEvent).where(AuditEvent.action == AUDIT_ACTION)).scalar_one()
    before = _fingerprint(db)
    _clear(db)
    again = build_demo_chronic(db, seed=SEED, now=first.occurred_at)
    assert again == {k: first.detail[k] for k in again}
    assert _fingerprint(db) == before
    _clear(db)
    other = build_demo_chronic(db, seed=SEED + 1, now=first.occurred_at)
    assert other["monitoring_points"] == again["monitoring_points"] and _fingerprint(db) != before
    assert db.execute(select(func.count()).select_from(ChronicEnrolment)).scalar_one() == (
        other["htn_enrolments"] + other["t2dm_enrolments"])
