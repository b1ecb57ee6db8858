"""The referral API: thin routes, clear 4xx for bad input, and the first accept wins."""

from __future__ import annotations

import threading
from datetime import date, timedelta

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.audit.models import AuditEvent
from healthrelay.referrals.models import Referral, ReferralTransition
from tests import factories as f
from tests.conftest import PG_URL
from tests.referrals.conftest import World, move_due_into_past, sent_referral


def _body(w: World, **changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "patient_id": w.patient.id, "to_organisation_id": w.county.id, "to_department_id": w.cardiology.id,
        "urgency": "green_channel", "reason": "胸痛 1 小时", "diagnosis_code": "I21.9",
        "diagnosis_text": "急性心肌梗死", "vital_signs": {"bp": "90/60"}, "consent_kind": "written", "send": True}
    body.update(changes)
    return body


def test_create_and_send_then_the_county_accepts(client, world: World) -> None:  # noqa: ANN001
    village = f.bearer(client, "village_doc")
    county = f.bearer(client, "county_doc")
    created = client.post("/api/v1/referrals", json=_body(world), headers=village)
    assert created.status_code == 201, created.text
    referral = created.json()
    assert referral["state"] == "sent" and referral["number"].startswith("ZZ")
    assert [t["to_state"] for t in referral["transitions"]] == ["draft", "sent"]
    board = client.get(f"/api/v1/referrals?to_department={world.cardiology.id}&state=sent", headers=county)
    assert [r["id"] for r in board.json()] == [referral["id"]]
    seen = client.get(f"/api/v1/referrals/{referral['id']}", headers=county)
    assert seen.status_code == 200 and seen.json()["vital_signs"] == {"bp": "90/60"}
    accepted = client.post(f"/api/v1/referrals/{referral['id']}/accept", headers=county,
                           json={"appointment_at": "2026-11-24T09:00:00+08:00"})
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["appointment_at"].startswith("2026-11-24T01:00:00")
    again = client.post(f"/api/v1/referrals/{referral['id']}/decline", headers=county,
                        json={"reason": "无床位", "suggested_alternative_organisation_id": world.town_b.id})
    assert again.status_code == 409 and again.json()["code"] == "invalid_transition"
    assert client.post(f"/api/v1/referrals/{referral['id']}/arrive", headers=county).json()["state"] == "arrived"
    done = client.post(f"/api/v1/referrals/{referral['id']}/complete", headers=county, json={"outcome": "好转出院"})
    assert done.json()["state"] == "completed"


def test_bad_input_is_a_clear_4xx_and_nothing_is_written(client, db: Session, world: World) -> None:  # noqa: ANN001
    village = f.bearer(client, "village_doc")
    no_consent = client.post("/api/v1/referrals", json=_body(world, consent_kind=None), headers=village)
    assert no_consent.status_code == 422
    assert [e["field"] for e in no_consent.json()["field_errors"]] == ["consent_kind"]
    outside = client.post("/api/v1/referrals", json=_body(world, to_organisation_id=world.outsider.id,
                                                          to_department_id=None), headers=village)
    assert outside.status_code == 422
    assert [e["field"] for e in outside.json()["field_errors"]] == ["to_organisation_id"]
    unknown = client.post("/api/v1/referrals", json=_body(world, to_department_id=987654, diagnosis_code="XYZ"),
                          headers=village)
    assert unknown.status_code == 422
    assert {e["field"] for e in unknown.json()["field_errors"]} == {"to_department_id", "diagnosis_code"}
    wrong_type = client.post("/api/v1/referrals", json=_body(world, urgency="whenever"), headers=village)
    assert wrong_type.status_code == 422
    db.expire_all()
    assert db.execute(select(func.count()).select_from(Referral)).scalar_one() == 0
    assert db.execute(select(func.count()).select_from(ReferralTransition)).scalar_one() == 0
    missing = client.post("/api/v1/referrals/424242/accept", json={"bed": "1"}, headers=village)
    assert missing.status_code == 404


def test_worklist_shows_overdue_first_and_outsiders_see_nothing(client, db: Session, world: World) -> None:  # noqa: ANN001
    routine = sent_referral(db, world, urgency="routine")
    urgent = sent_referral(db, world, urgency="urgent")
    db.commit()
    move_due_into_past(db, routine, minutes=5)
    rows = client.get("/api/v1/referrals", headers=f.bearer(client, "county_doc")).json()
    assert [(r["id"], r["overdue"]) for r in rows] == [(routine.id, True), (urgent.id, False)]
    assert client.get("/api/v1/referrals", headers=f.bearer(client, "outsider_doc")).json() == []
    outsider_read = client.get(f"/api/v1/referrals/{urgent.id}", headers=f.bearer(client, "outsider_doc"))
    assert outsider_read.status_code == 403 and outsider_read.json()["code"] == "no_care_relationship"
    denied = db.execute(select(AuditEvent).where(AuditEvent.action == "referral.read",
                                                 AuditEvent.outcome == "denied")).scalars().all()
    assert [e.username for e in denied] == ["outsider_doc"]


def test_down_referral_follow_up_tasks_and_back_up(client, world: World) -> None:  # noqa: ANN001
    county = f.bearer(client, "county_doc")
    village = f.bearer(client, "village_doc")
    up = client.post("/api/v1/referrals", json=_body(world), headers=village).json()
    client.post(f"/api/v1/referrals/{up['id']}/accept", json={"bed": "CCU 2 床"}, headers=county)
    due = (date.today() + timedelta(days=14)).isoformat()
    down = client.post("/api/v1/referrals/down", headers=county, json={
        "patient_id": world.patient.id, "to_organisation_id": world.town_a.id, "to_team_id": world.team_a.id,
        "diagnosis_code": "I21.9", "consent_kind": "verbal", "parent_referral_id": up["id"],
        "care_plan": {"diagnosis": "心梗术后", "medicines": ["阿司匹林 100 mg qd"],
                      "follow_up": [{"due_on": due, "kind": "门诊随访"}], "warning_signs": ["胸痛"]}})
    assert down.status_code == 201, down.text
    assert down.json()["direction"] == "down" and down.json()["state"] == "sent"
    no_plan = client.post("/api/v1/referrals/down", headers=county, json={
        "patient_id": world.patient.id, "to_organisation_id": world.town_a.id, "consent_kind": "verbal",
        "care_plan": {"follow_up": []}})
    assert no_plan.status_code == 422
    accepted = client.post(f"/api/v1/referrals/{down.json()['id']}/accept", json={}, headers=village)
    assert accepted.status_code == 200, accepted.text
    tasks = client.get(f"/api/v1/referrals/follow-up-tasks?organisation_id={world.town_a.id}", headers=village)
    assert [(t["kind"], t["due_on"], t["patient_id"]) for t in tasks.json()] == [("门诊随访", due, world.patient.id)]
    back = client.post(f"/api/v1/referrals/{down.json()['id']}/send-back-up", headers=village,
                       json={"reason": "胸痛再发", "urgency": "green_channel"})
    assert back.status_code == 201, back.text
    assert back.json()["state"] == "sent" and back.json()["to_organisation_id"] == world.county.id
    assert [h["direction"] for h in back.json()["history"]] == ["up", "down"]
    assert back.json()["history"][1]["care_plan"]["warning_signs"] == ["胸痛"]


def _accept_after(barrier: threading.Barrier, url: str, token: str, results: list[int]) -> None:
    barrier.wait()
    r = httpx.post(url, json={"bed": "1"}, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    results.append(r.status_code)


@pytest.mark.skipif(not PG_URL, reason="row-level concurrency is a PostgreSQL property; SQLite serialises writers")
def test_two_doctors_accept_at_once_and_the_first_wins(live_server: str, db: Session, world: World) -> None:
    referral = sent_referral(db, world)
    db.commit()
    tokens = []
    for name in ("county_doc", "county_doc2"):
        r = httpx.post(f"{live_server}/api/v1/auth/token", data={"username": name, "password": f.PASSWORD})
        tokens.append(r.json()["access_token"])
    for _ in range(5):  # several rounds: each must end with exactly one winner
        barrier = threading.Barrier(2)
        results: list[int] = []

        url = f"{live_server}/api/v1/referrals/{referral.id}/accept"
        threads = [threading.Thread(target=_accept_after, args=(barrier, url, t, results)) for t in tokens]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [200, 409]
        db.expire_all()
        accepts = db.execute(select(func.count()).where(ReferralTransition.referral_id == referral.id,
                                                        ReferralTransition.to_state == "accepted")).scalar_one()
        assert accepts == 1
        # Next round: a fresh referral to race for.
        referral = sent_referral(db, world)
        db.commit()


def test_signed_out_callers_are_refused(client, world: World) -> None:  # noqa: ANN001
    assert client.get("/api/v1/referrals").status_code == 401
    assert client.post("/api/v1/referrals", json=_body(world)).status_code == 401
