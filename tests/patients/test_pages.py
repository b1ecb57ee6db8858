"""The pages a village doctor and an admin use, driven through real form posts."""

from __future__ import annotations

import re
from datetime import date

from sqlalchemy import select

from healthrelay.patients.models import Patient, PatientMerge
from tests.patients.conftest import csrf_from, login, rid

BORN = date(1956, 3, 8)


def form(token: str, **overrides: str) -> dict[str, str]:
    fields = {"csrf_token": token, "name": "王秀英", "sex": "F", "birth_date": "1956-03-08", "resident_id": "",
              "phone": "13912345678", "area_id": "", "grid": "", "address_line": "", "insurance_card": "",
              "record_number": ""}
    fields.update(overrides)
    return fields


def test_registration_form_is_keyboard_ready(client, county) -> None:
    login(client, "doctor_a")
    page = client.get("/patients/new").text
    assert re.search(r'<input id="name"[^>]*autofocus', page)
    assert page.count("autofocus") == 1
    for label in ("姓名", "性别", "出生日期", "身份证号", "联系电话", "村/社区", "网格", "详细地址", "医保卡号"):
        assert f">{label}" in page, label
    assert "桃园村" in page and "东山镇" in page  # villages grouped by township


def test_register_then_see_the_masked_record(client, db, county) -> None:
    token = login(client, "doctor_a")
    response = client.post("/patients/new", data=form(token, resident_id=rid(BORN, "F"),
                                                      area_id=str(county.village_a1.id)), follow_redirects=False)
    assert response.status_code == 303, response.text
    record = client.get(response.headers["location"]).text
    full = rid(BORN, "F")
    assert "档案已建立" in record and "王秀英" in record and "桃园村" in record
    assert full not in record and full[:3] + "*" * 11 + full[-4:] in record
    assert "东山镇卫生院" in record  # the registration at the doctor's organisation


def test_bad_id_shows_the_form_again_with_the_problem(client, db, county) -> None:
    token = login(client, "doctor_a")
    response = client.post("/patients/new", data=form(token, resident_id=rid(BORN, "M")))
    assert response.status_code == 422
    assert "身份证号与性别或出生日期不一致" in response.text
    assert re.search(r'id="resident_id"[^>]*aria-invalid="true"[^>]*autofocus', response.text)
    assert 'value="王秀英"' in response.text  # nothing typed is lost
    assert db.execute(select(Patient)).first() is None


def test_likely_duplicate_warning_and_confirmation(client, db, county) -> None:
    token = login(client, "doctor_a")
    village = str(county.village_a1.id)
    client.post("/patients/new", data=form(token, area_id=village, phone=""))
    warned = client.post("/patients/new", data=form(token, name="王秀瑛", area_id=village, phone=""))
    assert warned.status_code == 409
    assert 'id="duplicate-warning"' in warned.text
    assert "姓名同音" in warned.text and "出生日期相同" in warned.text and "同村" in warned.text
    assert re.search(r'id="confirm_not_duplicate"[^>]*autofocus', warned.text)  # Space, then Enter
    confirmed = client.post("/patients/new", data=form(token, name="王秀瑛", area_id=village, phone="",
                                                       confirm_not_duplicate="on"), follow_redirects=False)
    assert confirmed.status_code == 303
    assert len(db.execute(select(Patient)).all()) == 2


def test_search_page_shows_masked_rows(client, county) -> None:
    token = login(client, "doctor_a")
    client.post("/patients/new", data=form(token, resident_id=rid(BORN, "F")))
    page = client.get("/patients", params={"q": "wxy"}).text
    assert re.search(r'<input id="q"[^>]*autofocus', page)
    assert "139****5678" in page and rid(BORN, "F") not in page and "王秀英" in page


def test_other_township_gets_the_error_page_with_break_glass(client, county) -> None:
    token = login(client, "doctor_a")
    location = client.post("/patients/new", data=form(token), follow_redirects=False).headers["location"]
    patient_path = location.split("?")[0]
    client.post("/logout", data={"csrf_token": token})
    login(client, "doctor_b")
    denied = client.get(patient_path)
    assert denied.status_code == 403
    assert f'action="{patient_path}/break-glass"' in denied.text


def test_admin_merges_from_the_duplicates_page_and_undoes_it(client, db, county) -> None:
    token = login(client, "doctor_a")
    first = client.post("/patients/new", data=form(token), follow_redirects=False).headers["location"]
    client.post("/patients/new", data=form(token, name="王秀瑛", confirm_not_duplicate="on"))
    first_id = int(first.split("/")[-1].split("?")[0])
    client.post("/logout", data={"csrf_token": token})

    token = login(client, "admin_a")
    page = client.get(f"/patients/{first_id}/duplicates")
    assert page.status_code == 200 and 'id="merge-form"' in page.text and "王秀瑛" in page.text
    other_id = int(re.search(r'name="other_id" value="(\d+)"', page.text).group(1))
    short = client.post(f"/patients/{first_id}/merge", data={"csrf_token": token, "other_id": str(other_id),
                                                              "keep": "this", "reason": "重"})
    assert short.status_code == 422 and "合并理由" in short.text
    done = client.post(f"/patients/{first_id}/merge", data={"csrf_token": token, "other_id": str(other_id),
                                                             "keep": "this", "reason": "同一人重复建档"},
                       follow_redirects=False)
    assert done.status_code == 303
    # The merged record's address leads to the survivor.
    followed = client.get(f"/patients/{other_id}")
    assert f"档案 #{other_id} 已合并到本档案 #{first_id}" in followed.text
    merge_id = db.execute(select(PatientMerge.id)).scalar_one()
    assert f'id="undo-merge-{merge_id}"' in followed.text
    token = csrf_from(followed.text)
    undone = client.post(f"/patients/merges/{merge_id}/undo", data={"csrf_token": token, "reason": "核实不是同一人"},
                         follow_redirects=False)
    assert undone.status_code == 303
    assert client.get(f"/patients/{other_id}").url.path == f"/patients/{other_id}"


def test_page_forms_need_the_csrf_token(client, county) -> None:
    login(client, "doctor_a")
    response = client.post("/patients/new", data=form("forged"))
    assert response.status_code == 403


def test_unknown_record_is_a_friendly_404(client, county) -> None:
    login(client, "doctor_a")
    response = client.get("/patients/99999")
    assert response.status_code == 404 and "99999" in response.text


def test_health_bureau_is_refused_search_with_a_page(client, county) -> None:
    login(client, "bureau")
    response = client.get("/patients", params={"q": "wxy"})
    assert response.status_code == 403 and "卫健局" in response.text
