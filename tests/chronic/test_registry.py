"""Registries: enrolling a resident, the refusals a clinician would meet, closing and reopening, the patient's
chronic page and the enrolment API."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.audit.models import AuditEvent
from healthrelay.chronic import service
from healthrelay.chronic.models import ChronicEnrolment
from healthrelay.core.db import local_today
from healthrelay.core.errors import Conflict, InvalidInput, NeedToKnowDenied
from tests import factories as f
from tests.chronic.registry_world import RegistryWorld, build, login


@pytest.fixture
def registry_world(db: Session) -> RegistryWorld:
    world = build(db)
    db.commit()
    return world


def _fields(exc: pytest.ExceptionInfo) -> set[str]:  # type: ignore[type-arg]
    return {e["field"] for e in exc.value.field_errors}


def test_enrol_sets_team_centre_village_and_first_visit_today(db: Session, registry_world: RegistryWorld) -> None:
    w = registry_world
    row = service.enrol(db, by=w.doc1, patient_id=w.p1.id, condition_code="htn",
                        diagnosed_on=local_today() - timedelta(days=400), source="clinic",
                        risk_factors=["smoking", "obesity"], complications=["stroke"],
                        medicines=[{"name": "氨氯地平", "dose": "5mg", "frequency": "qd"}])
    db.commit()
    # No contract yet: the team serving the resident's village manages them, at that team's centre.
    assert row.team_id == w.team1.id and row.organisation_id == w.town1.id
    assert row.village_area_id == w.village_a.id
    assert row.next_visit_due == local_today() and row.next_visit_kind == "first" and row.status == "active"
    assert row.medicines == [{"name": "氨氯地平", "dose": "5mg", "frequency": "qd"}]
    assert db.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.action == "chronic.enrolment.create", AuditEvent.patient_id == w.p1.id)) == 1


def test_enrol_refuses_bad_input_naming_each_field(db: Session, registry_world: RegistryWorld) -> None:
    w = registry_world
    with pytest.raises(InvalidInput) as exc:
        service.enrol(db, by=w.doc1, patient_id=w.p1.id, condition_code="asthma",
                      diagnosed_on=local_today() + timedelta(days=1), source="rumour", risk_factors=["astrology"],
                      medicines=[{"name": "", "dose": "5mg", "frequency": "sometimes"}])
    assert _fields(exc) >= {"condition_code", "diagnosed_on", "source", "risk_factors", "medicines.0.name",
                            "medicines.0.frequency"}
    assert all(" / " in e["message"] for e in exc.value.field_errors)  # Chinese / English
    db.rollback()
    assert db.scalar(select(func.count()).select_from(ChronicEnrolment)) == 0


def test_duplicate_enrolment_names_the_existing_one_and_a_closed_one_reopens(
        db: Session, registry_world: RegistryWorld) -> None:
    w = registry_world
    first = service.enrol(db, by=w.doc1, patient_id=w.p1.id, condition_code="t2dm",
                          diagnosed_on=local_today() - timedelta(days=30), source="screening")
    db.commit()
    with pytest.raises(Conflict) as exc:
        service.enrol(db, by=w.doc1, patient_id=w.p1.id, condition_code="t2dm", diagnosed_on=local_today(),
                      source="clinic")
    assert str(first.id) in exc.value.message and exc.value.code == "already_enrolled"
    db.rollback()
    service.close_enrolment(db, by=w.doc1, enrolment_id=first.id, status="moved", reason="")
    db.commit()
    again = service.enrol(db, by=w.doc1, patient_id=w.p1.id, condition_code="t2dm",
                          diagnosed_on=local_today() - timedelta(days=30), source="transfer")
    db.commit()
    assert again.id == first.id and again.status == "active" and again.closed_at is None
    assert again.source == "transfer" and again.next_visit_kind == "first"


def test_close_needs_a_reason_for_other_and_refuses_twice(db: Session, registry_world: RegistryWorld) -> None:
    w = registry_world
    row = service.enrol(db, by=w.doc1, patient_id=w.p1.id, condition_code="htn", diagnosed_on=local_today(),
                        source="clinic")
    db.commit()
    with pytest.raises(InvalidInput) as exc:
        service.close_enrolment(db, by=w.doc1, enrolment_id=row.id, status="closed", reason=" ")
    assert _fields(exc) == {"reason"}
    with pytest.raises(InvalidInput) as exc:
        service.close_enrolment(db, by=w.doc1, enrolment_id=row.id, status="gone", reason="x")
    assert _fields(exc) == {"status"}
    service.close_enrolment(db, by=w.doc1, enrolment_id=row.id, status="died", reason="")
    db.commit()
    with pytest.raises(Conflict):
        service.close_enrolment(db, by=w.doc1, enrolment_id=row.id, status="moved", reason="")
    db.rollback()
    # A resident who died is not silently put back in the registry.
    with pytest.raises(Conflict):
        service.enrol(db, by=w.doc1, patient_id=w.p1.id, condition_code="htn", diagnosed_on=local_today(),
                      source="clinic")


def test_another_townships_doctor_may_not_enrol_or_read(db: Session, registry_world: RegistryWorld) -> None:
    w = registry_world
    with pytest.raises(NeedToKnowDenied):
        service.enrol(db, by=w.doc2, patient_id=w.p1.id, condition_code="htn", diagnosed_on=local_today(),
                      source="clinic")
    db.rollback()
    with pytest.raises(NeedToKnowDenied):
        service.patient_chronic_summary(db, user=w.doc2, patient_id=w.p1.id)
    db.rollback()
    assert db.scalar(select(func.count()).select_from(ChronicEnrolment)) == 0
    assert db.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.patient_id == w.p1.id, AuditEvent.outcome == "denied")) >= 1


def test_update_enrolment_validates_and_keeps_untouched_lists(db: Session, registry_world: RegistryWorld) -> None:
    w = registry_world
    row = service.enrol(db, by=w.doc1, patient_id=w.p1.id, condition_code="htn", diagnosed_on=local_today(),
                        source="clinic", risk_factors=["smoking"])
    db.commit()
    with pytest.raises(InvalidInput) as exc:
        service.update_enrolment(db, by=w.doc1, enrolment_id=row.id, complications=["gout-ish"])
    assert _fields(exc) == {"complications"}
    db.rollback()
    service.update_enrolment(db, by=w.doc1, enrolment_id=row.id, complications=["ckd", "ckd"],
                             medicines=[{"name": "二甲双胍", "dose": "0.5g", "frequency": "bid"}])
    db.commit()
    db.refresh(row)
    assert row.risk_factors == ["smoking"] and row.complications == ["ckd"]
    assert row.medicines[0]["name"] == "二甲双胍"


# --- API ------------------------------------------------------------------------------------------

def test_api_enrolment_round_trip_and_4xx_shapes(client, db: Session, registry_world: RegistryWorld) -> None:  # noqa: ANN001
    w = registry_world
    headers = f.bearer(client, w.doc1.username)
    body = {"patient_id": w.p1.id, "condition_code": "htn", "diagnosed_on": str(local_today()), "source": "clinic",
            "medicines": [{"name": "缬沙坦", "dose": "80mg", "frequency": "qd"}]}
    created = client.post("/api/v1/chronic/enrolments", json=body, headers=headers)
    assert created.status_code == 201, created.text
    assert created.json()["team_id"] == w.team1.id and created.json()["next_visit_kind"] == "first"
    again = client.post("/api/v1/chronic/enrolments", json=body, headers=headers)
    assert again.status_code == 409 and again.json()["code"] == "already_enrolled"
    bad = client.post("/api/v1/chronic/enrolments", headers=headers, json={
        **body, "condition_code": "t2dm", "diagnosed_on": str(local_today() + timedelta(days=3))})
    assert bad.status_code == 422
    assert [e["field"] for e in bad.json()["field_errors"]] == ["diagnosed_on"]
    listed = client.get(f"/api/v1/chronic/enrolments?patient_id={w.p1.id}", headers=headers)
    assert [e["condition_code"] for e in listed.json()] == ["htn"]
    other = f.bearer(client, w.doc2.username)
    refused = client.get(f"/api/v1/chronic/enrolments?patient_id={w.p1.id}", headers=other)
    assert refused.status_code == 403 and refused.json()["code"] == "no_care_relationship"
    garbage = client.post("/api/v1/chronic/enrolments", headers=headers, json={"patient_id": "x"})
    assert garbage.status_code == 422 and garbage.json()["field_errors"]


# --- pages ----------------------------------------------------------------------------------------

def test_enrol_form_shows_errors_then_the_patient_page_shows_the_card(client, db: Session,  # noqa: ANN001
                                                                      registry_world: RegistryWorld) -> None:
    w = registry_world
    token = login(client, w.doc1.username, f"/chronic/patients/{w.p1.id}/enrol")
    form = {"csrf_token": token, "condition_code": "htn", "diagnosed_on": str(local_today() + timedelta(days=2)),
            "source": "clinic", "risk_factors": ["smoking", "obesity"], "medicine_name": ["氨氯地平", "", "", ""],
            "medicine_dose": ["5mg", "", "", ""], "medicine_frequency": ["", "", "", ""]}
    refused = client.post(f"/chronic/patients/{w.p1.id}/enrol", data=form, follow_redirects=False)
    assert refused.status_code == 422
    assert 'id="diagnosed_on-error"' in refused.text and 'id="medicines-0-frequency-error"' in refused.text
    assert 'value="smoking" style="width:auto" checked' in refused.text  # what was typed is kept
    form.update(diagnosed_on=str(local_today() - timedelta(days=10)), medicine_frequency=["qd", "", "", ""])
    done = client.post(f"/chronic/patients/{w.p1.id}/enrol", data=form, follow_redirects=False)
    assert done.status_code == 303, done.text
    page = client.get(done.headers["location"])
    assert page.status_code == 200
    assert "高血压" in page.text and "吸烟" in page.text and "氨氯地平 5mg qd" in page.text
    row = db.scalar(select(ChronicEnrolment).where(ChronicEnrolment.patient_id == w.p1.id))
    assert f'href="/chronic/follow-ups/new?enrolment={row.id}"' in page.text
    assert f'href="/chronic/readings/new?patient_id={w.p1.id}"' in page.text
    assert client.get(f"/chronic/patients/{w.p2.id}").status_code == 403


def test_landing_lists_my_teams_with_counts_and_links(client, db: Session, registry_world: RegistryWorld) -> None:  # noqa: ANN001
    w = registry_world
    row = service.enrol(db, by=w.doc1, patient_id=w.p1.id, condition_code="htn",
                        diagnosed_on=local_today() - timedelta(days=100), source="clinic")
    row.next_visit_due = local_today() - timedelta(days=3)
    db.commit()
    login(client, w.vdoc.username)
    page = client.get("/chronic")
    assert page.status_code == 200
    assert w.team1.name in page.text and w.team2.name not in page.text
    assert f'href="/chronic/worklist?team={w.team1.id}"' in page.text and 'href="/chronic/indicators' in page.text
    card = page.text.split(f'id="team-card-{w.team1.id}"')[1].split("</section>")[0]
    assert 'data-count="htn">1<' in card and 'data-count="overdue">3<' not in card
    assert 'data-count="overdue">1<' in card
