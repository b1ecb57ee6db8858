"""The emergency API: intake, recommendation, dispatch, crew states; clear 4xx for bad input, nothing half-written."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.emergency.models import Ambulance, AmbulanceStateChange, EmergencyCall
from tests import factories as f
from tests.emergency.conftest import EmWorld


def _body(w: EmWorld, **changes: object) -> dict[str, object]:
    body: dict[str, object] = {"category": "chest_pain", "priority": 1, "complaint": "胸痛1小时，大汗",
                               "caller_name": "李家属", "caller_phone": "13900000000", "area_id": w.village.id}
    body.update(changes)
    return body


def _count(db: Session, model: type) -> int:
    db.expire_all()
    return db.execute(select(func.count()).select_from(model)).scalar_one()


def test_a_call_from_intake_to_hospital(client, db: Session, world: EmWorld) -> None:  # noqa: ANN001
    disp = f.bearer(client, "disp_city")
    crew = f.bearer(client, "crew_shimen")
    created = client.post("/api/v1/emergency/calls", json=_body(world), headers=disp)
    assert created.status_code == 201, created.text
    call = created.json()
    assert call["state"] == "answered" and call["number"].startswith("JJ") and call["urban"] is False
    board = client.get("/api/v1/emergency/calls", headers=disp).json()
    assert [c["id"] for c in board] == [call["id"]]
    rec = client.get(f"/api/v1/emergency/calls/{call['id']}/recommendation", headers=disp)
    assert rec.status_code == 200
    best, dest = rec.json()["best_ambulance_id"], rec.json()["destination"]["organisation_id"]
    assert dest == world.county.id
    sent = client.post(f"/api/v1/emergency/calls/{call['id']}/dispatch", headers=disp,
                       json={"ambulance_id": best, "destination_organisation_id": dest})
    assert sent.status_code == 200, sent.text
    assert sent.json()["state"] == "dispatched" and sent.json()["recommendation"]["chosen"]["followed_ambulance"]
    for state in ("en_route", "on_scene", "transporting", "at_hospital"):
        moved = client.post(f"/api/v1/emergency/ambulances/{best}/state", headers=crew, json={"to_state": state})
        assert moved.status_code == 200, moved.text
        assert moved.json()["state"] == state
    detail = client.get(f"/api/v1/emergency/calls/{call['id']}", headers=disp).json()
    assert detail["state"] == "at_hospital" and detail["at_hospital_at"] and detail["on_scene_at"]
    log = client.get(f"/api/v1/emergency/ambulances/{best}/log", headers=disp).json()
    assert [r["to_state"] for r in log][:2] == ["at_hospital", "transporting"]


def test_bad_calls_are_422_naming_the_field(client, db: Session, world: EmWorld) -> None:  # noqa: ANN001
    disp = f.bearer(client, "disp_city")
    for changes, field in (({"area_id": 987654}, "area_id"),
                           ({"area_id": None, "latitude": 30.0, "longitude": 200.0}, "longitude"),
                           ({"category": "burn"}, "category"), ({"priority": 0}, "priority")):
        r = client.post("/api/v1/emergency/calls", json=_body(world, **changes), headers=disp)
        assert r.status_code == 422, r.text
        assert field in {e["field"] for e in r.json()["field_errors"]}, r.json()
        assert "未知" in r.json()["message"] or "有误" in r.json()["message"]
    naive = client.post("/api/v1/emergency/calls", json=_body(world, received_at="2026-12-04T10:00:00"), headers=disp)
    assert naive.status_code == 422
    assert _count(db, EmergencyCall) == 0


def test_dispatching_a_busy_ambulance_is_409_and_writes_nothing(client, db: Session,  # noqa: ANN001
                                                               world: EmWorld) -> None:
    disp = f.bearer(client, "disp_city")
    first = client.post("/api/v1/emergency/calls", json=_body(world), headers=disp).json()
    second = client.post("/api/v1/emergency/calls", json=_body(world, category="trauma"), headers=disp).json()
    ok = client.post(f"/api/v1/emergency/calls/{first['id']}/dispatch", headers=disp,
                     json={"ambulance_id": world.emergency_amb.id, "destination_organisation_id": world.county.id})
    assert ok.status_code == 200
    changes = _count(db, AmbulanceStateChange)
    busy = client.post(f"/api/v1/emergency/calls/{second['id']}/dispatch", headers=disp,
                       json={"ambulance_id": world.emergency_amb.id, "destination_organisation_id": world.county.id})
    assert busy.status_code == 409
    assert busy.json()["code"] == "ambulance_not_available" and first["number"] in busy.json()["message"]
    assert _count(db, AmbulanceStateChange) == changes
    assert db.get(EmergencyCall, second["id"]).state == "answered"  # type: ignore[union-attr]


def test_closed_calls_and_unknown_things(client, db: Session, world: EmWorld) -> None:  # noqa: ANN001
    disp = f.bearer(client, "disp_city")
    call = client.post("/api/v1/emergency/calls", json=_body(world), headers=disp).json()
    no_reason = client.post(f"/api/v1/emergency/calls/{call['id']}/cancel", headers=disp, json={"reason": " "})
    assert no_reason.status_code == 422 and no_reason.json()["field_errors"][0]["field"] == "reason"
    assert client.post(f"/api/v1/emergency/calls/{call['id']}/cancel", headers=disp,
                       json={"reason": "重复来电"}).status_code == 200
    closed = client.post(f"/api/v1/emergency/calls/{call['id']}/dispatch", headers=disp,
                         json={"ambulance_id": world.transport_amb.id})
    assert closed.status_code == 409 and closed.json()["code"] == "call_closed"
    assert client.get("/api/v1/emergency/calls/999999", headers=disp).status_code == 404
    assert client.post("/api/v1/emergency/ambulances/999999/state", headers=disp,
                       json={"to_state": "en_route"}).status_code == 404
    bad_state = client.post(f"/api/v1/emergency/ambulances/{world.transport_amb.id}/state", headers=disp,
                            json={"to_state": "flying"})
    assert bad_state.status_code == 422 and bad_state.json()["field_errors"][0]["field"] == "to_state"
    bad_gps = client.post(f"/api/v1/emergency/ambulances/{world.transport_amb.id}/state", headers=disp,
                          json={"to_state": "out_of_service", "reason": "保养", "latitude": 91, "longitude": 110})
    assert bad_gps.status_code == 422
    assert db.get(Ambulance, world.transport_amb.id).state == "available"  # type: ignore[union-attr]


def test_who_may_use_the_board(client, db: Session, world: EmWorld) -> None:  # noqa: ANN001
    town = f.bearer(client, "town_doc")
    assert client.get("/api/v1/emergency/calls", headers=town).status_code == 403
    assert client.post("/api/v1/emergency/calls", json=_body(world), headers=town).status_code == 403
    assert client.post(f"/api/v1/emergency/ambulances/{world.transport_amb.id}/state", headers=town,
                       json={"to_state": "out_of_service", "reason": "x"}).status_code == 403
    assert client.get("/api/v1/emergency/calls").status_code == 401


def test_the_receiving_hospital_sees_its_call_but_not_the_board(client, db: Session,  # noqa: ANN001
                                                               world: EmWorld) -> None:
    disp = f.bearer(client, "disp_city")
    call = client.post("/api/v1/emergency/calls", json=_body(world), headers=disp).json()
    cardio = f.bearer(client, "cardio")
    assert client.get(f"/api/v1/emergency/calls/{call['id']}", headers=cardio).status_code == 403
    client.post(f"/api/v1/emergency/calls/{call['id']}/dispatch", headers=disp,
                json={"ambulance_id": world.emergency_amb.id, "destination_organisation_id": world.county.id})
    assert client.get(f"/api/v1/emergency/calls/{call['id']}", headers=cardio).status_code == 200


def test_area_search_by_pinyin_initials(client, world: EmWorld) -> None:  # noqa: ANN001
    disp = f.bearer(client, "disp_city")
    found = client.get("/api/v1/emergency/areas?q=lw", headers=disp).json()
    assert [a["name"] for a in found] == ["柳湾村"] and found[0]["parent_name"] == "石门镇"
    urban = client.get("/api/v1/emergency/areas?q=dongmen", headers=disp).json()
    assert urban[0]["urban"] is True
    assert client.get("/api/v1/emergency/areas?q=" + "x" * 50, headers=disp).status_code == 422
