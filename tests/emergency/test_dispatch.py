"""The recommendation on a tiny road with known times (see conftest: every stretch is 6 minutes)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from healthrelay.core.db import utcnow
from healthrelay.core.errors import Conflict
from healthrelay.emergency import dispatch, service
from healthrelay.emergency.models import EmergencyCall, EmergencySetting
from tests.emergency.conftest import STRETCH_MIN, EmWorld, new_call


def _rec(db: Session, call: EmergencyCall) -> dispatch.Recommendation:
    return dispatch.recommend(db, call_id=call.id)


def test_the_fastest_ambulance_is_first_with_its_minutes(db: Session, world: EmWorld) -> None:
    rec = _rec(db, new_call(db, world, priority=2))
    assert rec.estimate == "road_network"
    assert rec.best_ambulance_id in (world.emergency_amb.id, world.transport_amb.id)
    minutes = {a.code: a.minutes for a in rec.ambulances}
    assert minutes == {"城区-01": pytest.approx(STRETCH_MIN, abs=0.1), "城区-02": pytest.approx(STRETCH_MIN, abs=0.1),
                       "石门-01": pytest.approx(2 * STRETCH_MIN, abs=0.1)}
    assert [a.minutes for a in rec.ambulances] == sorted(a.minutes for a in rec.ambulances)  # type: ignore[type-var]
    assert "最快到达现场" in rec.ambulances[0].reasons[0] and "fastest" in rec.ambulances[0].reasons[0]


def test_a_busy_ambulance_is_not_offered(db: Session, world: EmWorld) -> None:
    first = new_call(db, world)
    service.dispatch(db, call_id=first.id, ambulance_id=world.emergency_amb.id,
                     destination_organisation_id=world.county.id, by=world.dispatcher)
    db.commit()
    rec = _rec(db, new_call(db, world, category="trauma"))
    assert world.emergency_amb.id not in {a.ambulance_id for a in rec.ambulances}
    assert rec.best_ambulance_id == world.transport_amb.id


def test_chest_pain_goes_to_the_pci_hospital_though_a_nearer_centre_exists(db: Session, world: EmWorld) -> None:
    rec = _rec(db, new_call(db, world, category="chest_pain"))
    assert rec.destination is not None and rec.destination.organisation_id == world.county.id
    # From the scene (N2): the township centre is 6 min away, the county hospital 18.
    assert rec.destination.minutes == pytest.approx(3 * STRETCH_MIN, abs=0.1)
    assert "最近的可行PCI医院，预计 18 分钟 / nearest PCI-capable hospital, 18 min" in rec.destination.reasons
    assert world.township.id not in {d.organisation_id for d in rec.alternatives}
    assert any("PCI" in r for r in rec.reasons)


def test_priority_one_prefers_a_mobile_icu_within_the_margin_and_says_so(db: Session, world: EmWorld) -> None:
    call = new_call(db, world, priority=1)
    assert _rec(db, call).best_ambulance_id != world.icu_amb.id  # 6 min slower than the fastest; margin 3
    db.get(EmergencySetting, "mobile_icu_margin_minutes").value = 7  # type: ignore[union-attr]
    db.commit()
    rec = _rec(db, call)
    assert rec.best_ambulance_id == world.icu_amb.id and rec.ambulances[0].ambulance_id == world.icu_amb.id
    assert any("监护型" in r and "mobile ICU" in r for r in rec.ambulances[0].reasons)
    # Not for a lower priority.
    assert _rec(db, new_call(db, world, priority=2)).best_ambulance_id != world.icu_amb.id


def test_stroke_inside_the_window_goes_to_the_nearest_thrombolysis_centre(db: Session, world: EmWorld) -> None:
    call = new_call(db, world, category="stroke", onset_at=utcnow() - timedelta(minutes=60))
    rec = _rec(db, call)
    assert rec.destination is not None and rec.destination.organisation_id == world.township.id
    assert any("时间窗内" in r for r in rec.destination.reasons)


def test_stroke_outside_the_window_goes_to_the_thrombectomy_centre(db: Session, world: EmWorld) -> None:
    call = new_call(db, world, category="stroke", onset_at=utcnow() - timedelta(hours=4))
    rec = _rec(db, call)
    assert rec.destination is not None and rec.destination.organisation_id == world.county.id
    assert any("超出溶栓时间窗" in r and "thrombectomy" in r for r in rec.destination.reasons)


def test_maternal_calls_go_to_the_maternal_child_hospital(db: Session, world: EmWorld) -> None:
    rec = _rec(db, new_call(db, world, category="critical_maternal"))
    assert rec.destination is not None and rec.destination.organisation_id == world.mch.id


def test_trauma_goes_to_a_hospital_with_ct_and_surgery(db: Session, world: EmWorld) -> None:
    rec = _rec(db, new_call(db, world, category="trauma"))
    # The township centre has CT but neither surgery nor hospital kind; the county hospital has both.
    assert rec.destination is not None and rec.destination.organisation_id == world.county.id


def test_eta_is_the_way_to_the_scene_and_on_to_the_hospital(db: Session, world: EmWorld) -> None:
    rec = _rec(db, new_call(db, world))
    assert rec.eta_minutes(world.emergency_amb.id, world.county.id) == pytest.approx(4 * STRETCH_MIN, abs=0.2)


def test_no_roads_falls_back_to_the_straight_line_and_says_so(db: Session) -> None:
    from healthrelay.geo.service import forget_cached_networks
    from tests.emergency.conftest import build_world

    forget_cached_networks()
    w = build_world(db, roads=False)
    rec = _rec(db, new_call(db, w))
    assert rec.estimate == "straight_line" and rec.best_ambulance_id is not None
    assert any("直线" in r for r in rec.reasons)


def test_a_closed_call_gets_no_recommendation(db: Session, world: EmWorld) -> None:
    call = new_call(db, world)
    service.cancel_call(db, call_id=call.id, by=world.dispatcher, reason="误报")
    db.commit()
    with pytest.raises(Conflict):
        _rec(db, call)


def test_the_dispatch_stores_what_the_dispatcher_was_shown(db: Session, world: EmWorld) -> None:
    call = new_call(db, world)
    service.dispatch(db, call_id=call.id, ambulance_id=world.transport_amb.id,
                     destination_organisation_id=world.county.id, by=world.dispatcher)
    db.commit()
    shown = call.recommendation
    assert shown["destination"]["organisation_id"] == world.county.id
    assert {a["code"] for a in shown["ambulances"]} == {"城区-01", "城区-02", "石门-01"}
    assert shown["chosen"]["ambulance_id"] == world.transport_amb.id and shown["chosen"]["followed_destination"]
