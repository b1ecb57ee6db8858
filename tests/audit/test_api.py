"""Searching and verifying the audit trail through the JSON API."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from healthrelay.accounts.models import Role
from healthrelay.audit import service as audit
from healthrelay.audit.models import AuditEvent
from tests import factories as f
from tests.audit.helpers import event_at


@pytest.fixture
def trail(db):  # noqa: ANN001, ANN201
    """Two organisations' staff and a few events of each, committed."""

    class Trail:
        a = f.organisation(db, name="青山镇卫生院")
        b = f.organisation(db, name="白水镇卫生院")
        boss = f.user(db, role=Role.ALLIANCE_ADMIN, username="boss")
        admin_a = f.user(db, role=Role.ORG_ADMIN, organisation=a, username="admin_a")
        doctor_a = f.user(db, organisation=a, username="doc_a")
        doctor_b = f.user(db, organisation=b, username="doc_b")

    t = Trail
    for i in range(3):
        event_at(db, datetime(2025, 3, 1 + i, 2, 0, tzinfo=UTC), username="doc_a", user_id=t.doctor_a.id,
                 organisation_id=t.a.id, patient_id=500 + i)
    event_at(db, datetime(2025, 3, 5, 2, 0, tzinfo=UTC), username="doc_b", user_id=t.doctor_b.id,
             organisation_id=t.b.id, patient_id=900, outcome="denied", action="patient.read")
    event_at(db, datetime(2025, 3, 6, 2, 0, tzinfo=UTC), username="doc_b", user_id=t.doctor_b.id,
             organisation_id=t.b.id, action="login.failed", outcome="failed")
    db.commit()
    return t


def get_events(client, as_user: str, **params: object):  # noqa: ANN001, ANN201
    return client.get("/api/v1/audit/events", params=params, headers=f.bearer(client, as_user))


def test_alliance_admin_filters_the_whole_trail(client, trail) -> None:
    def ids(**params: object) -> list[object]:
        response = get_events(client, "boss", **params)
        assert response.status_code == 200, response.text
        return [e["patient_id"] for e in response.json()["events"] if e["action"].startswith(("patient.", "login."))]

    assert ids(username="doc_a") == [502, 501, 500]
    assert ids(user=trail.doctor_b.id) == [None, 900]
    assert ids(patient_id=501) == [501]
    assert ids(action="login.", username="doc_b") == [None]  # the admins' own sign-ins are login.* too
    assert ids(outcome="denied") == [900]
    assert ids(since="2025-03-02T00:00:00Z", until="2025-03-05T00:00:00Z") == [502, 501]
    assert ids(since="2025-03-02T08:00:00+08:00", until="2025-03-02T10:00:00") == [501]


def test_keyset_paging_walks_back_through_time(client, trail) -> None:
    first = get_events(client, "boss", username="doc_a", limit=2).json()
    assert [e["patient_id"] for e in first["events"]] == [502, 501]
    assert first["next_before_id"] == first["events"][-1]["id"]
    second = get_events(client, "boss", username="doc_a", limit=2, before_id=first["next_before_id"]).json()
    assert [e["patient_id"] for e in second["events"]] == [500]
    assert second["next_before_id"] is None


def test_org_admin_reads_only_their_organisations_events(client, trail) -> None:
    events = get_events(client, "admin_a").json()["events"]
    assert events and {e["organisation_id"] for e in events} == {trail.a.id}
    assert get_events(client, "admin_a", username="doc_b").json()["events"] == []


def test_others_may_not_read_the_trail(client, trail) -> None:
    assert get_events(client, "doc_a").status_code == 403
    assert client.get("/api/v1/audit/events").status_code == 401
    assert client.get("/api/v1/audit/verify", headers=f.bearer(client, "admin_a")).status_code == 403


def test_bad_filters_get_a_clear_422(client, trail) -> None:
    for params, field in (({"patient_id": "abc"}, "patient_id"), ({"outcome": "maybe"}, "outcome"),
                          ({"since": "yesterday"}, "since"), ({"limit": 0}, "limit")):
        response = get_events(client, "boss", **params)
        assert response.status_code == 422, params
        assert response.json()["field_errors"][0]["field"] == field


def test_reading_the_trail_is_itself_audited(client, db, trail) -> None:
    get_events(client, "admin_a", patient_id=501)
    read = db.execute(select(AuditEvent).where(AuditEvent.action == "audit.read")).scalar_one()
    assert read.username == "admin_a" and read.detail["filters"]["patient_id"] == 501
    assert read.detail["filters"]["organisation_id"] == trail.a.id and read.detail["rows"] == 1


def test_resident_ids_in_event_details_are_masked(client, db, trail) -> None:
    audit.record(db, actor=audit.Actor(username="doc_a", organisation_id=trail.a.id), action="patient.search",
                 detail={"query": "11010519491231002X"})
    db.commit()
    [event] = get_events(client, "boss", action="patient.search").json()["events"]
    assert event["detail"]["query"] == "110***********002X"


def test_verify_reports_the_chain(client, db, trail) -> None:
    headers = f.bearer(client, "boss")
    intact = client.get("/api/v1/audit/verify", headers=headers).json()
    assert intact["breaks"] == [] and intact["checked"] >= 5
    db.expire_all()
    assert db.execute(select(AuditEvent).where(AuditEvent.action == "audit.verify")).scalar_one().outcome == "ok"
