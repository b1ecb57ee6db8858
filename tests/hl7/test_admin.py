"""The HL7 admin pages and API: the senders registry, dead letters (inspect, replay, discard) and messages, each
scoped to the admin's organisation (the alliance admin sees all)."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import User
from healthrelay.core.db import get_sessionmaker
from healthrelay.hl7 import service
from healthrelay.hl7.models import Hl7DeadLetter, Hl7Message, Hl7Sender
from tests import factories as f
from tests.hl7 import messages as m
from tests.hl7.world import FACILITY, OTHER_FACILITY, Hl7World, build_world, count, person

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def world(db: Session) -> Hl7World:
    return build_world(db)


def login(client, username: str) -> str:  # noqa: ANN001
    client.cookies.clear()
    token = CSRF_RE.search(client.get("/login").text).group(1)
    response = client.post("/login", data={"username": username, "password": f.PASSWORD, "csrf_token": token,
                                           "next": "/"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return CSRF_RE.search(client.get("/admin/hl7").text).group(1)


def deliver(text: str) -> bytes:
    return service.handle_bytes(get_sessionmaker(), m.encode(text), peer="127.0.0.1:40000")


# --- senders ------------------------------------------------------------------------------------------

def test_org_admin_sees_and_registers_senders_of_their_own_organisation(client, world: Hl7World,
                                                                          db: Session) -> None:
    token = login(client, "shimen_admin")
    page = client.get("/admin/hl7")
    assert page.status_code == 200 and FACILITY in page.text and OTHER_FACILITY not in page.text
    assert 'href="/admin/hl7"' in page.text  # the admin menu entry
    bad = client.post("/admin/hl7/senders", data={"csrf_token": token, "facility": "石门 HIS",
                                                   "organisation_id": str(world.town.id)})
    assert bad.status_code == 422 and "MSH-4" in bad.text and 'aria-invalid="true"' in bad.text
    foreign = client.post("/admin/hl7/senders", data={"csrf_token": token, "facility": "XIHE_PACS",
                                                       "organisation_id": str(world.other.id)})
    assert foreign.status_code == 403
    ok = client.post("/admin/hl7/senders", data={"csrf_token": token, "facility": "QX_SHIMEN_PACS",
                                                  "application": "PACS", "organisation_id": str(world.town.id),
                                                  "note": "影像系统"}, follow_redirects=False)
    assert ok.status_code == 303
    again = client.post("/admin/hl7/senders", data={"csrf_token": token, "facility": "QX_SHIMEN_PACS",
                                                     "organisation_id": str(world.town.id)})
    assert again.status_code == 409
    db.expire_all()
    assert count(db, Hl7Sender, facility="QX_SHIMEN_PACS") == 1
    # Registered from the page, it has its own interface account at once: its ADT registers a resident.
    sender = db.scalar(select(Hl7Sender).where(Hl7Sender.facility == "QX_SHIMEN_PACS"))
    account = db.get(User, sender.interface_user_id)
    assert account.organisation_id == world.town.id and account.username == "hl7.qx_shimen_pacs"
    ack = deliver(m.adt_a04(person("赵小梅"), control_id="PACS-A04", facility="QX_SHIMEN_PACS", application="PACS"))
    assert b"MSA|AA|PACS-A04" in ack


def test_disabled_sender_is_refused_until_enabled_again(client, world: Hl7World, db: Session) -> None:
    token = login(client, "shimen_admin")
    response = client.post(f"/admin/hl7/senders/{world.sender.id}/active", data={"csrf_token": token, "active": "0"},
                           follow_redirects=False)
    assert response.status_code == 303
    assert b"MSA|AR|OFF-1" in deliver(m.adt_a04(person(), control_id="OFF-1"))
    client.post(f"/admin/hl7/senders/{world.sender.id}/active", data={"csrf_token": token, "active": "1"})
    assert b"MSA|AA|ON-1" in deliver(m.adt_a04(person(), control_id="ON-1"))
    # Another organisation's admin cannot touch it.
    other_token = login(client, "xihe_admin")
    response = client.post(f"/admin/hl7/senders/{world.sender.id}/active",
                           data={"csrf_token": other_token, "active": "0"})
    assert response.status_code == 404
    db.expire_all()
    assert db.get(Hl7Sender, world.sender.id).is_active


def test_api_registry_is_for_admins_and_names_bad_fields(client, world: Hl7World) -> None:
    clinician = f.bearer(client, "shimen_his")
    assert client.get("/api/v1/hl7/senders", headers=clinician).status_code == 403
    admin = f.bearer(client, "ygt_admin")
    listed = client.get("/api/v1/hl7/senders", headers=admin).json()
    assert {s["facility"] for s in listed} == {FACILITY, OTHER_FACILITY}
    bad = client.post("/api/v1/hl7/senders", headers=admin, json={"facility": "a b", "organisation_id": 999999})
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json()["field_errors"]} == {"facility", "organisation_id"}
    created = client.post("/api/v1/hl7/senders", headers=admin,
                          json={"facility": "QX_COUNTY_LIS", "organisation_id": world.county.id})
    assert created.status_code == 201 and created.json()["is_active"] is True
    town = f.bearer(client, "shimen_admin")
    assert [s["facility"] for s in client.get("/api/v1/hl7/senders", headers=town).json()] == [FACILITY]


# --- dead letters ------------------------------------------------------------------------------------

def test_dead_letter_page_shows_the_text_safely_and_replays_it(client, world: Hl7World, db: Session) -> None:
    p = person("王秀兰")
    text = m.oru_r01(p, [m.LabOrder(tests=[m.Lab("GLU", "6.1")], filler="PG-F1",
                                    notes=["<script>alert(1)</script>"])], control_id="PG-ORU")
    assert b"MSA|AE|PG-ORU" in deliver(text)
    token = login(client, "shimen_admin")
    page = client.get("/admin/hl7/dead-letters")
    assert page.status_code == 200
    assert "PG-ORU" in page.text and "unknown_patient" in page.text
    assert "<script>alert(1)" not in page.text and "&lt;script&gt;alert(1)" in page.text
    assert client.get("/admin/hl7/dead-letters", headers={"HX-Request": "true"}).text.count('id="dl-') == 1
    dead = db.scalar(select(Hl7DeadLetter).where(Hl7DeadLetter.control_id == "PG-ORU"))
    # Replayed too early: refused again with the reason, still open.
    early = client.post(f"/admin/hl7/dead-letters/{dead.id}/replay", data={"csrf_token": token})
    assert early.status_code == 422 and 'role="alert"' in early.text
    db.expire_all()
    assert db.get(Hl7DeadLetter, dead.id).state == "open"
    assert b"MSA|AA|" in deliver(m.adt_a04(p, control_id="PG-A04"))
    done = client.post(f"/admin/hl7/dead-letters/{dead.id}/replay", data={"csrf_token": token},
                       follow_redirects=False)
    assert done.status_code == 303 and "done=replayed" in done.headers["location"]
    db.expire_all()
    assert db.get(Hl7DeadLetter, dead.id).state == "replayed"
    assert count(db, Hl7Message, control_id="PG-ORU") == 1
    messages = client.get("/admin/hl7/messages")
    assert "PG-ORU" in messages.text and "ORU^R01" in messages.text


def test_other_organisation_cannot_see_or_handle_a_dead_letter(client, world: Hl7World, db: Session) -> None:
    deliver(m.oru_r01(person(), [m.LabOrder(tests=[m.Lab("GLU", "6.1")])], control_id="HIDDEN-1"))
    dead = db.scalar(select(Hl7DeadLetter).where(Hl7DeadLetter.control_id == "HIDDEN-1"))
    token = login(client, "xihe_admin")
    assert "HIDDEN-1" not in client.get("/admin/hl7/dead-letters").text
    assert client.post(f"/admin/hl7/dead-letters/{dead.id}/discard",
                       data={"csrf_token": token, "note": "x"}).status_code == 404
    other = f.bearer(client, "xihe_admin")
    assert client.get(f"/api/v1/hl7/dead-letters/{dead.id}", headers=other).status_code == 404
    db.expire_all()
    assert db.get(Hl7DeadLetter, dead.id).state == "open"


def test_api_dead_letters_detail_replay_and_discard(client, world: Hl7World, db: Session) -> None:
    raw = m.adt_a04(person("聂晓燕"), control_id="API-BYTES", charset=m.UTF8).encode("gb18030")
    service.handle_bytes(get_sessionmaker(), raw, peer="127.0.0.1:1")
    admin = f.bearer(client, "shimen_admin")
    listed = client.get("/api/v1/hl7/dead-letters", headers=admin).json()
    assert [(d["control_id"], d["reason_code"], d["ack_code"]) for d in listed] == [("API-BYTES", "bad_charset",
                                                                                       "AR")]
    dead_id = listed[0]["id"]
    detail = client.get(f"/api/v1/hl7/dead-letters/{dead_id}", headers=admin).json()
    assert detail["text"].startswith("MSH|") and "\\x" in detail["text"]  # undecodable bytes shown, not lost
    again = client.post(f"/api/v1/hl7/dead-letters/{dead_id}/replay", headers=admin)
    assert again.status_code == 422 and again.json()["code"] == "bad_charset"
    assert client.get("/api/v1/hl7/dead-letters?state=nonsense", headers=admin).status_code == 422
    empty = client.post(f"/api/v1/hl7/dead-letters/{dead_id}/discard", headers=admin, json={"note": ""})
    assert empty.status_code == 422
    gone = client.post(f"/api/v1/hl7/dead-letters/{dead_id}/discard", headers=admin,
                       json={"note": "发送方已改为 GB18030 重发 / resent in GB18030"})
    assert gone.status_code == 200 and gone.json()["state"] == "discarded"
    assert client.post(f"/api/v1/hl7/dead-letters/{dead_id}/discard", headers=admin,
                       json={"note": "again"}).status_code == 409
    assert client.get("/api/v1/hl7/dead-letters", headers=admin).json() == []
    assert count(db, Hl7Message) == 0


def test_api_messages_list_what_was_created(client, world: Hl7World) -> None:
    deliver(m.adt_a04(person("柏雪"), control_id="MSG-1"))
    admin = f.bearer(client, "shimen_admin")
    rows = client.get("/api/v1/hl7/messages", headers=admin).json()
    assert [(r["control_id"], r["message_type"], r["ack_code"], r["facility"]) for r in rows] == [
        ("MSG-1", "ADT^A04", "AA", FACILITY)]
    assert rows[0]["detail"]["patients"]
    assert client.get("/api/v1/hl7/messages", headers=f.bearer(client, "xihe_admin")).json() == []
