"""The inbox JSON API: the caller's own notifications only, read state, clear errors."""

from __future__ import annotations

from sqlalchemy.orm import Session

from healthrelay.notifications import service
from tests import factories as f
from tests.notifications.conftest import People


def _send(db: Session, user_id: int, title: str, **extra: object) -> int:
    (note,) = service.send(db, user_ids=[user_id], kind="test", title=title, **extra)
    db.commit()
    return note.id


def test_list_count_read_and_read_all(client, db: Session, people: People) -> None:  # noqa: ANN001
    first = _send(db, people.doctor.id, "第一条", link="/referrals/1")
    second = _send(db, people.doctor.id, "第二条", urgent=True)
    _send(db, people.colleague.id, "同事的")
    auth = f.bearer(client, "zhang_doc")

    listed = client.get("/api/v1/notifications", headers=auth)
    assert listed.status_code == 200
    assert [(n["id"], n["title"], n["urgent"], n["read_at"]) for n in listed.json()] == [
        (second, "第二条", True, None), (first, "第一条", False, None)]
    assert client.get("/api/v1/notifications/unread-count", headers=auth).json() == {"unread": 2}

    read = client.post(f"/api/v1/notifications/{first}/read", headers=auth)
    assert read.status_code == 200 and read.json()["read_at"] is not None
    assert [n["id"] for n in client.get("/api/v1/notifications?unread=true", headers=auth).json()] == [second]
    assert client.get("/api/v1/notifications/unread-count", headers=auth).json() == {"unread": 1}

    assert client.post("/api/v1/notifications/read-all", headers=auth).json() == {"marked": 1}
    assert client.get("/api/v1/notifications/unread-count", headers=auth).json() == {"unread": 0}
    colleague = f.bearer(client, "li_doc")
    assert client.get("/api/v1/notifications/unread-count", headers=colleague).json() == {"unread": 1}


def test_anothers_notification_is_404_and_stays_unread(client, db: Session, people: People) -> None:  # noqa: ANN001
    theirs = _send(db, people.doctor.id, "张医生的消息")
    other = f.bearer(client, "li_doc")
    for response in (client.get(f"/api/v1/notifications/{theirs}", headers=other),
                     client.post(f"/api/v1/notifications/{theirs}/read", headers=other)):
        assert response.status_code == 404
        assert response.json()["code"] == "not_found" and "张医生" not in response.text
    owner = f.bearer(client, "zhang_doc")
    assert client.get(f"/api/v1/notifications/{theirs}", headers=owner).json()["read_at"] is None


def test_signed_out_and_bad_input(client, db: Session, people: People) -> None:  # noqa: ANN001
    assert client.get("/api/v1/notifications").status_code == 401
    assert client.get("/api/v1/notifications/unread-count").status_code == 401
    auth = f.bearer(client, "zhang_doc")
    bad = client.get("/api/v1/notifications?limit=0", headers=auth)
    assert bad.status_code == 422 and bad.json()["field_errors"][0]["field"] == "limit"
    assert client.post("/api/v1/notifications/abc/read", headers=auth).status_code == 422


def test_a_patient_account_has_an_inbox_too(client, db: Session, people: People) -> None:  # noqa: ANN001
    _send(db, people.resident.id, "您的转诊已被接收")
    auth = f.bearer(client, "resident_wang")
    assert [n["title"] for n in client.get("/api/v1/notifications", headers=auth).json()] == ["您的转诊已被接收"]
