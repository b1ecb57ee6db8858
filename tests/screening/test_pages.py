"""Screening pages and API as the organiser, the on-site doctor and the health bureau use them."""

from __future__ import annotations

import io
import re

from openpyxl import load_workbook
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.chronic.models import ChronicTask
from healthrelay.screening.models import ScreeningAttendance, ScreeningEvent
from healthrelay.screening.sheets import bad_row_numbers, make_school_sheet
from tests import factories as f
from tests.screening.conftest import World, login, plan

TOKEN_RE = re.compile(r'name="client_token" value="([^"]+)"')


def test_plan_register_and_record_through_the_pages(client, db: Session, world: World) -> None:  # noqa: ANN001
    csrf = login(client, "town_doc")
    page = client.get("/screening")
    assert page.status_code == 200 and 'id="plan-form"' in page.text and "autofocus" in page.text
    bad = client.post("/screening", data={"csrf_token": csrf, "kind": "free_clinic", "title": "",
                                          "starts_at": "2026-12-20T08:00", "ends_at": "2026-12-20T07:00",
                                          "services": ["bp"]})
    assert bad.status_code == 422 and 'id="title-error"' in bad.text and 'id="ends_at-error"' in bad.text
    made = client.post("/screening", data={"csrf_token": csrf, "kind": "free_clinic", "title": "青石村冬季义诊",
                                           "starts_at": "2026-12-20T08:00", "ends_at": "2026-12-20T16:00",
                                           "place": "村委会", "area_id": str(world.village.id),
                                           "team_id": str(world.team.id), "departments": "心内科，中医科",
                                           "services": ["bp", "glucose", "tcm_pulse"]}, follow_redirects=False)
    assert made.status_code == 303, made.text
    event = db.scalar(select(ScreeningEvent).where(ScreeningEvent.title == "青石村冬季义诊"))
    assert event.departments == ["心内科", "中医科"]
    assert client.post(f"/screening/events/{event.id}/status", data={"csrf_token": csrf, "status": "open"},
                       follow_redirects=False).status_code == 303

    form = client.get(f"/screening/events/{event.id}/register")
    token = TOKEN_RE.search(form.text).group(1)
    data = {"csrf_token": csrf, "client_token": token, "resident_id": world.resident_id, "name": "", "sex": "",
            "birth_date": "", "phone": "", "village": ""}
    first = client.post(f"/screening/events/{event.id}/register", data=data, follow_redirects=False)
    again = client.post(f"/screening/events/{event.id}/register", data=data, follow_redirects=False)  # a retry
    assert first.status_code == again.status_code == 303 and first.headers["location"] == again.headers["location"]
    assert db.scalar(select(func.count()).select_from(ScreeningAttendance)) == 1
    person = client.get(first.headers["location"])
    assert person.status_code == 200 and world.resident.name in person.text and 'id="svc-bp"' in person.text
    wrong = client.post(first.headers["location"].split("?")[0] + "/results/bp",
                        data={"csrf_token": csrf, "sbp": "400", "dbp": "80"})
    assert wrong.status_code == 422 and "400" in wrong.text and 'aria-invalid="true"' in wrong.text
    saved = client.post(first.headers["location"].split("?")[0] + "/results/bp",
                        data={"csrf_token": csrf, "sbp": "162", "dbp": "96"}, follow_redirects=True)
    assert saved.status_code == 200 and 'id="finding-bp"' in saved.text and "162/96" in saved.text
    assert db.scalar(select(ChronicTask.team_id)) == world.team.id

    counts = client.post(f"/screening/events/{event.id}/counts", data={
        "csrf_token": csrf, "leaflets_given": "600", "medicines_given": "35", "medicines_value": "1280.50"},
        follow_redirects=True)
    assert counts.status_code == 200
    assert '<b id="count-served">1</b>' in counts.text and '<b id="count-leaflets">600</b>' in counts.text
    assert world.resident.name in counts.text
    report = client.get(f"/screening/events/{event.id}/report.xlsx")
    rows = {r[0]: r[1] for r in load_workbook(io.BytesIO(report.content)).active.iter_rows(values_only=True) if r}
    assert rows["服务人次 people served"] == 1 and rows["发放宣传资料 leaflets"] == 600
    assert rows["药品金额 medicines value (元)"] == 1280.5


def test_a_likely_duplicate_is_shown_to_pick_from(client, db: Session, world: World) -> None:  # noqa: ANN001
    event = plan(db, world)
    csrf = login(client, "town_doc")
    token = TOKEN_RE.search(client.get(f"/screening/events/{event.id}/register").text).group(1)
    shown = client.post(f"/screening/events/{event.id}/register", data={
        "csrf_token": csrf, "client_token": token, "resident_id": "", "name": world.resident.name, "sex": "F",
        "birth_date": "1961-04-13", "phone": "", "village": str(world.village.id)})
    assert shown.status_code == 409 and f'id="pick-{world.resident.id}"' in shown.text
    # The pick form posts back the details the candidates were found for (hidden inputs).
    pick_form = re.search(rf'<form[^>]*>(?:(?!</form>).)*id="pick-{world.resident.id}"', shown.text, re.S).group(0)
    sent = dict(re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)"', pick_form))
    assert sent["name"] == world.resident.name and sent["birth_date"] == "1961-04-13"
    picked = client.post(f"/screening/events/{event.id}/register", data=sent, follow_redirects=False)
    assert picked.status_code == 303
    assert db.scalar(select(ScreeningAttendance.patient_id)) == world.resident.id


def test_school_sheet_upload_reports_rows_and_downloads_the_errors(client, db: Session,  # noqa: ANN001
                                                                   world: World) -> None:
    event = plan(db, world, kind="school_checkup", services=["height_weight", "vision", "dental", "bp"])
    csrf = login(client, "town_doc")
    assert client.get(f"/screening/events/{event.id}/import").status_code == 200
    page = client.post(f"/screening/events/{event.id}/import", data={"csrf_token": csrf},
                       files={"file": ("school.xlsx", make_school_sheet(30, seed=2, bad_rows=3), "application/x")})
    assert page.status_code == 200 and 'id="import-errors"' in page.text
    listed = [int(n) for n in re.findall(r'<tr><td class="num">(\d+)</td>', page.text)]
    assert listed == bad_row_numbers(30, 3)
    link = re.search(r'href="([^"]+errors\.xlsx)"', page.text).group(1)
    sheet = load_workbook(io.BytesIO(client.get(link).content)).active
    assert [r[0] for r in sheet.iter_rows(min_row=2, values_only=True)] == listed
    empty = client.post(f"/screening/events/{event.id}/import", data={"csrf_token": csrf},
                        files={"file": ("notes.txt", b"hello", "text/plain")})
    assert empty.status_code == 422 and 'id="file-error"' in empty.text


def test_need_to_know_on_the_pages(client, db: Session, world: World) -> None:  # noqa: ANN001
    event = plan(db, world)
    from healthrelay.screening import service

    attendance = service.quick_register(db, by=world.doctor, event_id=event.id, client_token="tok-ntk-000001",
                                        name=world.resident.name, sex="F", birth_date=world.resident.birth_date,
                                        patient_id=world.resident.id)
    db.commit()
    login(client, "other_doc")
    assert client.get(f"/screening/events/{event.id}").status_code == 403
    assert client.get(f"/screening/events/{event.id}/register").status_code == 403
    assert client.get(f"/screening/events/{event.id}/attendances/{attendance.id}").status_code == 403
    assert event.title not in client.get("/screening").text
    login(client, "bureau")
    figures = client.get(f"/screening/events/{event.id}")
    assert figures.status_code == 200 and '<b id="count-served">1</b>' in figures.text
    assert world.resident.name not in figures.text  # counts only, no names for the bureau


def test_the_api_registers_once_per_token_and_lists_candidates(client, db: Session, world: World) -> None:  # noqa: ANN001
    event = plan(db, world)
    headers = f.bearer(client, "town_doc")
    body = {"client_token": "api-token-0001", "name": "吴志强", "sex": "M", "birth_date": "1972-03-04"}
    first = client.post(f"/api/v1/screening/events/{event.id}/attendances", json=body, headers=headers)
    again = client.post(f"/api/v1/screening/events/{event.id}/attendances", json=body, headers=headers)
    assert first.status_code == again.status_code == 201 and first.json()["id"] == again.json()["id"]
    dup = client.post(f"/api/v1/screening/events/{event.id}/attendances", headers=headers, json={
        "client_token": "api-token-0002", "name": world.resident.name, "sex": "F", "birth_date": "1961-04-13",
        "village": world.village.id})
    assert dup.status_code == 409 and dup.json()["code"] == "likely_duplicates"
    assert world.resident.id in {c["patient_id"] for c in dup.json()["candidates"]}
    result = client.post(f"/api/v1/screening/attendances/{first.json()['id']}/results", headers=headers,
                         json={"service_code": "glucose", "values": {"value": 0, "context": "fasting"}})
    assert result.status_code == 422 and result.json()["field_errors"][0]["field"] == "value"
    detail = client.get(f"/api/v1/screening/events/{event.id}", headers=headers).json()
    assert detail["counts"]["people_served"] == 1
    outsider = client.get(f"/api/v1/screening/events/{event.id}", headers=f.bearer(client, "other_doc"))
    assert outsider.status_code == 403


def test_the_event_page_in_english(client, db: Session, world: World) -> None:  # noqa: ANN001
    event = plan(db, world)
    login(client, "town_doc")
    client.get("/lang/en?next=/screening")
    page = client.get(f"/screening/events/{event.id}")
    assert page.status_code == 200 and "people served" in page.text and "Free clinic" in page.text
    assert "screening.counts" not in page.text  # every key has an English entry
    register = client.get(f"/screening/events/{event.id}/register")
    assert "Quick registration" in register.text and "screening." not in register.text.replace("/screening", "")


def test_no_page_shows_a_bare_catalogue_key(client, db: Session, world: World) -> None:  # noqa: ANN001
    event = plan(db, world, kind="school_checkup", services=["height_weight", "vision", "dental", "bp"])
    from healthrelay.screening import service

    attendance = service.quick_register(db, by=world.doctor, event_id=event.id, client_token="tok-keys-00001",
                                        name=world.resident.name, sex="F", birth_date=world.resident.birth_date,
                                        patient_id=world.resident.id)
    db.commit()
    login(client, "town_doc")
    for path in ("/screening", f"/screening/events/{event.id}", f"/screening/events/{event.id}/register",
                 f"/screening/events/{event.id}/import", f"/screening/events/{event.id}/attendances/{attendance.id}"):
        html = client.get(path).text
        assert not re.findall(r"screening\.[a-z_]+\.[a-z_]+", html.replace("/screening", "")), path


def test_a_pick_of_a_record_not_shown_is_refused_on_the_page_and_the_api(client, db: Session,  # noqa: ANN001
                                                                       world: World) -> None:
    event = plan(db, world)
    csrf = login(client, "town_doc")
    token = TOKEN_RE.search(client.get(f"/screening/events/{event.id}/register").text).group(1)
    for data in ({"patient_id": str(world.resident.id)},
                 {"patient_id": str(world.resident.id), "name": "张三", "sex": "M", "birth_date": "1970-01-01"}):
        refused = client.post(f"/screening/events/{event.id}/register",
                              data={"csrf_token": csrf, "client_token": token, **data}, follow_redirects=False)
        assert refused.status_code == 422 and 'id="form-error"' in refused.text
    api = client.post(f"/api/v1/screening/events/{event.id}/attendances", headers=f.bearer(client, "town_doc"),
                      json={"client_token": "api-pick-0001", "name": "张三", "sex": "M", "birth_date": "1970-01-01",
                            "patient_id": world.resident.id})
    assert api.status_code == 422 and [e["field"] for e in api.json()["field_errors"]] == ["patient_id"]
    assert db.scalar(select(func.count()).select_from(ScreeningAttendance)) == 0


def test_bad_numbers_and_another_organisations_team_are_named_on_the_pages(client, db: Session,  # noqa: ANN001
                                                                          world: World) -> None:
    event = plan(db, world)
    elsewhere = f.family_team(db, organisation=world.other_town, members=[world.outsider])
    db.commit()
    csrf = login(client, "town_doc")
    for value in ("inf", "nan", "1e400", "99999999999"):
        page = client.post(f"/screening/events/{event.id}/counts", data={
            "csrf_token": csrf, "leaflets_given": "1", "medicines_given": "1", "medicines_value": value})
        assert page.status_code == 422 and 'id="medicines_value-error"' in page.text, value
    planned = client.post("/screening", data={"csrf_token": csrf, "kind": "free_clinic", "title": "义诊",
                                              "starts_at": "2026-12-20T08:00", "ends_at": "2026-12-20T16:00",
                                              "team_id": str(elsewhere.id), "services": ["bp"]})
    assert planned.status_code == 422 and 'id="team_id-error"' in planned.text
    api = client.post("/api/v1/screening/events", headers=f.bearer(client, "town_doc"), json={
        "kind": "free_clinic", "title": "义诊", "host_organisation_id": world.town.id, "services": ["bp"],
        "starts_at": "2026-12-20T08:00:00+08:00", "ends_at": "2026-12-20T16:00:00+08:00", "team_id": elsewhere.id})
    assert api.status_code == 422 and [e["field"] for e in api.json()["field_errors"]] == ["team_id"]
    attendance = client.post(f"/api/v1/screening/events/{event.id}/attendances", headers=f.bearer(client, "town_doc"),
                             json={"client_token": "api-inf-00001", "resident_id": world.resident_id})
    result = client.post(f"/api/v1/screening/attendances/{attendance.json()['id']}/results",
                         headers=f.bearer(client, "town_doc"),
                         json={"service_code": "bp", "values": {"sbp": "1e999", "dbp": "80"}})
    assert result.status_code == 422 and result.json()["field_errors"][0]["field"] == "sbp"
    page = client.post(f"/screening/events/{event.id}/attendances/{attendance.json()['id']}/results/glucose",
                       data={"csrf_token": csrf, "value": "nan", "context": "fasting"})
    assert page.status_code == 422 and 'aria-invalid="true"' in page.text


def test_an_id_past_an_integer_key_is_a_422_naming_it_not_a_server_error(client, db: Session,  # noqa: ANN001
                                                                          world: World) -> None:
    event = plan(db, world)
    huge = 2**31
    headers = f.bearer(client, "town_doc")
    api = client.get(f"/api/v1/screening/events/{huge}", headers=headers)
    assert api.status_code == 422 and "event_id" in api.text
    result = client.post(f"/api/v1/screening/attendances/{huge}/results", headers=headers,
                         json={"service_code": "glucose", "values": {"value": 5.0, "context": "fasting"}})
    assert result.status_code == 422 and "attendance_id" in result.text
    login(client, "town_doc")
    assert client.get(f"/screening/events/{huge}").status_code == 422
    assert client.get(f"/screening/events/{event.id}/attendances/{huge}").status_code == 422
    assert client.get(f"/screening/events/{event.id}").status_code == 200
