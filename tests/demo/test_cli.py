"""`healthrelay demo-accounts --json` as a script reads it, and the listed logins as a user tries them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from healthrelay.accounts.models import Role

BIN = Path(sys.executable).parent / "healthrelay"


def _accounts_json(database_url: str) -> dict:
    env = os.environ | {"HEALTHRELAY_DATABASE_URL": database_url}
    result = subprocess.run([str(BIN), "demo-accounts", "--json"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_demo_accounts_json_lists_every_role_before_the_demo_exists(database_url: str) -> None:
    document = _accounts_json(database_url)
    accounts = document["accounts"]
    assert {a["role"] for a in accounts} == {str(r) for r in Role}
    assert len({a["username"] for a in accounts}) == len(accounts)
    assert {a["password"] for a in accounts} == {document["password"]}
    for a in accounts:
        assert set(a) >= {"username", "password", "role", "organisation", "organisation_code"}
        assert (a["organisation"] is None) == (a["role"] == "patient")
    clinician_orgs = {a["organisation"] for a in accounts if a["role"] == "clinician"}
    assert sum(name.endswith("卫生院") for name in clinician_orgs) >= 2  # doctors at two townships
    assert any(name.endswith("卫生室") for name in clinician_orgs)


def test_listed_demo_logins_sign_in(built: list[str], client, database_url: str) -> None:  # noqa: ANN001
    accounts = {a["username"]: a for a in _accounts_json(database_url)["accounts"]}
    for username in ("doc.shimen", "reader.imaging", "bureau.health", "patient.baisha", "dispatch.city"):
        response = client.post("/api/v1/auth/token",
                               data={"username": username, "password": accounts[username]["password"]})
        assert response.status_code == 200, (username, response.text)
        assert response.json()["access_token"]
    refused = client.post("/api/v1/auth/token", data={"username": "doc.shimen", "password": "wrong-password"})
    assert refused.status_code == 401
