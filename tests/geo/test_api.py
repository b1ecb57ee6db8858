"""The road network and travel times over HTTP: staff read them, patients do not; bad points get 422."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role
from tests import factories as f
from tests.geo.conftest import A, C, D, Tiny


@pytest.fixture
def dispatcher(db: Session) -> str:
    f.user(db, role=Role.DISPATCHER, username="disp", organisation=f.organisation(db))
    f.user(db, role=Role.PATIENT, username="pat", with_practitioner=False, patient=f.patient(db))
    db.commit()
    return "disp"


def _query(a: tuple[float, float], b: tuple[float, float], **extra: object) -> dict[str, object]:
    return {"from_lat": a[0], "from_lon": a[1], "to_lat": b[0], "to_lon": b[1], **extra}


def test_travel_time_and_route(client, tiny: Tiny, dispatcher: str) -> None:  # noqa: ANN001
    headers = f.bearer(client, dispatcher)
    r = client.get("/api/v1/geo/travel-time", params=_query(A, C, with_path="true"), headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["minutes"] == pytest.approx(12.0) and body["reachable"] is True
    assert body["path"][0] == list(A) and body["path"][-1] == list(C) and len(body["path"]) == 5
    r = client.get("/api/v1/geo/travel-time", params=_query(A, D), headers=headers)
    assert r.json() == {"minutes": None, "reachable": False, "path": None}


def test_network_as_geojson_by_class(client, tiny: Tiny, dispatcher: str) -> None:  # noqa: ANN001
    headers = f.bearer(client, dispatcher)
    body = client.get("/api/v1/geo/network", headers=headers).json()
    assert body["type"] == "FeatureCollection" and len(body["features"]) == 5 and body["node_count"] == 6
    first = body["features"][0]
    assert first["geometry"]["coordinates"] == [[A[1], A[0]], [110.07, 30.0]]  # GeoJSON is [lon, lat]
    village = client.get("/api/v1/geo/network", params={"road_class": "village"}, headers=headers).json()
    assert {x["properties"]["road_class"] for x in village["features"]} == {"village"}
    assert len(village["features"]) == 2
    speeds = client.get("/api/v1/geo/speeds", headers=headers).json()
    assert speeds[0] == {"road_class": "expressway", "kmh": 90.0, "description": speeds[0]["description"]}
    assert [s["road_class"] for s in speeds][-2:] == ["urban", "village"] and len(speeds) == 7
    assert all(" / " in s["description"] for s in speeds)  # Chinese / English reason for each speed


def test_bad_points_and_wrong_people_are_refused(client, tiny: Tiny, dispatcher: str) -> None:  # noqa: ANN001
    headers = f.bearer(client, dispatcher)
    r = client.get("/api/v1/geo/travel-time", params=_query((95.0, 110.0), C), headers=headers)
    assert r.status_code == 422
    assert any("from_lat" in str(e) for e in r.json()["field_errors"])
    r = client.get("/api/v1/geo/travel-time", params={"from_lat": 30}, headers=headers)
    assert r.status_code == 422
    assert client.get("/api/v1/geo/network").status_code == 401
    patient = f.bearer(client, "pat")
    assert client.get("/api/v1/geo/network", headers=patient).status_code == 403


def test_travel_time_on_an_empty_network_is_a_clear_404(client, dispatcher: str) -> None:  # noqa: ANN001
    r = client.get("/api/v1/geo/travel-time", params=_query(A, C), headers=f.bearer(client, dispatcher))
    assert r.status_code == 404
    assert "road network is empty" in r.json()["message"]
