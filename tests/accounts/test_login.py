"""Signing in through the page (CSRF, throttling) and through the OAuth2 token endpoint."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select, update

from healthrelay.accounts.models import ApiToken, LoginAttempt, Role
from healthrelay.audit.models import AuditEvent
from healthrelay.core.db import utcnow
from tests import factories as f


def csrf_from(client, path: str = "/login") -> str:  # noqa: ANN001
    page = client.get(path)
    assert page.status_code == 200
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, "the form carries a CSRF token"
    return match.group(1)


def login(client, username: str, password: str, token: str | None):  # noqa: ANN001, ANN201
    data = {"username": username, "password": password, "next": "/"}
    if token is not None:
        data["csrf_token"] = token
    return client.post("/login", data=data, follow_redirects=False)


def events(db, action: str) -> list[AuditEvent]:  # noqa: ANN001
    db.expire_all()
    return list(db.execute(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)).scalars())


def test_login_form_without_csrf_token_is_refused_and_signs_nobody_in(client, db) -> None:
    f.user(db, username="doc_a", organisation=f.organisation(db))
    db.commit()
    csrf_from(client)  # the session exists, but the form below does not carry its token
    response = login(client, "doc_a", f.PASSWORD, token=None)
    assert response.status_code == 403
    assert client.get("/api/v1/me").status_code == 401
    assert login(client, "doc_a", f.PASSWORD, token="forged").status_code == 403
    assert client.get("/api/v1/me").status_code == 401


def test_login_with_csrf_token_redirects_and_starts_a_session(client, db) -> None:
    f.user(db, username="doc_a", organisation=f.organisation(db))
    db.commit()
    response = login(client, "doc_a", f.PASSWORD, token=csrf_from(client))
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    me = client.get("/api/v1/me")
    assert me.status_code == 200 and me.json()["username"] == "doc_a"
    assert [e.username for e in events(db, "login.succeeded")] == ["doc_a"]


def test_wrong_password_shows_the_error_on_the_form(client, db) -> None:
    f.user(db, username="doc_a", organisation=f.organisation(db))
    db.commit()
    response = login(client, "doc_a", "not-the-password", token=csrf_from(client))
    assert response.status_code == 401
    assert "用户名或密码错误" in response.text and 'value="doc_a"' in response.text
    assert client.get("/api/v1/me").status_code == 401


def test_sixth_try_after_five_failures_is_throttled_even_with_the_right_password(client, db) -> None:
    f.user(db, username="doc_a", organisation=f.organisation(db))
    db.commit()
    token = csrf_from(client)
    for _ in range(5):
        assert login(client, "doc_a", "wrong-password", token).status_code == 401
    response = login(client, "doc_a", f.PASSWORD, token)
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) > 0
    assert "登录失败次数过多" in response.text
    assert client.get("/api/v1/me").status_code == 401
    failed = events(db, "login.failed")
    assert len(failed) == 5 and {e.username for e in failed} == {"doc_a"}
    assert all(e.outcome == "failed" and e.client_address for e in failed)
    throttled = events(db, "login.throttled")
    assert len(throttled) == 1 and throttled[0].outcome == "denied"
    assert events(db, "login.succeeded") == []


def test_throttling_is_per_username_and_ends_when_the_window_passes(client, db) -> None:
    f.user(db, username="doc_a", organisation=f.organisation(db))
    f.user(db, username="doc_b", organisation=f.organisation(db))
    db.commit()
    token = csrf_from(client)
    for _ in range(5):
        login(client, "doc_a", "wrong-password", token)
    # Another account from the same address still signs in (a clinic's PCs share one address).
    assert login(client, "doc_b", f.PASSWORD, token).status_code == 303
    db.execute(update(LoginAttempt).values(attempted_at=utcnow() - timedelta(hours=1)))
    db.commit()
    client.cookies.clear()
    assert login(client, "doc_a", f.PASSWORD, csrf_from(client)).status_code == 303


def test_api_token_flow_and_throttling(client, db) -> None:
    f.user(db, username="doc_a", organisation=f.organisation(db))
    db.commit()
    headers = f.bearer(client, "doc_a")
    me = client.get("/api/v1/me", headers=headers)
    assert me.status_code == 200 and me.json()["role"] == Role.CLINICIAN
    wrong = client.post("/api/v1/auth/token", data={"username": "doc_a", "password": "nope-nope"})
    assert wrong.status_code == 401 and wrong.json()["code"] == "not_authenticated"
    for _ in range(4):
        client.post("/api/v1/auth/token", data={"username": "doc_a", "password": "nope-nope"})
    throttled = client.post("/api/v1/auth/token", data={"username": "doc_a", "password": f.PASSWORD})
    assert throttled.status_code == 429 and throttled.json()["code"] == "too_many_attempts"
    assert int(throttled.headers["retry-after"]) > 0


def test_revoked_and_expired_tokens_are_refused(client, db) -> None:
    f.user(db, username="doc_a", organisation=f.organisation(db))
    db.commit()
    headers = f.bearer(client, "doc_a")
    assert client.post("/api/v1/auth/logout", headers=headers).status_code == 204
    revoked = client.get("/api/v1/me", headers=headers)
    assert revoked.status_code == 401 and revoked.headers["www-authenticate"] == "Bearer"

    headers = f.bearer(client, "doc_a")
    assert client.get("/api/v1/me", headers=headers).status_code == 200
    db.execute(update(ApiToken).where(ApiToken.revoked_at.is_(None))
               .values(expires_at=utcnow() - timedelta(seconds=1)))
    db.commit()
    assert client.get("/api/v1/me", headers=headers).status_code == 401
    assert client.get("/api/v1/me", headers={"Authorization": "Bearer made-up"}).status_code == 401


def test_a_disabled_account_cannot_sign_in_or_use_its_token(client, db) -> None:
    user = f.user(db, username="doc_a", organisation=f.organisation(db))
    db.commit()
    headers = f.bearer(client, "doc_a")
    user.is_active = False
    db.commit()
    assert client.get("/api/v1/me", headers=headers).status_code == 401
    assert client.post("/api/v1/auth/token", data={"username": "doc_a", "password": f.PASSWORD}).status_code == 401
