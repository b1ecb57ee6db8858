"""The consultation-request API: create, list, act, the worklist and the centres; clear 4xx for bad input."""

from __future__ import annotations

import threading

import httpx
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.imaging.models import ImagingSeries, ImagingStudy
from healthrelay.teleconsult.models import ConsultRequest, ConsultTransition
from tests import factories as f
from tests.conftest import PG_URL
from tests.teleconsult.conftest import Requests, TeleWorld, move_due_into_past


def _body(w: TeleWorld, **changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "patient_id": w.patient.id, "centre_id": w.centre.id, "kind": "imaging", "priority": "emergency",
        "clinical_question": "头颅 CT：脑出血？", "case_summary": "突发头痛呕吐 1 小时", "consent_kind": "written"}
    body.update(changes)
    return body


def test_create_then_the_centre_claims_and_the_requester_follows(client, tele: TeleWorld) -> None:  # noqa: ANN001
    town = f.bearer(client, "town_doc")
    reader = f.bearer(client, "yx_senior")
    created = client.post("/api/v1/teleconsult/requests", json=_body(tele), headers=town)
    assert created.status_code == 201, created.text
    request = created.json()
    assert request["number"].startswith("YC") and request["state"] == "requested"
    assert request["created_via"] == "api" and request["consent_kind"] == "written"
    assert [t["action"] for t in request["transitions"]] == ["create"]
    work = client.get("/api/v1/teleconsult/worklist", headers=reader)
    assert work.status_code == 200
    [row] = work.json()
    assert row["id"] == request["id"] and row["patient_masked_name"] == "王*英"
    assert row["inviting_organisation_name"] == "东山镇卫生院" and 28 <= row["minutes_left"] <= 30
    claimed = client.post(f"/api/v1/teleconsult/requests/{request['id']}/claim", headers=reader)
    assert claimed.status_code == 200 and claimed.json()["claimed_by_user_id"] == tele.senior.id
    assert claimed.json()["state"] == "accepted"
    seen = client.get(f"/api/v1/teleconsult/requests/{request['id']}", headers=town)
    assert seen.status_code == 200 and [t["action"] for t in seen.json()["transitions"]] == ["create", "claim"]
    sent = client.get("/api/v1/teleconsult/requests?side=sent", headers=town)
    assert [r["id"] for r in sent.json()] == [request["id"]]
    received = client.get("/api/v1/teleconsult/requests?side=received&state=accepted", headers=reader)
    assert [r["id"] for r in received.json()] == [request["id"]]


def test_missing_consent_and_bad_values_are_422_naming_the_fields(client, tele: TeleWorld, db: Session) -> None:  # noqa: ANN001
    town = f.bearer(client, "town_doc")
    no_consent = _body(tele)
    del no_consent["consent_kind"]
    r = client.post("/api/v1/teleconsult/requests", json=no_consent, headers=town)
    assert r.status_code == 422 and r.json()["field_errors"][0]["field"] == "consent_kind"
    r = client.post("/api/v1/teleconsult/requests", json=_body(tele, consent_kind="verbal", priority="routine",
                                                                clinical_question=" "), headers=town)
    assert r.status_code == 422
    assert {e["field"] for e in r.json()["field_errors"]} >= {"clinical_question"}
    r = client.post("/api/v1/teleconsult/requests", json=_body(tele, consent_kind="verbal"), headers=town)
    assert r.status_code == 422 and [e["field"] for e in r.json()["field_errors"]] == ["consent_kind"]
    r = client.post("/api/v1/teleconsult/requests", json=_body(tele, priority="stat"), headers=town)
    assert r.status_code == 422 and r.json()["field_errors"][0]["field"] == "priority"
    r = client.post("/api/v1/teleconsult/requests", content=b"{not json", headers={
        **town, "content-type": "application/json"})
    assert r.status_code == 422 and r.json()["code"] == "malformed_json"
    assert db.execute(select(func.count()).select_from(ConsultRequest)).scalar() == 0


def test_wrong_state_is_409_naming_the_state_and_wrong_side_is_403(client, tele: TeleWorld,  # noqa: ANN001
                                                                     requests: Requests) -> None:
    reader = f.bearer(client, "yx_trainee")
    town = f.bearer(client, "town_doc")
    r = client.post(f"/api/v1/teleconsult/requests/{requests.declined.id}/accept", headers=reader)
    assert r.status_code == 409 and "declined" in r.json()["message"]
    r = client.post(f"/api/v1/teleconsult/requests/{requests.claimed_senior.id}/claim", headers=reader)
    assert r.status_code == 409 and "钱医师" in r.json()["message"]
    r = client.post(f"/api/v1/teleconsult/requests/{requests.requested.id}/accept", headers=town)
    assert r.status_code == 403
    r = client.post(f"/api/v1/teleconsult/requests/{requests.requested.id}/decline", json={"reason": ""},
                    headers=reader)
    assert r.status_code == 422 and r.json()["field_errors"][0]["field"] == "reason"
    r = client.post(f"/api/v1/teleconsult/requests/{requests.requested.id}/decline",
                    json={"reason": "非本中心业务范围"}, headers=reader)
    assert r.status_code == 200 and r.json()["state"] == "declined" and r.json()["decline_reason"] == "非本中心业务范围"
    r = client.post(f"/api/v1/teleconsult/requests/{requests.accepted.id}/cancel", json={"reason": "患者拒绝"},
                    headers=town)
    assert r.status_code == 200 and r.json()["state"] == "cancelled" and r.json()["closed_at"]
    assert client.post("/api/v1/teleconsult/requests/999999/claim", headers=reader).status_code == 404
    outsider = f.bearer(client, "outsider_doc")
    assert client.get(f"/api/v1/teleconsult/requests/{requests.requested.id}", headers=outsider).status_code == 403
    assert client.get("/api/v1/teleconsult/worklist", headers=outsider).status_code == 403


def test_release_and_reassign(client, tele: TeleWorld, requests: Requests) -> None:  # noqa: ANN001
    trainee = f.bearer(client, "yx_trainee")
    head = f.bearer(client, "yx_head")
    held = requests.claimed_trainee.id
    r = client.post(f"/api/v1/teleconsult/requests/{held}/reassign", json={"to_user_id": tele.senior.id},
                    headers=trainee)
    assert r.status_code == 403
    r = client.post(f"/api/v1/teleconsult/requests/{held}/reassign", json={"to_user_id": tele.senior.id,
                                                                           "reason": "疑难"}, headers=head)
    assert r.status_code == 200 and r.json()["claimed_by_user_id"] == tele.senior.id
    r = client.post(f"/api/v1/teleconsult/requests/{held}/release", json={"reason": "交班"}, headers=trainee)
    assert r.status_code == 403
    senior = f.bearer(client, "yx_senior")
    r = client.post(f"/api/v1/teleconsult/requests/{held}/release", json={"reason": "交班"}, headers=senior)
    assert r.status_code == 200 and r.json()["claimed_by_user_id"] is None
    r = client.post(f"/api/v1/teleconsult/requests/{held}/reassign", json={"to_user_id": "x"}, headers=head)
    assert r.status_code == 422


def test_worklist_filters_and_study_links(client, db: Session, tele: TeleWorld,  # noqa: ANN001
                                          requests: Requests) -> None:
    reader = f.bearer(client, "yx_senior")
    uid = generate_uid()
    study = ImagingStudy(study_instance_uid=uid, patient_id=tele.patient.id, organisation_id=tele.town.id,
                         consult_request_id=requests.accepted.id, modalities_in_study="CT", number_of_instances=3)
    db.add(study)
    db.flush()
    db.add(ImagingSeries(study_id=study.id, series_instance_uid=generate_uid(), modality="CT"))
    db.commit()
    move_due_into_past(db, requests.claimed_trainee)
    rows = client.get("/api/v1/teleconsult/worklist", headers=reader).json()
    assert rows[0]["id"] == requests.claimed_trainee.id and rows[0]["overdue"] and rows[0]["minutes_left"] < 0
    assert rows[0]["claimed_by_name"] == "孙医师"
    rows = client.get("/api/v1/teleconsult/worklist?modality=CT", headers=reader).json()
    assert [r["id"] for r in rows] == [requests.accepted.id]
    assert rows[0]["modalities"] == ["CT"]
    assert rows[0]["studies"][0]["viewer_url"] == f"/imaging/studies/{uid}/viewer"
    rows = client.get("/api/v1/teleconsult/worklist?mine=true", headers=reader).json()
    assert [r["id"] for r in rows] == [requests.claimed_senior.id]
    rows = client.get("/api/v1/teleconsult/worklist?priority=emergency&unclaimed=true", headers=reader).json()
    assert [r["id"] for r in rows] == [requests.emergency.id]
    assert client.get("/api/v1/teleconsult/worklist?priority=stat", headers=reader).status_code == 422
    assert client.get(f"/api/v1/teleconsult/worklist?inviting_organisation_id={tele.town_b.id}",
                      headers=reader).json() == []
    detail = client.get(f"/api/v1/teleconsult/requests/{requests.accepted.id}", headers=reader).json()
    assert detail["studies"][0]["study_instance_uid"] == uid


def test_centres_to_send_to_and_to_read_for(client, tele: TeleWorld) -> None:  # noqa: ANN001
    town = f.bearer(client, "town_doc")
    send = client.get("/api/v1/teleconsult/centres", headers=town).json()
    assert {c["code"] for c in send} == {"YX-CENTRE", "XD-CENTRE"}
    assert {c["organisation_name"] for c in send} == {"测试县人民医院"}
    imaging = client.get("/api/v1/teleconsult/centres?kind=imaging", headers=town).json()
    assert [c["code"] for c in imaging] == ["YX-CENTRE"]
    assert client.get("/api/v1/teleconsult/centres", headers=f.bearer(client, "outsider_doc")).json() == []
    read = client.get("/api/v1/teleconsult/centres?scope=read", headers=f.bearer(client, "yx_trainee")).json()
    assert "YX-CENTRE" in {c["code"] for c in read}
    assert client.get("/api/v1/teleconsult/centres?scope=x", headers=town).status_code == 422
    assert client.get("/api/v1/teleconsult/centres").status_code == 401


@pytest.mark.skipif(not PG_URL, reason="a real race needs PostgreSQL and a server with concurrent requests")
def test_two_readers_claim_over_http_at_once_and_the_first_wins(live_server: str, db: Session,  # noqa: ANN001
                                                                tele: TeleWorld, requests: Requests) -> None:
    with httpx.Client(base_url=live_server) as http:
        tokens = {u: http.post("/api/v1/auth/token", data={"username": u, "password": f.PASSWORD}).json()[
            "access_token"] for u in ("yx_senior", "yx_trainee")}
    target = requests.accepted.id
    barrier = threading.Barrier(2)
    results: dict[str, httpx.Response] = {}

    def claim(username: str) -> None:
        with httpx.Client(base_url=live_server, timeout=30) as http:
            barrier.wait()
            results[username] = http.post(f"/api/v1/teleconsult/requests/{target}/claim",
                                          headers={"Authorization": f"Bearer {tokens[username]}"})

    threads = [threading.Thread(target=claim, args=(u,)) for u in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    codes = sorted(r.status_code for r in results.values())
    assert codes == [200, 409], {u: r.text for u, r in results.items()}
    db.expire_all()
    assert db.execute(select(func.count()).where(ConsultTransition.request_id == target,
                                                 ConsultTransition.action == "claim")).scalar() == 1
