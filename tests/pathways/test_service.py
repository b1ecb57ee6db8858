"""The pathway rules as the ECG centre, the 120 centre and the cath-lab team meet them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.access import service as access
from healthrelay.audit.models import AuditEvent
from healthrelay.core.db import utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NotFound
from healthrelay.pathways import service
from healthrelay.pathways.models import CaseState, PathwayCase, PathwayEvent, PathwayNode
from tests.pathways.conftest import PathwayWorld, minutes_ago


def _stemi(db: Session, w: PathwayWorld, **extra: object) -> PathwayCase:
    values: dict[str, object] = dict(centre="chest_pain", patient_id=w.patient.id, by=w.town_doctor, source="ecg",
                                     hospital_organisation_id=w.county.id, diagnosis="急性下壁 STEMI")
    values.update(extra)
    case = service.open_case(db, **values)  # type: ignore[arg-type]
    db.commit()
    return case


def test_open_case_numbers_by_centre_and_records_given_nodes(db: Session, world: PathwayWorld) -> None:
    fmc, ecg = minutes_ago(30), minutes_ago(25)
    case = _stemi(db, world, nodes={"first_medical_contact": fmc, "first_ecg": ecg})
    assert case.number.startswith("XT") and case.number.endswith(f"-{case.id:04d}")
    assert case.diagnosis_code == "stemi"
    assert case.opened_organisation_id == world.town.id
    nodes = service.nodes_of(db, case)
    assert set(nodes) == {"first_medical_contact", "first_ecg"} and nodes["first_ecg"].at == ecg
    stroke = service.open_case(db, centre="stroke", patient_id=None, by=world.dispatcher, source="call")
    assert stroke.number.startswith("CZ") and stroke.patient_id is None


def test_open_case_reuses_the_patients_open_case_and_fills_links(db: Session, world: PathwayWorld) -> None:
    fmc = minutes_ago(30)
    first = _stemi(db, world, nodes={"first_medical_contact": fmc})
    again = service.open_case(db, centre="chest_pain", patient_id=world.patient.id, by=world.dispatcher,
                              source="call", arrival_mode="ambulance",
                              nodes={"first_medical_contact": minutes_ago(5), "first_ecg": minutes_ago(20)})
    db.commit()
    assert again.id == first.id
    assert db.execute(select(func.count()).select_from(PathwayCase)).scalar() == 1
    nodes = service.nodes_of(db, first)
    # The FMC already there is kept (not overwritten by the second opener's time); the new node is added.
    assert nodes["first_medical_contact"].at == fmc
    assert "first_ecg" in nodes
    assert again.arrival_mode == "ambulance"
    kinds = [e.kind for e in service.events_of(db, first)]
    assert kinds.count("reuse") == 1


def test_a_different_centre_or_a_closed_case_or_an_unknown_patient_opens_a_new_case(
        db: Session, world: PathwayWorld) -> None:
    first = _stemi(db, world)
    stroke = service.open_case(db, centre="stroke", patient_id=world.patient.id, by=world.dispatcher, source="call")
    assert stroke.id != first.id
    service.close(db, case_id=first.id, by=world.cardiologist, outcome="PCI 后出院 / discharged")
    second = _stemi(db, world)
    assert second.id != first.id
    anon_a = service.open_case(db, centre="trauma", patient_id=None, by=world.dispatcher, source="call")
    anon_b = service.open_case(db, centre="trauma", patient_id=None, by=world.dispatcher, source="call")
    assert anon_a.id != anon_b.id


def test_a_case_older_than_a_day_is_not_reused(db: Session, world: PathwayWorld) -> None:
    old = _stemi(db, world)
    old.opened_at = utcnow() - timedelta(hours=25)
    db.commit()
    assert _stemi(db, world).id != old.id


def test_open_case_refuses_bad_input_and_writes_nothing(db: Session, world: PathwayWorld) -> None:
    with pytest.raises(InvalidInput, match="unknown centre"):
        service.open_case(db, centre="cardiac", patient_id=world.patient.id, by=world.town_doctor, source="ecg")
    with pytest.raises(InvalidInput) as bad:
        service.open_case(db, centre="chest_pain", patient_id=world.patient.id, by=world.town_doctor,
                          source="fax", hospital_organisation_id=999999, arrival_mode="helicopter")
    assert {e["field"] for e in bad.value.field_errors} == {"source", "hospital_organisation_id", "arrival_mode"}
    with pytest.raises(NotFound):
        service.open_case(db, centre="chest_pain", patient_id=999999, by=world.town_doctor, source="ecg")
    with pytest.raises(AccessDenied):
        service.open_case(db, centre="chest_pain", patient_id=world.patient.id, by=world.bureau, source="manual")
    db.rollback()
    # A node out of order at opening refuses the whole case.
    with pytest.raises(Conflict):
        _stemi(db, world, nodes={"first_medical_contact": minutes_ago(10), "first_ecg": minutes_ago(20)})
    db.rollback()
    assert db.execute(select(func.count()).select_from(PathwayCase)).scalar() == 0


def test_record_node_refuses_out_of_order_naming_both_nodes_and_times(db: Session, world: PathwayWorld) -> None:
    case = _stemi(db, world)
    doc = world.cardiologist
    activation = minutes_ago(60)
    service.record_node(db, case_id=case.id, node="cath_lab_activation", at=activation, by=doc)
    db.commit()
    early = activation - timedelta(minutes=15)
    with pytest.raises(Conflict) as refused:
        service.record_node(db, case_id=case.id, node="wire_crossing", at=early, by=doc)
    # Times read as 08:40; across midnight in Shanghai each carries its date too.
    fmt = "%H:%M" if early.astimezone(service._SHANGHAI).date() == activation.astimezone(service._SHANGHAI).date() \
        else "%m-%d %H:%M"
    hhmm = early.astimezone(service._SHANGHAI).strftime(fmt)
    act = activation.astimezone(service._SHANGHAI).strftime(fmt)
    assert refused.value.message == (f"球囊扩张 {hhmm} 早于导管室激活 {act} / wire crossing {hhmm} is before "
                                     f"cath-lab activation {act}")
    db.rollback()
    # The other direction: a node recorded after one it must precede.
    with pytest.raises(Conflict, match="is after cath-lab activation"):
        service.record_node(db, case_id=case.id, node="diagnosis", at=activation + timedelta(minutes=5), by=doc)
    db.rollback()
    # Transitively: first ECG ≤ diagnosis ≤ activation, with no diagnosis recorded yet.
    with pytest.raises(Conflict, match="first ECG .* is after cath-lab activation"):
        service.record_node(db, case_id=case.id, node="first_ecg", at=activation + timedelta(minutes=1), by=doc)
    db.rollback()
    # Pre-alert: the cath lab activated before the patient reaches the door is allowed.
    service.record_node(db, case_id=case.id, node="arrival", at=activation + timedelta(minutes=20), by=doc)
    service.record_node(db, case_id=case.id, node="wire_crossing", at=activation + timedelta(minutes=45), by=doc)
    db.commit()
    assert set(service.nodes_of(db, case)) == {"cath_lab_activation", "arrival", "wire_crossing"}


def test_record_node_refuses_future_unknown_and_closed(db: Session, world: PathwayWorld) -> None:
    case = _stemi(db, world)
    doc = world.cardiologist
    with pytest.raises(InvalidInput, match="in the future"):
        service.record_node(db, case_id=case.id, node="arrival", at=utcnow() + timedelta(minutes=5), by=doc)
    service.record_node(db, case_id=case.id, node="arrival", at=utcnow() + timedelta(seconds=60), by=doc)
    from datetime import UTC, datetime
    with pytest.raises(InvalidInput, match="year 1: check the date"):
        service.record_node(db, case_id=case.id, node="onset", at=datetime(1, 1, 1, 8, tzinfo=UTC), by=doc)
    with pytest.raises(InvalidInput, match="no node 'needle'"):
        service.record_node(db, case_id=case.id, node="needle", at=minutes_ago(1), by=doc)
    service.close(db, case_id=case.id, by=doc, outcome="转上级医院 / transferred")
    db.commit()
    with pytest.raises(Conflict, match="is closed"):
        service.record_node(db, case_id=case.id, node="diagnosis", at=minutes_ago(1), by=doc)
    with pytest.raises(NotFound):
        service.record_node(db, case_id=999999, node="arrival", at=minutes_ago(1), by=doc)


def test_a_correction_needs_a_reason_and_keeps_the_old_time(db: Session, world: PathwayWorld) -> None:
    case = _stemi(db, world)
    doc = world.cardiologist
    first = minutes_ago(40)
    service.record_node(db, case_id=case.id, node="arrival", at=first, by=doc)
    db.commit()
    with pytest.raises(Conflict, match="a correction needs a reason"):
        service.record_node(db, case_id=case.id, node="arrival", at=minutes_ago(35), by=doc)
    db.rollback()
    corrected = minutes_ago(42)
    service.record_node(db, case_id=case.id, node="arrival", at=corrected, by=doc, reason="按门卫登记更正 / gate log")
    db.commit()
    assert db.execute(select(func.count()).select_from(PathwayNode)).scalar() == 1
    assert service.nodes_of(db, case)["arrival"].at == corrected
    log = db.execute(select(PathwayEvent).where(PathwayEvent.kind == "correct")).scalar_one()
    assert (log.old_at, log.new_at, log.node, log.by_user_id) == (first, corrected, "arrival", doc.id)
    assert "gate log" in log.reason
    # A correction is checked against the order too.
    service.record_node(db, case_id=case.id, node="wire_crossing", at=minutes_ago(10), by=doc)
    with pytest.raises(Conflict, match="door .* is after wire crossing"):
        service.record_node(db, case_id=case.id, node="arrival", at=minutes_ago(5), by=doc, reason="typo")


def test_who_may_record(db: Session, world: PathwayWorld) -> None:
    case = _stemi(db, world)
    service.record_node(db, case_id=case.id, node="first_medical_contact", at=minutes_ago(30), by=world.town_doctor)
    service.record_node(db, case_id=case.id, node="arrival", at=minutes_ago(5), by=world.cardiologist)
    db.commit()
    with pytest.raises(AccessDenied):
        service.record_node(db, case_id=case.id, node="first_ecg", at=minutes_ago(20), by=world.outsider_doctor)
    with pytest.raises(AccessDenied):
        service.record_node(db, case_id=case.id, node="first_ecg", at=minutes_ago(20), by=world.dispatcher)
    denied = db.execute(select(AuditEvent).where(AuditEvent.action == "pathway.write",
                                                 AuditEvent.outcome == "denied")).scalars().all()
    assert len(denied) == 2
    with pytest.raises(AccessDenied):
        service.get_case_for(db, case_id=case.id, user=world.outsider_doctor)
    with pytest.raises(AccessDenied):
        service.get_case_for(db, case_id=case.id, user=world.bureau)
    assert service.get_case_for(db, case_id=case.id, user=world.cardiologist).id == case.id


def test_being_party_to_a_case_is_a_care_relationship(db: Session, world: PathwayWorld) -> None:
    assert access.decide(db, user=world.cardiologist, patient_id=world.patient.id) is None
    _stemi(db, world)
    assert access.decide(db, user=world.cardiologist, patient_id=world.patient.id) == "pathway_case"
    assert access.decide(db, user=world.outsider_doctor, patient_id=world.patient.id) is None


def test_link_and_close(db: Session, world: PathwayWorld) -> None:
    case = _stemi(db, world, hospital_organisation_id=None)
    service.link(db, case_id=case.id, hospital_organisation_id=world.county.id, arrival_mode="ambulance",
                 bypass_ed=True, by=world.town_doctor)
    db.commit()
    assert (case.hospital_organisation_id, case.arrival_mode, case.bypass_ed) == (world.county.id, "ambulance", True)
    with pytest.raises(InvalidInput, match="unknown arrival mode"):
        service.link(db, case_id=case.id, arrival_mode="boat")
    with pytest.raises(InvalidInput, match="state the outcome"):
        service.close(db, case_id=case.id, by=world.cardiologist, outcome="  ")
    closed = service.close(db, case_id=case.id, by=world.cardiologist, outcome="出院 / discharged")
    assert closed.state == CaseState.CLOSED and closed.closed_at is not None
    with pytest.raises(Conflict, match="already closed"):
        service.close(db, case_id=case.id, by=world.cardiologist, outcome="again")


def test_every_change_reaches_the_parties_live_after_commit(db: Session, world: PathwayWorld,
                                                            database_url: str) -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from healthrelay.notifications import live

    live.ensure_listener(database_url)
    topics = [f"org:{world.county.id}", f"org:{world.town.id}", f"org:{world.outsider.id}"]

    async def run() -> list[tuple[str, dict]]:
        sub = live.bus.subscribe(topics)
        try:
            case = _stemi(db, world)
            service.record_node(db, case_id=case.id, node="arrival", at=minutes_ago(5), by=world.cardiologist)
            db.commit()
            got = []
            while True:
                try:
                    got.append(await sub.get(timeout=3))
                except TimeoutError:
                    return got
        finally:
            live.bus.unsubscribe(sub)

    with ThreadPoolExecutor(1) as pool:  # after a browser test, Playwright's loop may own this thread
        got = pool.submit(asyncio.run, run()).result()
    node_events = {topic for topic, event in got if event["type"] == "pathway.changed" and event["action"] == "node"}
    assert node_events == {f"org:{world.county.id}", f"org:{world.town.id}"}
    assert all("王" not in str(event) for _, event in got)


def test_the_next_expected_nodes_follow_the_timeline(db: Session, world: PathwayWorld) -> None:
    case = _stemi(db, world, nodes={"first_medical_contact": minutes_ago(40), "first_ecg": minutes_ago(36),
                                    "diagnosis": minutes_ago(30), "cath_lab_activation": minutes_ago(25)})
    # Pre-alerted, still on the road: the door and the ECG transmission are awaited; not thrombolysis (PCI under
    # way), not the cath-lab arrival (the patient must reach the door first).
    assert service.next_nodes(db, case) == ["ecg_transmitted", "arrival"]
    service.record_node(db, case_id=case.id, node="arrival", at=minutes_ago(5), by=world.cardiologist)
    assert service.next_nodes(db, case) == ["cath_lab_arrival"]


def test_a_node_skipped_in_the_village_does_not_hold_back_the_cath_lab(db: Session, world: PathwayWorld) -> None:
    """A STEMI read on a village ECG: no ambulance first contact precedes the ECG, so first contact is passed,
    not awaited, and the cath-lab steps are offered; it can still be entered with its true time."""
    case = _stemi(db, world, nodes={"first_ecg": minutes_ago(20), "ecg_transmitted": minutes_ago(18),
                                    "ecg_read": minutes_ago(10), "diagnosis": minutes_ago(10)})
    expected = service.next_nodes(db, case)
    assert "first_medical_contact" not in expected
    assert "cath_lab_activation" in expected and "arrival" in expected
    service.record_node(db, case_id=case.id, node="first_medical_contact", at=minutes_ago(25), by=world.town_doctor)
    assert "first_medical_contact" in service.nodes_of(db, case)
