"""The JSON API as a client uses it: bearer tokens, one error shape, real database."""

from __future__ import annotations

from datetime import date

from sqlalchemy import func, select

from healthrelay.audit.models import AuditEvent
from healthrelay.patients.models import Patient
from tests import factories as f
from tests.patients.conftest import rid

BORN = date(1956, 3, 8)


def body(**overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {"name": "王秀英", "sex": "F", "birth_date": "1956-03-08", "phone": "13912345678"}
    fields.update(overrides)
    return fields


def test_register_warns_of_likely_duplicates_then_accepts_confirmation(client, db, county) -> None:
    headers = f.bearer(client, "doctor_a")
    first = client.post("/api/v1/patients", json=body(area_id=county.village_a1.id, resident_id=rid(BORN, "F")),
                        headers=headers)
    assert first.status_code == 201, first.text
    assert first.json()["resident_id"].startswith("421") and "*" in first.json()["resident_id"]

    again = client.post("/api/v1/patients", json=body(name="王秀瑛", phone="", area_id=county.village_a1.id),
                        headers=headers)
    assert again.status_code == 409
    error = again.json()
    assert error["code"] == "likely_duplicates"
    candidate = error["candidates"][0]
    assert candidate["patient_id"] == first.json()["id"] and candidate["score"] >= 70
    assert set(candidate) >= {"patient_id", "score", "reasons", "name", "birth_date", "masked_id"}
    assert candidate["masked_id"] != rid(BORN, "F") and candidate["masked_id"].endswith(rid(BORN, "F")[-4:])
    assert db.execute(select(func.count()).select_from(Patient)).scalar_one() == 1

    confirmed = client.post("/api/v1/patients", json=body(name="王秀瑛", phone="", area_id=county.village_a1.id,
                                                          confirm_not_duplicate=True), headers=headers)
    assert confirmed.status_code == 201


def test_same_resident_id_gets_409_naming_the_record(client, county) -> None:
    headers = f.bearer(client, "doctor_a")
    first = client.post("/api/v1/patients", json=body(resident_id=rid(BORN, "F")), headers=headers).json()
    response = client.post("/api/v1/patients", json=body(name="李芳", resident_id=rid(BORN, "F"),
                                                         confirm_not_duplicate=True),
                           headers=f.bearer(client, "doctor_b"))
    assert response.status_code == 409
    assert response.json()["code"] == "duplicate_resident_id"
    assert response.json()["existing_patient_id"] == first["id"]


def test_bad_input_gets_a_clear_422(client, county) -> None:
    headers = f.bearer(client, "doctor_a")
    bad_id = client.post("/api/v1/patients", json=body(resident_id="42112219990230123X"), headers=headers)
    assert bad_id.status_code == 422
    assert bad_id.json()["field_errors"][0]["field"] == "resident_id"
    wrong_type = client.post("/api/v1/patients", json=body(birth_date="yesterday", sex="X"), headers=headers)
    assert wrong_type.status_code == 422
    assert {"birth_date", "sex"} <= {fe["field"] for fe in wrong_type.json()["field_errors"]}
    unknown = client.post("/api/v1/patients", json=body(colour="blue"), headers=headers)
    assert unknown.status_code == 422


def test_clinician_of_another_township_gets_403_with_the_patient_id(client, db, county) -> None:
    created = client.post("/api/v1/patients", json=body(), headers=f.bearer(client, "doctor_a")).json()
    response = client.get(f"/api/v1/patients/{created['id']}", headers=f.bearer(client, "doctor_b"))
    assert response.status_code == 403
    assert response.json()["code"] == "no_care_relationship"
    assert response.json()["patient_id"] == created["id"]
    assert db.execute(select(AuditEvent).where(AuditEvent.patient_id == created["id"],
                                               AuditEvent.outcome == "denied")).scalar() is not None
    assert client.get(f"/api/v1/patients/{created['id']}", headers=f.bearer(client, "doctor_a")).status_code == 200


def test_search_update_and_identifiers(client, county) -> None:
    headers = f.bearer(client, "doctor_a")
    created = client.post("/api/v1/patients", json=body(), headers=headers).json()
    rows = client.get("/api/v1/patients", params={"q": "wxy"}, headers=headers).json()
    assert [(r["id"], r["masked_phone"], r["can_open"]) for r in rows] == [(created["id"], "139****5678", True)]
    assert client.get("/api/v1/patients", params={"q": "wxy"}, headers=f.bearer(client, "bureau")).status_code == 403

    patched = client.patch(f"/api/v1/patients/{created['id']}", json={"phone": "0710-3456789", "grid": "二组"},
                           headers=headers)
    assert patched.status_code == 200 and patched.json()["phone"] == "07103456789"
    bad = client.patch(f"/api/v1/patients/{created['id']}", json={"resident_id": rid(BORN, "M")}, headers=headers)
    assert bad.status_code == 422 and bad.json()["code"] == "resident_id_mismatch"

    added = client.post(f"/api/v1/patients/{created['id']}/identifiers",
                        json={"type": "medical_record", "value": "MZ0009"}, headers=headers)
    assert added.status_code == 201 and added.json()["issuer_organisation_id"] == county.town_a.id


def test_merge_and_undo_over_the_api(client, db, county) -> None:
    doctor = f.bearer(client, "doctor_a")
    a = client.post("/api/v1/patients", json=body(), headers=doctor).json()
    b = client.post("/api/v1/patients", json=body(name="王秀瑛", confirm_not_duplicate=True), headers=doctor).json()
    admin = f.bearer(client, "admin_a")
    dups = client.get(f"/api/v1/patients/{a['id']}/duplicates", headers=admin).json()
    assert dups[0]["patient_id"] == b["id"]

    refused = client.post("/api/v1/patients/merges", json={"survivor_id": a["id"], "merged_id": b["id"],
                                                            "reason": "同一人重复建档"}, headers=doctor)
    assert refused.status_code == 403
    merged = client.post("/api/v1/patients/merges", json={"survivor_id": a["id"], "merged_id": b["id"],
                                                           "reason": "同一人重复建档"}, headers=admin)
    assert merged.status_code == 201, merged.text
    # Both were registered at township A: the merged side's registration was set aside for undo.
    assert merged.json()["moved"]["deleted:patient_registrations"] == 1
    followed = client.get(f"/api/v1/patients/{b['id']}", headers=doctor).json()
    assert (followed["id"], followed["requested_id"]) == (a["id"], b["id"])

    undo = client.post(f"/api/v1/patients/merges/{merged.json()['id']}/undo", json={"reason": "核实不是同一人"},
                       headers=admin)
    assert undo.status_code == 200 and undo.json()["undone_at"]
    again = client.post(f"/api/v1/patients/merges/{merged.json()['id']}/undo", json={"reason": "核实不是同一人"},
                        headers=admin)
    assert again.status_code == 409 and again.json()["code"] == "already_undone"
    assert client.get(f"/api/v1/patients/{b['id']}", headers=doctor).json()["id"] == b["id"]
