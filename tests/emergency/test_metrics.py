"""Response metrics on constructed calls whose shares are known."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from healthrelay.core.errors import InvalidInput
from healthrelay.emergency import metrics
from healthrelay.emergency.models import CallCategory, CallState, EmergencyCall
from tests.emergency.conftest import EmWorld

_seq = iter(range(1, 10_000))


def _call(db: Session, w: EmWorld, *, at: datetime, answer_s: float, depart_s: float | None, scene_min: float | None,
          urban: bool, station_id: int | None) -> EmergencyCall:
    n = next(_seq)
    dispatched = at + timedelta(seconds=answer_s + 60)
    call = EmergencyCall(
        number=f"JJT-{n:05d}", category=CallCategory.OTHER, priority=3, complaint="测试", latitude=30.0,
        longitude=110.02, urban=urban, state=CallState.CLOSED, received_at=at,
        answered_at=at + timedelta(seconds=answer_s),
        dispatched_at=dispatched if depart_s is not None else None,
        departed_at=dispatched + timedelta(seconds=depart_s) if depart_s is not None else None,
        on_scene_at=at + timedelta(minutes=scene_min) if scene_min is not None else None,
        closed_at=at + timedelta(hours=1), station_organisation_id=station_id, recommendation={})
    db.add(call)
    return call


# December 2026 in Shanghai; one call on 30 Nov 20:00 UTC is already 1 Dec 04:00 in China.
DEC = datetime(2026, 12, 2, 2, 0, tzinfo=UTC)


@pytest.fixture
def calls(db: Session, world: EmWorld) -> EmWorld:
    s = world.station.id
    # City station, urban, December: 10 calls; answered late 1 (9/10), departed late 2 (8/10),
    # on scene: 3 over 10 min (7/10).
    for i in range(10):
        _call(db, world, at=DEC + timedelta(hours=i), answer_s=12 if i == 0 else 5, depart_s=200 if i in (1, 2) else 90,
              scene_min=11 if i in (3, 4, 5) else 9, urban=True, station_id=s)
    # City station, rural, December: 4 calls, all on scene in 25 min (a 25-minute rural arrival meets 30).
    for i in range(4):
        _call(db, world, at=DEC + timedelta(days=1, hours=i), answer_s=3, depart_s=60, scene_min=25, urban=False,
              station_id=s)
    # The sub-station, rural, in November (Shanghai) and the edge case in December.
    _call(db, world, at=datetime(2026, 11, 15, 3, tzinfo=UTC), answer_s=3, depart_s=60, scene_min=35, urban=False,
          station_id=world.substation.id)
    _call(db, world, at=datetime(2026, 11, 30, 20, tzinfo=UTC), answer_s=3, depart_s=60, scene_min=20, urban=False,
          station_id=world.substation.id)
    # A call cancelled before dispatch: counts for answering only.
    _call(db, world, at=DEC, answer_s=30, depart_s=None, scene_min=None, urban=False, station_id=None)
    db.commit()
    return world


def _row(rows: list[metrics.MetricRow], station: int | None, month: str, urban: bool) -> metrics.MetricRow:
    [row] = [r for r in rows if r.station_id == station and r.month == month and r.urban == urban]
    return row


def test_shares_per_station_month_and_area(db: Session, calls: EmWorld) -> None:
    rows = metrics.response_metrics(db)
    urban = _row(rows, calls.station.id, "2026-12", True)
    assert urban.calls == 10
    assert (urban.answer.met, urban.answer.counted) == (9, 10)
    assert (urban.depart.met, urban.depart.counted) == (8, 10)
    assert (urban.on_scene.met, urban.on_scene.counted) == (7, 10)
    rural = _row(rows, calls.station.id, "2026-12", False)
    assert rural.on_scene.share == 1.0 and rural.calls == 4


def test_months_are_counted_in_china_time(db: Session, calls: EmWorld) -> None:
    rows = metrics.response_metrics(db)
    assert _row(rows, calls.substation.id, "2026-11", False).calls == 1
    assert _row(rows, calls.substation.id, "2026-12", False).calls == 1


def test_a_call_never_dispatched_counts_for_answering_only(db: Session, calls: EmWorld) -> None:
    row = _row(metrics.response_metrics(db), None, "2026-12", False)
    assert (row.answer.met, row.answer.counted, row.depart.counted, row.on_scene.counted) == (0, 1, 0, 0)


def test_totals_roll_up(db: Session, calls: EmWorld) -> None:
    rows = metrics.response_metrics(db)
    total = metrics.totals(rows)["all"]
    assert total.calls == 17
    assert (total.answer.met, total.answer.counted) == (15, 17)
    by_station = metrics.totals(rows, key="station")
    assert by_station[calls.station.id].calls == 14


def test_the_calls_that_missed_are_listed(db: Session, calls: EmWorld) -> None:
    late = metrics.missed_calls(db, target="on_scene", station_id=calls.station.id, month="2026-12", urban=True)
    assert len(late) == 3 and all(c.on_scene_at - c.received_at > timedelta(minutes=10) for c in late)  # type: ignore[operator]
    rural_late = metrics.missed_calls(db, target="on_scene", urban=False)
    assert [c.station_organisation_id for c in rural_late] == [calls.substation.id]  # 35 min > 30
    assert len(metrics.missed_calls(db, target="depart")) == 2


def test_a_tighter_target_in_the_table_changes_the_share(db: Session, calls: EmWorld) -> None:
    from healthrelay.emergency.models import ResponseTarget

    db.get(ResponseTarget, "depart_minutes").limit_value = 1  # type: ignore[union-attr]
    db.commit()
    urban = _row(metrics.response_metrics(db), calls.station.id, "2026-12", True)
    assert urban.depart.met == 0


def test_bad_filters_are_refused(db: Session, calls: EmWorld) -> None:
    with pytest.raises(InvalidInput):
        metrics.missed_calls(db, target="speed")
    with pytest.raises(InvalidInput):
        metrics.missed_calls(db, target="answer", month="12/2026")


def test_excel_export_has_a_row_per_group(db: Session, calls: EmWorld) -> None:
    from openpyxl import load_workbook

    rows = metrics.response_metrics(db)
    wb = load_workbook(io.BytesIO(metrics.to_xlsx(rows, metrics.Limits.from_db(db))))
    ws = wb.active
    data = [r for r in ws.iter_rows(min_row=2, values_only=True) if r[1]]
    assert len(data) == len(rows)
    urban = [r for r in data if r[1] == "2026-12" and r[2].startswith("城区")][0]
    assert urban[4:7] == (90.0, 80.0, 70.0)


def test_the_demo_year_is_closed_plausible_and_built_once(db: Session, world: EmWorld) -> None:
    from sqlalchemy import func, select

    from healthrelay.core.db import utcnow
    from healthrelay.demo.emergency import CALLS_PER_YEAR, build_demo_emergency
    from healthrelay.emergency.models import Ambulance

    now = utcnow()
    made = build_demo_emergency(db, seed=3, now=now)
    db.commit()
    assert made["calls"] == CALLS_PER_YEAR and made["ambulances"] == 0  # the world's three were kept
    states = dict(db.execute(select(EmergencyCall.state, func.count()).group_by(EmergencyCall.state)).all())
    assert set(states) == {"closed", "cancelled"} and states["cancelled"] < 0.06 * CALLS_PER_YEAR
    assert db.execute(select(func.max(EmergencyCall.closed_at))).scalar() < now  # type: ignore[operator]
    assert {a.state for a in db.execute(select(Ambulance)).scalars()} == {"available"}
    total = metrics.totals(metrics.response_metrics(db))["all"]
    assert 0.9 <= (total.answer.share or 0) <= 0.99 and 0.9 <= (total.depart.share or 0) <= 0.99
    assert build_demo_emergency(db, seed=3, now=now)["calls"] == 0
