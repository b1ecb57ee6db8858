"""A case tied to its 120 call and its tele-ECG: who becomes a party, and what the board says about the call."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role
from healthrelay.core.db import utcnow
from healthrelay.core.errors import AccessDenied, InvalidInput
from healthrelay.emergency.models import CallCategory, CallState, EmergencyCall
from healthrelay.pathways import service
from healthrelay.teleconsult.models import ConsultKind, ConsultRequest, Priority, ReadingCentre
from tests import factories as f
from tests.pathways.conftest import PathwayWorld, minutes_ago
from tests.pathways.test_pages import login


def _call(db: Session, w: PathwayWorld, **values: object) -> EmergencyCall:
    station = f.organisation(db, name="城东急救分站")
    now = utcnow()
    fields: dict[str, object] = dict(
        number="JJ20261204-0001", category=CallCategory.CHEST_PAIN, priority=1, latitude=30.1, longitude=110.1,
        state=CallState.TRANSPORTING, received_at=now - timedelta(minutes=30),
        dispatched_at=now - timedelta(minutes=28),
        left_scene_at=now - timedelta(minutes=5), station_organisation_id=station.id,
        destination_organisation_id=w.county.id, created_by_user_id=w.dispatcher.id,
        recommendation={"ambulances": [{"ambulance_id": 7, "minutes": 9.0}],
                        "destination": {"organisation_id": w.county.id, "name": "县医院", "minutes": 17.0},
                        "alternatives": [], "chosen": {"ambulance_id": 7}})
    fields.update(values)
    call = EmergencyCall(**fields)
    db.add(call)
    db.flush()
    return call


def test_the_calls_crew_and_dispatcher_may_record_and_the_card_shows_the_eta(client, db: Session,  # noqa: ANN001
                                                                             world: PathwayWorld) -> None:
    call = _call(db, world)
    station = call.station_organisation_id
    crew = f.user(db, organisation=db.get(type(world.county), station), username="crew")
    case = service.open_case(db, centre="chest_pain", patient_id=world.patient.id, by=world.cardiologist,
                             source="walk_in", hospital_organisation_id=world.county.id)
    db.commit()
    with pytest.raises(AccessDenied):
        service.record_node(db, case_id=case.id, node="first_medical_contact", at=minutes_ago(20), by=crew)
    db.rollback()
    with pytest.raises(InvalidInput, match="no emergency call 999999"):
        service.link(db, case_id=case.id, call_id=999999)
    db.rollback()
    service.link(db, case_id=case.id, call_id=call.id, arrival_mode="ambulance")
    service.record_node(db, case_id=case.id, node="first_medical_contact", at=minutes_ago(20), by=crew)
    service.record_node(db, case_id=case.id, node="first_ecg", at=minutes_ago(18), by=world.dispatcher)
    db.commit()
    login(client, "cardio")
    card = re.search(rf'id="case-{case.id}".*?</article>', client.get("/pathways/chest_pain/board").text, re.S)
    eta = (call.left_scene_at + timedelta(minutes=17)).astimezone(service._SHANGHAI).strftime("%H:%M")
    assert card and call.number in card.group(0) and f"预计 {eta} 到院" in card.group(0)
    assert f'href="/emergency/calls/{call.id}"' in card.group(0)


def test_both_ends_of_the_tele_ecg_are_parties(db: Session, world: PathwayWorld) -> None:
    centre = ReadingCentre(code="XD", name="心电诊断中心", kind=ConsultKind.ECG, organisation_id=world.county.id)
    db.add(centre)
    db.flush()
    now = utcnow()
    ecg = ConsultRequest(number="YC-1", kind=ConsultKind.ECG, priority=Priority.EMERGENCY,
                         patient_id=world.patient.id, inviting_organisation_id=world.town.id, centre_id=centre.id,
                         invited_organisation_id=world.county.id, report_due_at=now, created_at=now, updated_at=now)
    db.add(ecg)
    db.flush()
    reader = f.user(db, role=Role.REMOTE_READER, organisation=world.county, username="ecg_reader")
    case = service.open_case(db, centre="chest_pain", patient_id=world.patient.id, by=reader, source="ecg",
                             ecg_request_id=ecg.id, diagnosis="STEMI", nodes={"first_ecg": minutes_ago(10)})
    assert case.hospital_organisation_id is None
    # The village clinic that recorded the ECG records the first medical contact on the same case.
    service.record_node(db, case_id=case.id, node="first_medical_contact", at=minutes_ago(15), by=world.town_doctor)
    with pytest.raises(AccessDenied):
        service.record_node(db, case_id=case.id, node="onset", at=minutes_ago(60), by=world.outsider_doctor)
