"""National metrics on constructed cases whose answers are known."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from healthrelay.core.errors import AccessDenied
from healthrelay.pathways import metrics, service
from healthrelay.pathways.models import PathwayCase
from tests.pathways.conftest import PathwayWorld

SEPT = datetime(2026, 9, 10, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
OCT = datetime(2026, 10, 12, 2, 0, tzinfo=UTC)


def _case(db: Session, w: PathwayWorld, opened: datetime, *, door_to_balloon: float | None = None,
          hospital: int | None = None, ambulance: bool = False, bypass: bool | None = None,
          transmitted: float | None = None, centre: str = "chest_pain", dnt: float | None = None,
          diagnosis_code: str = "stemi") -> PathwayCase:
    """A case opened at `opened` whose door is 60 min later; `transmitted` minutes after opening."""
    door = opened + timedelta(minutes=60)
    nodes: dict[str, datetime] = {"first_medical_contact": opened, "arrival": door}
    if door_to_balloon is not None:
        nodes["wire_crossing"] = door + timedelta(minutes=door_to_balloon)
    if transmitted is not None:
        nodes["first_ecg"] = opened + timedelta(minutes=1)
        nodes["ecg_transmitted"] = opened + timedelta(minutes=transmitted)
    if dnt is not None:
        nodes["ct"] = door + timedelta(minutes=5)
        nodes["needle"] = door + timedelta(minutes=dnt)
    case = service.open_case(db, centre=centre, patient_id=None, by=None, source="manual",
                             hospital_organisation_id=hospital or w.county.id, nodes=nodes,
                             arrival_mode="ambulance" if ambulance else "self", bypass_ed=bypass,
                             diagnosis_code=diagnosis_code if centre == "chest_pain" else "",
                             opened_organisation_id=w.town.id)
    case.opened_at = opened
    db.flush()
    return case


def _series(result: list[metrics.MetricSeries], code: str) -> metrics.MetricSeries:
    return next(s for s in result if s.target.code == code)


def test_door_to_balloon_by_month_with_the_share_rule_and_the_missed_cases(db: Session, world: PathwayWorld) -> None:
    w = world
    sept = [_case(db, w, SEPT + timedelta(hours=i), door_to_balloon=m) for i, m in enumerate((60, 80, 100, 120))]
    octo = [_case(db, w, OCT + timedelta(hours=i), door_to_balloon=m) for i, m in enumerate((50, 70, 80, 90, 95))]
    _case(db, w, OCT, door_to_balloon=30, hospital=w.outsider.id)  # another hospital's
    cancelled = _case(db, w, OCT, door_to_balloon=200)
    service.cancel(db, case_id=cancelled.id, by=None, reason="重复建档 / duplicate")
    _case(db, w, OCT)  # no balloon (yet): not in D2B
    db.commit()
    result = metrics.compute(db, first_month=date(2026, 8, 1), last_month=date(2026, 10, 1),
                             centre="chest_pain", hospital_organisation_id=w.county.id)
    d2b = _series(result, "d2b")
    aug, sep, oct_ = d2b.months
    assert (aug.month, aug.cases, aug.met) == ("2026-08", 0, None)
    # September: 60, 80, 100, 120 → mean 90 (≤ 90) but only 2 of 4 on target: 50% < 75% → missed.
    assert (sep.cases, sep.on_target, sep.mean, sep.median, sep.share, sep.met) == (4, 2, 90.0, 90.0, 0.5, False)
    assert [(m.number, m.minutes) for m in sep.missed] == [(sept[3].number, 120.0), (sept[2].number, 100.0)]
    # October: 50, 70, 80, 90 (exactly 90 is on target: ≤), 95 → 4 of 5 = 80%, mean 77, median 80.
    assert (oct_.cases, oct_.on_target, oct_.mean, oct_.median, oct_.share, oct_.met) == (5, 4, 77.0, 80.0, 0.8, True)
    assert [m.case_id for m in oct_.missed] == [octo[4].id]
    everyone = metrics.compute(db, first_month=date(2026, 10, 1), last_month=date(2026, 10, 1), centre="chest_pain")
    assert _series(everyone, "d2b").months[0].cases == 6  # the other hospital's case too, never the cancelled one


def test_shares_of_ambulance_stemi_patients(db: Session, world: PathwayWorld) -> None:
    w = world
    _case(db, w, SEPT, ambulance=True, bypass=True, transmitted=10)  # ECG sent before the door: counts
    _case(db, w, SEPT, ambulance=True, bypass=False, transmitted=70)  # sent after the door: does not
    _case(db, w, SEPT, ambulance=True)
    _case(db, w, SEPT, ambulance=True, bypass=True, diagnosis_code="nstemi")  # not STEMI: not in the population
    _case(db, w, SEPT, ambulance=False, bypass=True)  # walked in: not in the population
    _case(db, w, SEPT - timedelta(days=20), ambulance=True, transmitted=5)  # August: another month, another door
    db.commit()
    result = metrics.compute(db, first_month=date(2026, 9, 1), last_month=date(2026, 9, 1), centre="chest_pain")
    bypass = _series(result, "bypass_ed").months[0]
    ecg = _series(result, "prehospital_ecg").months[0]
    assert (bypass.cases, bypass.on_target, bypass.met) == (3, 1, True)  # 33% ≥ 30%
    assert (ecg.cases, ecg.on_target, ecg.met) == (3, 1, True)
    assert len(bypass.missed) == 2 and bypass.missed[0].minutes is None


def test_door_to_needle(db: Session, world: PathwayWorld) -> None:
    for minutes in (40, 55, 75):
        _case(db, world, OCT, centre="stroke", dnt=minutes)
    db.commit()
    result = metrics.compute(db, first_month=date(2026, 10, 1), last_month=date(2026, 10, 1), centre="stroke")
    dnt = _series(result, "dnt").months[0]
    assert (dnt.cases, dnt.on_target, dnt.median, round(dnt.mean or 0, 2), dnt.met) == (3, 2, 55.0, 56.67, True)
    assert [m.minutes for m in dnt.missed] == [75.0]


def test_scope(db: Session, world: PathwayWorld) -> None:
    from healthrelay.accounts.models import Role
    from tests import factories as f

    assert metrics.scope_for(world.bureau) is None
    assert metrics.scope_for(world.bureau, world.county.id) == world.county.id
    assert metrics.scope_for(world.cardiologist, world.outsider.id) == world.county.id
    with pytest.raises(AccessDenied):
        metrics.scope_for(f.user(db, role=Role.PATIENT, patient=world.patient))
