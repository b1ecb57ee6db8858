"""Odd input from clients and forms gets a 4xx naming the problem, never a 500 (ids beyond the database's
integer range reach PostgreSQL otherwise)."""

from __future__ import annotations

import re

from tests import factories as f
from tests.recognition.conftest import RecWorld

HUGE = str(10**20)
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def test_ids_out_of_range_are_refused(client, rec: RecWorld) -> None:  # noqa: ANN001
    doctor = f.bearer(client, "county_doc")
    for response in (
        client.get(f"/api/v1/patients/{HUGE}/priors", params={"code": "K"}, headers=doctor),
        client.post("/api/v1/orders", json={"patient_id": int(HUGE), "code": "K"}, headers=doctor),
        client.get(f"/api/v1/orders/{HUGE}", headers=doctor),
        client.get("/api/v1/recognition/repeats", params={"organisation": HUGE}, headers=f.bearer(client, "bureau")),
        client.get("/api/v1/recognition/repeats", params={"organisation": "²"}, headers=f.bearer(client, "bureau")),
        client.post("/api/v1/recognition/eqa", json={"organisation_id": int(HUGE), "scope": "national",
                                                      "year": 2026, "modality": "CT"},
                    headers=f.bearer(client, "alliance_admin")),
    ):
        assert response.status_code == 422, response.text
        assert response.json()["field_errors"]


def test_forms_with_odd_values(client, rec: RecWorld) -> None:  # noqa: ANN001
    client.cookies.clear()
    token = CSRF_RE.search(client.get("/login").text).group(1)
    client.post("/login", data={"username": "alliance_admin", "password": f.PASSWORD, "csrf_token": token,
                                "next": "/"})
    token = CSRF_RE.search(client.get("/recognition/settings").text).group(1)
    assert client.get(f"/orders/new?patient_id={HUGE}").status_code == 422
    assert client.get(f"/orders/priors?patient_id={HUGE}&code=K").status_code == 422
    assert client.get(f"/patients/{HUGE}/orders").status_code == 422
    r = client.post("/recognition/settings/rules", data={"csrf_token": token, f"days_{HUGE}": "3", "days_1": "1e999"})
    assert r.status_code == 422 and 'id="days_1-error"' in r.text
    r = client.post("/recognition/settings/eqa", data={"csrf_token": token, "organisation_id": HUGE, "target": "code",
                                                        "value": "K", "scope": "national", "year": "²"})
    assert r.status_code == 422 and 'id="organisation_id-error"' in r.text and 'id="year-error"' in r.text
    r = client.post("/orders/new", data={"csrf_token": token, "patient_id": HUGE, "code": "K"})
    assert r.status_code == 422 and 'id="patient-q"' in r.text
