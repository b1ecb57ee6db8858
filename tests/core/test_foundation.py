from __future__ import annotations

from healthrelay.accounts.models import Role
from tests import factories as f


def test_healthz_reports_the_database(client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_openapi_lists_the_token_endpoint(client) -> None:
    assert "/api/v1/auth/token" in client.get("/openapi.json").json()["paths"]


def test_malformed_json_gets_a_clear_422(client, db) -> None:
    admin = f.user(db, role=Role.ALLIANCE_ADMIN, username="admin1")
    db.commit()
    headers = f.bearer(client, admin.username) | {"content-type": "application/json"}
    response = client.post("/api/v1/users", content=b"{bad", headers=headers)
    assert response.status_code == 422
    assert response.json()["code"] == "malformed_json"


def test_oversized_body_is_refused_with_413(client) -> None:
    response = client.post("/api/v1/auth/token", content=b"x" * (3 * 1024 * 1024),
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 413
    assert response.json()["code"] == "body_too_large"


def test_a_resident_opens_their_own_record_and_no_one_elses(client, db) -> None:
    township = f.organisation(db)
    me = f.patient(db, name="刘桂兰", registered_at=township)
    neighbour = f.patient(db, name="陈德明", registered_at=township)
    f.user(db, role=Role.PATIENT, username="resident1", patient=me, with_practitioner=False)
    db.commit()
    login = client.get("/login")
    token = login.text.split('name="csrf_token" value="')[1].split('"')[0]
    client.post("/login", data={"username": "resident1", "password": f.PASSWORD, "csrf_token": token})
    own = client.get("/me")
    assert own.status_code == 200 and "刘桂兰" in own.text
    other = client.get(f"/patients/{neighbour.id}")
    assert other.status_code == 403 and "陈德明" not in other.text


def test_english_switch_changes_the_page_language(client) -> None:
    assert "登录" in client.get("/login").text
    client.get("/lang/en")
    assert "Sign in" in client.get("/login").text


def test_access_log_lines_mask_id_and_mobile_numbers() -> None:
    import logging

    from healthrelay.core.logmask import MaskPersonalNumbers

    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", "/patients?q=11010519491231002X&p=13907181234", "1.1", 200),
                               None)
    MaskPersonalNumbers().filter(record)
    line = record.getMessage()
    assert "11010519491231002X" not in line and "110***********002X" in line
    assert "13907181234" not in line and "139****1234" in line
