"""A client that has its answer can rely on it: the request's transaction is committed before the response
leaves, so a token used at once works and a page read right after a POST sees the write."""

from __future__ import annotations

import httpx
from sqlalchemy.orm import Session

from tests import factories


def test_a_token_works_the_moment_it_is_issued(live_server: str, db: Session) -> None:
    user = factories.user(db, organisation=factories.organisation(db))
    db.commit()
    refused: list[int] = []
    # Each round: a new connection for the token and another for its first use, as two API clients would.
    for _ in range(40):
        with httpx.Client(base_url=live_server) as issuer:
            answer = issuer.post("/api/v1/auth/token", data={"username": user.username,
                                                              "password": factories.PASSWORD})
        assert answer.status_code == 200, answer.text
        token = answer.json()["access_token"]
        with httpx.Client(base_url=live_server) as caller:
            me = caller.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
        if me.status_code != 200:
            refused.append(me.status_code)
        else:
            assert me.json()["username"] == user.username
    assert refused == []
