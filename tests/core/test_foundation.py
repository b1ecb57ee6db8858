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
