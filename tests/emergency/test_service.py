"""Calls, the ambulance state machine, and what the ambulance's moves do to the call and its pathway."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.core.db import get_sessionmaker, utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput
from healthrelay.emergency import service
from healthrelay.emergency.models import (
    Ambulance,
    AmbulanceState,
    AmbulanceStateChange,
    CallEvent,
    CallState,
    EmergencyCall,
)
from healthrelay.notifications.models import Notification
from tests.emergency.conftest import EmWorld, new_call

A = AmbulanceState


def _sent(db: Session, w: EmWorld, *, category: str = "chest_pain", amb: Ambulance | None = None) -> EmergencyCall:
    call = new_call(db, w, category=category)
    service.dispatch(db, call_id=call.id, ambulance_id=(amb or w.emergency_amb).id,
                     destination_organisation_id=w.county.id, by=w.dispatcher)
    db.commit()
    return call


def _move(db: Session, w: EmWorld, amb: Ambulance, to: AmbulanceState, reason: str = "", **kw: object) -> Ambulance:
    out = service.change_ambulance_state(db, ambulance_id=amb.id, to_state=to, by=w.crew, reason=reason, **kw)
    db.commit()
    return out


# --- intake ---------------------------------------------------------------------------------------

def test_a_call_from_a_village_takes_its_place_and_is_rural(db: Session, world: EmWorld) -> None:
    call = new_call(db, world)
    assert call.number.startswith("JJ") and call.number.endswith(f"-{call.id:04d}")
    assert (call.latitude, call.longitude) == (world.village.latitude, world.village.longitude)
    assert call.urban is False and call.state == CallState.ANSWERED
    assert call.answered_at is not None and call.received_at < call.answered_at
    events = db.execute(select(CallEvent.action).where(CallEvent.call_id == call.id).order_by(CallEvent.id)).all()
    assert [e[0] for e in events] == ["receive", "answer"]


def test_a_call_in_the_county_seat_is_urban_by_area_or_by_coordinates(db: Session, world: EmWorld) -> None:
    assert new_call(db, world, area=world.urban_village).urban is True
    data = service.CallInput(category="trauma", priority=2, complaint="车祸", latitude=world.urban_village.latitude,
                             longitude=world.urban_village.longitude + 0.001)
    assert service.create_call(db, by=world.dispatcher, data=data).urban is True


@pytest.mark.parametrize(("changes", "field"), [
    ({"area_id": 999999}, "area_id"),
    ({"area_id": None, "latitude": 95.0, "longitude": 110.0}, "latitude"),
    ({"area_id": None, "latitude": 30.0, "longitude": None}, "longitude"),
    ({"area_id": None}, "area_id"),
    ({"category": "fever"}, "category"),
    ({"priority": 7}, "priority"),
    ({"complaint": "  "}, "complaint"),
    ({"caller_phone": "call me"}, "caller_phone"),
])
def test_bad_intake_names_the_field_and_writes_nothing(db: Session, world: EmWorld, changes: dict[str, object],
                                                       field: str) -> None:
    base = {"category": "chest_pain", "priority": 2, "complaint": "胸痛", "area_id": world.village.id}
    base.update(changes)
    with pytest.raises(InvalidInput) as exc:
        service.create_call(db, by=world.dispatcher, data=service.CallInput(**base))  # type: ignore[arg-type]
    assert field in {e["field"] for e in exc.value.field_errors}
    db.rollback()
    assert db.execute(select(func.count()).select_from(EmergencyCall)).scalar() == 0


def test_answered_before_received_and_future_times_are_refused(db: Session, world: EmWorld) -> None:
    now = utcnow()
    data = service.CallInput(category="other", priority=3, complaint="腹痛", area_id=world.village.id,
                             received_at=now, answered_at=now - timedelta(seconds=30))
    with pytest.raises(InvalidInput) as exc:
        service.create_call(db, by=world.dispatcher, data=data)
    assert "answered_at" in {e["field"] for e in exc.value.field_errors}
    data = service.CallInput(category="other", priority=3, complaint="腹痛", area_id=world.village.id,
                             received_at=now + timedelta(hours=1))
    with pytest.raises(InvalidInput):
        service.create_call(db, by=world.dispatcher, data=data)


def test_only_the_board_takes_calls(db: Session, world: EmWorld) -> None:
    with pytest.raises(AccessDenied):
        new_call(db, world, by=world.township_doctor)


# --- the state machine ----------------------------------------------------------------------------

def test_a_full_run_sets_every_time_of_the_call_and_logs_every_move(db: Session, world: EmWorld) -> None:
    call = _sent(db, world)
    amb = world.emergency_amb
    for to in (A.EN_ROUTE, A.ON_SCENE, A.TRANSPORTING, A.AT_HOSPITAL, A.RETURNING, A.AVAILABLE):
        amb = _move(db, world, amb, to)
        assert amb.state == to
    db.refresh(call)
    assert call.state == CallState.CLOSED
    times = [call.received_at, call.answered_at, call.dispatched_at, call.departed_at, call.on_scene_at,
             call.left_scene_at, call.at_hospital_at, call.closed_at]
    assert all(t is not None for t in times) and times == sorted(times)  # type: ignore[type-var]
    log = db.execute(select(AmbulanceStateChange).where(AmbulanceStateChange.ambulance_id == amb.id)
                     .order_by(AmbulanceStateChange.id)).scalars().all()
    assert [(r.from_state, r.to_state) for r in log] == [
        ("available", "dispatched"), ("dispatched", "en_route"), ("en_route", "on_scene"),
        ("on_scene", "transporting"), ("transporting", "at_hospital"), ("at_hospital", "returning"),
        ("returning", "available")]
    # Positions without GPS: the scene on scene, the hospital at the hospital, the station when available.
    by_state = {r.to_state: r for r in log}
    assert (by_state["on_scene"].latitude, by_state["on_scene"].longitude) == (call.latitude, call.longitude)
    assert by_state["at_hospital"].longitude == world.county.longitude
    assert by_state["available"].longitude == world.station.longitude
    assert all(r.by_user_id is not None for r in log)
    assert amb.current_call_id is None and amb.longitude == world.station.longitude


def test_the_crews_gps_position_is_logged(db: Session, world: EmWorld) -> None:
    _sent(db, world)
    _move(db, world, world.emergency_amb, A.EN_ROUTE, latitude=30.001, longitude=110.025)
    row = db.execute(select(AmbulanceStateChange).where(AmbulanceStateChange.to_state == "en_route")).scalar_one()
    assert (row.latitude, row.longitude, row.position_source) == (30.001, 110.025, "gps")


# Every pair the table does not allow is refused, naming both states; a sample of the allowed ones are
# covered by the full run above; here every refused (from, to) from each reachable state.
@pytest.mark.parametrize(("start", "to"), [
    (A.AVAILABLE, A.EN_ROUTE), (A.AVAILABLE, A.ON_SCENE), (A.AVAILABLE, A.RETURNING),
    (A.EN_ROUTE, A.TRANSPORTING), (A.EN_ROUTE, A.AT_HOSPITAL), (A.EN_ROUTE, A.AVAILABLE),
    (A.ON_SCENE, A.AT_HOSPITAL), (A.ON_SCENE, A.AVAILABLE), (A.TRANSPORTING, A.RETURNING),
    (A.TRANSPORTING, A.ON_SCENE), (A.AT_HOSPITAL, A.AVAILABLE), (A.RETURNING, A.ON_SCENE),
    (A.OUT_OF_SERVICE, A.DISPATCHED), (A.OUT_OF_SERVICE, A.EN_ROUTE),
])
def test_moves_outside_the_table_are_refused(db: Session, world: EmWorld, start: AmbulanceState,
                                             to: AmbulanceState) -> None:
    amb = world.emergency_amb
    path = {A.AVAILABLE: [], A.EN_ROUTE: [A.EN_ROUTE], A.ON_SCENE: [A.EN_ROUTE, A.ON_SCENE],
            A.TRANSPORTING: [A.EN_ROUTE, A.ON_SCENE, A.TRANSPORTING],
            A.AT_HOSPITAL: [A.EN_ROUTE, A.ON_SCENE, A.TRANSPORTING, A.AT_HOSPITAL],
            A.RETURNING: [A.EN_ROUTE, A.ON_SCENE, A.TRANSPORTING, A.AT_HOSPITAL, A.RETURNING]}
    if start == A.OUT_OF_SERVICE:
        _move(db, world, amb, A.OUT_OF_SERVICE, reason="换轮胎")
    elif path[start]:
        _sent(db, world, category="other")
        for step in path[start]:
            amb = _move(db, world, amb, step)
    before = db.execute(select(func.count()).select_from(AmbulanceStateChange)).scalar()
    with pytest.raises((Conflict, InvalidInput)) as exc:
        service.change_ambulance_state(db, ambulance_id=amb.id, to_state=to, by=world.crew, reason="x")
    assert str(start) in exc.value.message or "dispatch" in exc.value.message
    db.rollback()
    assert db.execute(select(func.count()).select_from(AmbulanceStateChange)).scalar() == before
    assert db.get(Ambulance, amb.id).state == start  # type: ignore[union-attr]


def test_allowed_next_states_follow_the_table(db: Session, world: EmWorld) -> None:
    amb = world.emergency_amb
    assert service.allowed_next_states(amb) == [A.OUT_OF_SERVICE]
    _sent(db, world)
    db.refresh(amb)
    # On a call: no out-of-service button, dispatching is the board's job.
    assert service.allowed_next_states(amb) == [A.EN_ROUTE, A.AVAILABLE]


def test_out_of_service_only_when_not_on_a_call_and_with_a_reason(db: Session, world: EmWorld) -> None:
    call = _sent(db, world)
    with pytest.raises(Conflict) as exc:
        service.change_ambulance_state(db, ambulance_id=world.emergency_amb.id, to_state=A.OUT_OF_SERVICE,
                                       by=world.crew, reason="故障")
    assert call.number in exc.value.message
    db.rollback()
    with pytest.raises(InvalidInput) as missing:
        service.change_ambulance_state(db, ambulance_id=world.transport_amb.id, to_state=A.OUT_OF_SERVICE,
                                       by=world.crew)
    assert missing.value.field_errors[0]["field"] == "reason"
    db.rollback()
    amb = _move(db, world, world.transport_amb, A.OUT_OF_SERVICE, reason="保养")
    assert amb.state == A.OUT_OF_SERVICE
    assert _move(db, world, amb, A.AVAILABLE).state == A.AVAILABLE


def test_standing_down_before_departure_puts_the_call_back_on_the_board(db: Session, world: EmWorld) -> None:
    call = _sent(db, world)
    _move(db, world, world.emergency_amb, A.AVAILABLE, reason="车辆故障，改派")
    db.refresh(call)
    assert call.state == CallState.ANSWERED and call.ambulance_id is None and call.dispatched_at is None
    # ... and another ambulance can be sent.
    service.dispatch(db, call_id=call.id, ambulance_id=world.transport_amb.id,
                     destination_organisation_id=world.county.id, by=world.dispatcher)
    db.commit()
    assert call.state == CallState.DISPATCHED and call.ambulance_id == world.transport_amb.id


def test_treated_on_scene_closes_the_call_with_the_reason(db: Session, world: EmWorld) -> None:
    call = _sent(db, world, category="other")
    for to in (A.EN_ROUTE, A.ON_SCENE):
        _move(db, world, world.emergency_amb, to)
    with pytest.raises(InvalidInput):
        service.change_ambulance_state(db, ambulance_id=world.emergency_amb.id, to_state=A.RETURNING, by=world.crew)
    db.rollback()
    _move(db, world, world.emergency_amb, A.RETURNING, reason="现场处置后拒绝转运")
    db.refresh(call)
    assert call.state == CallState.CLOSED and call.close_reason == "现场处置后拒绝转运"


def test_a_stale_crew_page_is_refused(db: Session, world: EmWorld) -> None:
    _sent(db, world)
    _move(db, world, world.emergency_amb, A.EN_ROUTE)
    with pytest.raises(Conflict) as exc:
        service.change_ambulance_state(db, ambulance_id=world.emergency_amb.id, to_state=A.EN_ROUTE, by=world.crew,
                                       expected_state="dispatched")
    assert "en_route" in exc.value.message


def test_cancelling_a_call_stands_its_ambulance_down(db: Session, world: EmWorld) -> None:
    call = _sent(db, world)
    _move(db, world, world.emergency_amb, A.EN_ROUTE)
    service.cancel_call(db, call_id=call.id, by=world.dispatcher, reason="来电者称已自行就医")
    db.commit()
    db.refresh(call)
    amb = db.get(Ambulance, world.emergency_amb.id)
    assert call.state == CallState.CANCELLED and call.closed_at is not None
    assert amb is not None and amb.state == A.RETURNING and amb.current_call_id is None
    with pytest.raises(Conflict):
        service.cancel_call(db, call_id=call.id, by=world.dispatcher, reason="again")


# --- dispatching ----------------------------------------------------------------------------------

def test_dispatching_a_busy_ambulance_names_the_call_and_who_sent_it(db: Session, world: EmWorld) -> None:
    first = _sent(db, world)
    second = new_call(db, world, category="trauma")
    with pytest.raises(Conflict) as exc:
        service.dispatch(db, call_id=second.id, ambulance_id=world.emergency_amb.id,
                         destination_organisation_id=world.county.id, by=world.dispatcher2)
    assert first.number in exc.value.message and "disp_city" in exc.value.message
    assert exc.value.code == "ambulance_not_available"
    db.rollback()
    assert db.get(EmergencyCall, second.id).state == CallState.ANSWERED  # type: ignore[union-attr]


def test_a_closed_call_cannot_be_dispatched(db: Session, world: EmWorld) -> None:
    call = new_call(db, world)
    service.cancel_call(db, call_id=call.id, by=world.dispatcher, reason="重复来电")
    db.commit()
    with pytest.raises(Conflict) as exc:
        service.dispatch(db, call_id=call.id, ambulance_id=world.transport_amb.id,
                         destination_organisation_id=world.county.id, by=world.dispatcher)
    assert exc.value.code == "call_closed"
    db.rollback()
    assert db.get(Ambulance, world.transport_amb.id).state == A.AVAILABLE  # type: ignore[union-attr]


def test_a_stale_board_loses_to_the_dispatcher_who_sent_first(db: Session, world: EmWorld) -> None:
    """Two dispatchers look at the same board; the second's view of the ambulance is stale."""
    call_a = new_call(db, world)
    call_b = new_call(db, world, category="stroke")
    other = get_sessionmaker()()
    try:
        stale = other.get(Ambulance, world.emergency_amb.id)
        assert stale is not None and stale.state == A.AVAILABLE
        other.commit()  # the page has rendered; expire_on_commit is off, so the object stays stale
        service.dispatch(db, call_id=call_a.id, ambulance_id=world.emergency_amb.id,
                         destination_organisation_id=world.county.id, by=world.dispatcher)
        db.commit()
        assert other.get(Ambulance, world.emergency_amb.id).state == A.AVAILABLE  # type: ignore[union-attr]
        dispatcher2 = other.get(type(world.dispatcher2), world.dispatcher2.id)
        with pytest.raises(Conflict) as exc:
            service.dispatch(other, call_id=call_b.id, ambulance_id=world.emergency_amb.id,
                             destination_organisation_id=world.county.id, by=dispatcher2)
        assert call_a.number in exc.value.message
        other.rollback()
    finally:
        other.close()
    sends = db.execute(select(func.count()).where(AmbulanceStateChange.to_state == "dispatched")).scalar()
    assert sends == 1


def test_two_dispatchers_at_once_one_wins(db: Session, world: EmWorld) -> None:
    """Two sessions race for one ambulance: exactly one dispatch lands, the loser is told who has it."""
    for _ in range(3):
        calls = [new_call(db, world).id, new_call(db, world, category="trauma").id]
        users = {"disp_city": world.dispatcher.id, "disp_city2": world.dispatcher2.id}
        barrier = threading.Barrier(2)
        outcomes: dict[str, str] = {}

        def attempt(name: str, call_id: int, users: dict[str, int] = users, barrier: threading.Barrier = barrier,
                    outcomes: dict[str, str] = outcomes) -> None:
            with get_sessionmaker()() as s:
                user = s.get(type(world.dispatcher), users[name])
                barrier.wait()
                try:
                    service.dispatch(s, call_id=call_id, ambulance_id=world.emergency_amb.id,
                                     destination_organisation_id=world.county.id, by=user)
                    s.commit()
                    outcomes[name] = "won"
                except Conflict as exc:
                    s.rollback()
                    outcomes[name] = exc.message

        threads = [threading.Thread(target=attempt, args=(n, c)) for n, c in zip(users, calls, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        winners = [n for n, o in outcomes.items() if o == "won"]
        assert len(winners) == 1, outcomes
        [loser] = set(users) - set(winners)
        assert winners[0] in outcomes[loser]
        db.expire_all()
        # Free the ambulance for the next round.
        amb = db.get(Ambulance, world.emergency_amb.id)
        assert amb is not None and amb.state == A.DISPATCHED
        service.change_ambulance_state(db, ambulance_id=amb.id, to_state=A.AVAILABLE, by=world.crew, reason="测试")
        db.commit()


# --- transfers from the ECG centre ----------------------------------------------------------------

def test_a_transfer_call_is_priority_one_at_the_member_and_the_dispatchers_hear_at_once(
        db: Session, world: EmWorld) -> None:
    call = service.open_transfer_call(db, patient_id=world.patient.id, from_organisation_id=world.township.id,
                                      category="chest_pain", complaint="下壁STEMI", pathway_case_id=None,
                                      ecg_request_id=None, by=world.township_doctor)
    db.commit()
    assert call.priority == 1 and call.source == "ecg_centre"
    assert (call.latitude, call.longitude) == (world.township.latitude, world.township.longitude)
    assert service.open_calls(db)[0].id == call.id
    notes = db.execute(select(Notification).where(Notification.kind == "emergency.transfer")).scalars().all()
    assert {n.user_id for n in notes} == {world.dispatcher.id, world.dispatcher2.id, world.crew.id}
    assert all(n.urgent and call.number in n.title and "张大山" not in n.title + n.body for n in notes)


def test_a_transfer_from_an_unknown_organisation_is_refused(db: Session, world: EmWorld) -> None:
    with pytest.raises(InvalidInput):
        service.open_transfer_call(db, patient_id=None, from_organisation_id=999999, category="chest_pain",
                                   complaint="", pathway_case_id=None, ecg_request_id=None, by=None)


# --- pre-alert and pathways ------------------------------------------------------------------------

def test_dispatching_chest_pain_pre_alerts_the_cardiologists_with_the_eta(db: Session, world: EmWorld) -> None:
    call = _sent(db, world)
    notes = db.execute(select(Notification).where(Notification.kind == "emergency.pre_alert")).scalars().all()
    assert [n.user_id for n in notes] == [world.cardiologist.id]
    # 6 minutes to the scene, 18 on to the county hospital.
    assert "24" in notes[0].body and call.number in notes[0].title and notes[0].urgent


def test_pathway_nodes_follow_the_ambulance(db: Session, world: EmWorld) -> None:
    from healthrelay.pathways import service as pathways

    call = _sent(db, world)
    assert call.pathway_case_id is not None
    for to in (A.EN_ROUTE, A.ON_SCENE, A.TRANSPORTING, A.AT_HOSPITAL):
        _move(db, world, world.emergency_amb, to)
    db.refresh(call)
    case = pathways.load(db, call.pathway_case_id)
    nodes = pathways.nodes_of(db, case)
    assert nodes["first_medical_contact"].at == call.on_scene_at
    assert nodes["arrival"].at == call.at_hospital_at
    assert case.arrival_mode == "ambulance" and case.hospital_organisation_id == world.county.id
    assert case.call_id == call.id


def test_first_medical_contact_already_recorded_is_kept(db: Session, world: EmWorld) -> None:
    from healthrelay.pathways import service as pathways

    earlier = utcnow() - timedelta(minutes=15)
    case = pathways.open_case(db, centre="chest_pain", patient_id=world.patient.id, by=world.township_doctor,
                              source="ecg", nodes={"first_medical_contact": earlier})
    call = service.open_transfer_call(db, patient_id=world.patient.id, from_organisation_id=world.township.id,
                                      category="chest_pain", complaint="STEMI", pathway_case_id=case.id,
                                      ecg_request_id=None, by=world.township_doctor)
    db.commit()
    service.dispatch(db, call_id=call.id, ambulance_id=world.icu_amb.id, destination_organisation_id=world.county.id,
                     by=world.dispatcher)
    for to in (A.EN_ROUTE, A.ON_SCENE):
        service.change_ambulance_state(db, ambulance_id=world.icu_amb.id, to_state=to, by=world.crew)
    db.commit()
    nodes = pathways.nodes_of(db, case.id)
    assert abs((nodes["first_medical_contact"].at - earlier).total_seconds()) < 1


def test_a_transfer_tops_the_board_and_joins_its_pathway_case(db: Session, world: EmWorld) -> None:
    from healthrelay.pathways import service as pathways

    older = new_call(db, world, priority=1, category="trauma", received_at=utcnow() - timedelta(minutes=5))
    case = pathways.open_case(db, centre="chest_pain", patient_id=world.patient.id, by=world.township_doctor,
                              source="ecg")
    call = service.open_transfer_call(db, patient_id=world.patient.id, from_organisation_id=world.township.id,
                                      category="chest_pain", complaint="下壁STEMI", pathway_case_id=case.id,
                                      ecg_request_id=None, by=world.township_doctor)
    db.commit()
    assert [c.id for c in service.open_calls(db)][:2] == [call.id, older.id]
    assert pathways.load(db, case.id).call_id == call.id


def test_the_pre_alert_links_the_pre_hospital_ecg(db: Session, world: EmWorld) -> None:
    from healthrelay.teleconsult.models import ConsultKind, ConsultRequest, Priority, ReadingCentre

    centre = ReadingCentre(code="XD", name="心电中心", kind=ConsultKind.ECG, organisation_id=world.county.id)
    db.add(centre)
    db.flush()
    request = ConsultRequest(number="YC-ECG-1", kind=ConsultKind.ECG, priority=Priority.EMERGENCY,
                             patient_id=world.patient.id, inviting_organisation_id=world.township.id,
                             centre_id=centre.id, invited_organisation_id=world.county.id,
                             report_due_at=utcnow() + timedelta(minutes=30))
    db.add(request)
    db.flush()
    call = service.open_transfer_call(db, patient_id=world.patient.id, from_organisation_id=world.township.id,
                                      category="chest_pain", complaint="STEMI", pathway_case_id=None,
                                      ecg_request_id=request.id, by=world.township_doctor)
    service.dispatch(db, call_id=call.id, ambulance_id=world.icu_amb.id, destination_organisation_id=world.county.id,
                     by=world.dispatcher)
    db.commit()
    note = db.execute(select(Notification).where(Notification.kind == "emergency.pre_alert")).scalar_one()
    assert note.user_id == world.cardiologist.id
    assert note.link in (f"/teleconsult/{request.id}",) or note.link.startswith("/ecg/recordings/")
    assert "心电图" in note.body
