"""The recognition API as a member's client uses it: priors, the decision round trip, nothing half-written,
and the repeats figures."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.audit.models import AuditEvent
from healthrelay.core.db import utcnow
from healthrelay.recognition.models import ClinicalOrder, RecognitionDecision
from tests import factories as f
from tests.recognition.conftest import RecWorld


def _ct(db: Session, rec: RecWorld, days: float = 5) -> int:
    row = f.exam_result(db, patient=rec.patient, organisation=rec.town, code="CT_HEAD",
                        reported_at=utcnow() - timedelta(days=days), impression="未见出血")
    db.commit()
    return row.id


def _orders(db: Session) -> int:
    db.rollback()
    return db.execute(select(func.count()).select_from(ClinicalOrder)).scalar_one()


def test_priors_endpoint(client, db: Session, rec: RecWorld) -> None:  # noqa: ANN001
    prior_id = _ct(db, rec)
    headers = f.bearer(client, "county_doc")
    response = client.get(f"/api/v1/patients/{rec.patient.id}/priors", params={"code": "CTHEAD"}, headers=headers)
    assert response.status_code == 200, response.text
    [prior] = response.json()
    assert prior["ref"] == f"exam:{prior_id}" and prior["organisation_name"] == "东山镇卫生院"
    assert prior["recognition_mark"] == "医共体HR" and prior["value"] == "未见出血"
    bad = client.get(f"/api/v1/patients/{rec.patient.id}/priors", params={"code": "??"}, headers=headers)
    assert bad.status_code == 422 and bad.json()["field_errors"][0]["field"] == "code"
    denied = client.get(f"/api/v1/patients/{rec.patient.id}/priors", params={"code": "CT_HEAD"},
                        headers=f.bearer(client, "outsider_doc"))
    assert denied.status_code == 403


def test_order_round_trip_reorder_needs_a_reason(client, db: Session, rec: RecWorld) -> None:  # noqa: ANN001
    prior_id = _ct(db, rec)
    headers = f.bearer(client, "county_doc")
    body = {"patient_id": rec.patient.id, "code": "CT_HEAD"}
    first = client.post("/api/v1/orders", json=body, headers=headers)
    assert first.status_code == 422 and first.json()["code"] == "decision_required"
    assert [p["ref"] for p in first.json()["priors"]] == [f"exam:{prior_id}"]
    no_reason = client.post("/api/v1/orders", json={**body, "decision": "reorder"}, headers=headers)
    assert no_reason.status_code == 422
    assert no_reason.json()["field_errors"][0]["field"] == "reason_code"
    assert _orders(db) == 0
    ok = client.post("/api/v1/orders", json={**body, "decision": "reorder", "reason_code": "major_decision"},
                     headers=headers)
    assert ok.status_code == 201, ok.text
    assert ok.json()["decision"]["outcome"] == "repeated" and ok.json()["decision"]["reason_code"] == "major_decision"
    assert ok.json()["order"]["status"] == "placed"
    assert _orders(db) == 1
    order_id = ok.json()["order"]["id"]
    events = db.execute(select(AuditEvent.action).where(AuditEvent.resource == f"order:{order_id}")).scalars().all()
    assert "recognition.order" in events


def test_use_prior_is_counted_as_recognised_with_the_money(client, db: Session, rec: RecWorld) -> None:  # noqa: ANN001
    _ct(db, rec)
    f.lab_result(db, patient=rec.patient, organisation=rec.town, code="HBA1C", value="6.9",
                 reported_at=utcnow() - timedelta(days=30))
    db.commit()
    headers = f.bearer(client, "county_doc")
    for code in ("CT_HEAD", "HBA1C"):
        r = client.post("/api/v1/orders", json={"patient_id": rec.patient.id, "code": code, "decision": "use_prior"},
                        headers=headers)
        assert r.status_code == 201 and r.json()["order"]["status"] == "satisfied"
    r = client.post("/api/v1/orders", json={"patient_id": rec.patient.id, "code": "CT_HEAD", "decision": "reorder",
                                            "reason_code": "emergency"}, headers=headers)
    assert r.status_code == 201
    month = utcnow().strftime("%Y-%m")
    report = client.get("/api/v1/recognition/repeats", headers=f.bearer(client, "county_admin"))
    assert report.status_code == 200, report.text
    data = report.json()
    assert (data["recognised"], data["repeated"], data["unreasoned"]) == (2, 1, 0)
    assert data["saved_yuan"] == 260.0 and data["repeats_by_reason"] == {"emergency": 1}
    assert data["rows"][0]["organisation_id"] == rec.county.id
    assert data["rows"][-1]["month"] in (month, (utcnow() + timedelta(hours=8)).strftime("%Y-%m"))
    bureau = client.get("/api/v1/recognition/repeats", headers=f.bearer(client, "bureau"))
    assert bureau.status_code == 200 and bureau.json()["recognised"] == 2
    other = client.get("/api/v1/recognition/repeats", params={"organisation": rec.town.id},
                       headers=f.bearer(client, "county_admin"))
    assert other.status_code == 403
    doctor = client.get("/api/v1/recognition/repeats", headers=headers)
    assert doctor.status_code == 403
    bad_month = client.get("/api/v1/recognition/repeats", params={"start": "2026-13"},
                           headers=f.bearer(client, "bureau"))
    assert bad_month.status_code == 422


def test_bad_bodies_get_422_and_write_nothing(client, db: Session, rec: RecWorld) -> None:  # noqa: ANN001
    headers = f.bearer(client, "county_doc")
    for body, field in (({"patient_id": rec.patient.id, "code": "NOPE"}, "code"),
                        ({"patient_id": rec.patient.id, "code": "CT_HEAD", "decision": "maybe"}, "decision"),
                        ({"patient_id": rec.patient.id, "code": "CT_HEAD", "surprise": 1}, "surprise"),
                        ({"patient_id": "x", "code": "CT_HEAD"}, "patient_id")):
        r = client.post("/api/v1/orders", json=body, headers=headers)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["field_errors"][0]["field"] == field
    missing = client.post("/api/v1/orders", json={"patient_id": 999999, "code": "CT_HEAD"}, headers=headers)
    assert missing.status_code == 404
    assert _orders(db) == 0
    assert db.execute(select(func.count()).select_from(RecognitionDecision)).scalar_one() == 0


def test_reasons_list(client, rec: RecWorld) -> None:  # noqa: ANN001
    r = client.get("/api/v1/recognition/reorder-reasons", headers=f.bearer(client, "county_doc"))
    codes = {x["code"]: x["needs_note"] for x in r.json()}
    assert set(codes) == {"condition_changed", "fast_changing", "major_decision", "emergency", "forensic",
                          "patient_request", "eqa_failed", "too_old", "physician_judgement"}
    assert codes["physician_judgement"] and codes["condition_changed"] and not codes["emergency"]


def test_quality_assessment_api(client, db: Session, rec: RecWorld) -> None:  # noqa: ANN001
    year = utcnow().year
    admin = f.bearer(client, "town_admin")
    body = {"organisation_id": rec.town.id, "scope": "national", "year": year, "modality": "us"}
    created = client.post("/api/v1/recognition/eqa", json=body, headers=admin)
    assert created.status_code == 201, created.text
    assert created.json()["modality"] == "US" and created.json()["passed"] is True
    assert client.post("/api/v1/recognition/eqa", json={**body, "organisation_id": rec.town_b.id},
                       headers=admin).status_code == 403
    both = client.post("/api/v1/recognition/eqa", json={**body, "code": "K"}, headers=admin)
    assert both.status_code == 422 and both.json()["field_errors"][0]["code"] == "one_of"
    mine = client.get("/api/v1/recognition/eqa", headers=admin).json()
    assert {r["organisation_id"] for r in mine} == {rec.town.id} and len(mine) == 5
    everyone = client.get("/api/v1/recognition/eqa", headers=f.bearer(client, "bureau"))
    assert len(everyone.json()) == 5
    assert client.get("/api/v1/recognition/eqa", headers=f.bearer(client, "county_doc")).status_code == 403
    # A result reported now at the township carries the new national mark.
    from healthrelay.recognition.service import mark_for

    db.rollback()
    assert mark_for(db, organisation_id=rec.town.id, code="US_ABD", at=utcnow()) == "national"
