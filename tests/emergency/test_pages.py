"""Emergency pages as dispatchers and crews use them: intake, board, one-key dispatch, crew buttons, metrics."""

from __future__ import annotations

import io
import re

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.emergency.models import Ambulance, EmergencyCall
from tests import factories as f
from tests.emergency.conftest import EmWorld, new_call

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def login(client, username: str) -> str:  # noqa: ANN001
    client.cookies.clear()
    token = CSRF_RE.search(client.get("/login").text).group(1)
    r = client.post("/login", data={"username": username, "password": f.PASSWORD, "csrf_token": token, "next": "/"},
                    follow_redirects=False)
    assert r.status_code == 303, r.text
    return CSRF_RE.search(client.get("/emergency/calls/new").text).group(1)


def _intake(token: str, w: EmWorld, **changes: str) -> dict[str, str]:
    form = {"csrf_token": token, "received_at": "", "caller_name": "王家属", "caller_phone": "13700000000",
            "area_id": str(w.village.id), "area_q": "", "latitude": "", "longitude": "", "address": "柳湾村3组",
            "complaint": "胸口压榨样痛", "category": "chest_pain", "priority": "1", "onset_at": "", "patient_id": ""}
    form.update(changes)
    return form


def _calls(db: Session) -> int:
    db.expire_all()
    return db.execute(select(func.count()).select_from(EmergencyCall)).scalar_one()


def test_intake_then_one_key_dispatch_from_the_board(client, db: Session, world: EmWorld) -> None:  # noqa: ANN001
    token = login(client, "disp_city")
    page = client.get("/emergency/calls/new")
    assert page.status_code == 200 and 'name="received_at" value="20' in page.text
    assert 'id="caller_phone"' in page.text and "autofocus" in page.text
    received = re.search(r'name="received_at" value="([^"]+)"', page.text).group(1)
    saved = client.post("/emergency/calls/new", data=_intake(token, world, received_at=received),
                        follow_redirects=False)
    assert saved.status_code == 303, saved.text
    call_id = int(re.search(r"/emergency/calls/(\d+)", saved.headers["location"]).group(1))
    call = db.get(EmergencyCall, call_id)
    assert call is not None and call.received_at.isoformat() == received
    board = client.get("/emergency")
    assert board.status_code == 200 and call.number in board.text
    assert "最近的可行PCI医院" in board.text and f'id="dispatch-{call_id}"' in board.text
    assert 'id="board-map-data"' in board.text
    best = re.search(rf'<select name="ambulance_id" id="amb-{call_id}">\s*(?:<option[^>]*>[^<]*</option>)*?'
                     r'<option value="(\d+)" selected', board.text).group(1)
    sent = client.post(f"/emergency/calls/{call_id}/dispatch", follow_redirects=False, data={
        "csrf_token": token, "ambulance_id": best, "destination_organisation_id": str(world.county.id),
        "back": "board"})
    assert sent.status_code == 303 and sent.headers["location"] == "/emergency?done=dispatched"
    fragment = client.get("/emergency/_board")
    assert fragment.status_code == 200 and "已派车" in fragment.text
    detail = client.get(f"/emergency/calls/{call_id}")
    assert detail.status_code == 200 and 'id="call-timeline"' in detail.text and "派车" in detail.text


def test_intake_refusals_are_shown_in_the_form_and_nothing_is_saved(client, db: Session,  # noqa: ANN001
                                                                    world: EmWorld) -> None:
    token = login(client, "disp_city")
    bad = client.post("/emergency/calls/new", data=_intake(token, world, area_id="", latitude="95", longitude="110"))
    assert bad.status_code == 422 and "坐标超出范围" in bad.text and 'aria-invalid="true"' in bad.text
    unknown = client.post("/emergency/calls/new", data=_intake(token, world, area_id="", area_q="不存在村"))
    assert unknown.status_code == 422 and "没有找到" in unknown.text
    assert _calls(db) == 0
    # Typing the village without JavaScript: one match is taken.
    typed = client.post("/emergency/calls/new", data=_intake(token, world, area_id="", area_q="liuwan"),
                        follow_redirects=False)
    assert typed.status_code == 303
    assert db.execute(select(EmergencyCall.area_id)).scalar_one() == world.village.id


def test_dispatching_a_busy_ambulance_from_the_board_says_who_has_it(client, db: Session,  # noqa: ANN001
                                                                    world: EmWorld) -> None:
    first = new_call(db, world)
    second = new_call(db, world, category="trauma")
    token = login(client, "disp_city")
    client.post(f"/emergency/calls/{first.id}/dispatch", data={"csrf_token": token, "back": "board",
                                                               "ambulance_id": str(world.emergency_amb.id)})
    again = client.post(f"/emergency/calls/{second.id}/dispatch", data={
        "csrf_token": token, "back": "board", "ambulance_id": str(world.emergency_amb.id)})
    assert again.status_code == 409 and first.number in again.text and 'id="board-error"' in again.text


def test_the_crew_presses_big_buttons(client, db: Session, world: EmWorld) -> None:  # noqa: ANN001
    call = new_call(db, world)
    token = login(client, "disp_city")
    client.post(f"/emergency/calls/{call.id}/dispatch", data={"csrf_token": token,
                                                              "ambulance_id": str(world.icu_amb.id),
                                                              "destination_organisation_id": str(world.county.id)})
    token = login(client, "crew_shimen")
    page = client.get(f"/emergency/ambulances/{world.icu_amb.id}/crew")
    assert page.status_code == 200 and 'id="to-en_route"' in page.text and call.number in page.text
    assert 'id="to-out_of_service"' not in page.text
    moved = client.post(f"/emergency/ambulances/{world.icu_amb.id}/crew", follow_redirects=False, data={
        "csrf_token": token, "to_state": "en_route", "expected_state": "dispatched", "latitude": "30.0001",
        "longitude": "110.001", "reason": ""})
    assert moved.status_code == 303
    stale = client.post(f"/emergency/ambulances/{world.icu_amb.id}/crew", data={
        "csrf_token": token, "to_state": "en_route", "expected_state": "dispatched"})
    assert stale.status_code == 409 and 'id="crew-error"' in stale.text
    db.expire_all()
    amb = db.get(Ambulance, world.icu_amb.id)
    assert amb is not None and amb.state == "en_route" and amb.longitude == 110.001


def test_metrics_page_and_excel(client, db: Session, world: EmWorld) -> None:  # noqa: ANN001
    from openpyxl import load_workbook

    new_call(db, world)
    login(client, "disp_city")
    page = client.get("/emergency/metrics")
    assert page.status_code == 200 and 'id="metrics-rows"' in page.text and "10秒接听率" in page.text
    xlsx = client.get("/emergency/metrics.xlsx")
    assert xlsx.status_code == 200
    ws = load_workbook(io.BytesIO(xlsx.content)).active
    assert ws.cell(row=1, column=1).value.startswith("急救站")
    missed = client.get("/emergency/metrics/missed?target=answer&area=rural")
    assert missed.status_code == 200
    assert client.get("/emergency/metrics/missed?target=nope").status_code == 422
    assert client.get("/emergency/metrics?months=99").status_code == 422


def test_pages_are_closed_to_others(client, db: Session, world: EmWorld) -> None:  # noqa: ANN001
    login(client, "town_doc")
    assert client.get("/emergency").status_code == 403
    assert client.get("/emergency/calls/new").status_code == 403
    assert client.get("/emergency/metrics").status_code == 403
    client.cookies.clear()
    assert client.get("/emergency", follow_redirects=False).status_code in (303, 401)


def test_english_pages(client, db: Session, world: EmWorld) -> None:  # noqa: ANN001
    new_call(db, world)
    login(client, "disp_city")
    client.cookies.set("lang", "en")
    board = client.get("/emergency")
    assert "120 dispatch board" in board.text and "nearest PCI-capable hospital" in board.text
