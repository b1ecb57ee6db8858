"""Readings: checks by field, the enrolments' derived columns, danger values raising the risk and shown red,
the device CSV import (good, bad and duplicate rows; encodings; headers), and the quick form."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.audit.models import AuditEvent
from healthrelay.chronic import service
from healthrelay.chronic.models import ChronicEnrolment, ChronicReading
from healthrelay.core.db import LOCAL_TZ, local_today, utcnow
from healthrelay.core.errors import InvalidInput, NeedToKnowDenied
from tests import factories as f
from tests.chronic.registry_world import RegistryWorld, build, login


@pytest.fixture
def registry_world(db: Session) -> RegistryWorld:
    world = build(db)
    db.commit()
    return world


def _enrol_both(db: Session, w: RegistryWorld) -> tuple[ChronicEnrolment, ChronicEnrolment]:
    htn = service.enrol(db, by=w.doc1, patient_id=w.p1.id, condition_code="htn",
                        diagnosed_on=local_today() - timedelta(days=200), source="clinic")
    dm = service.enrol(db, by=w.doc1, patient_id=w.p1.id, condition_code="t2dm",
                       diagnosed_on=local_today() - timedelta(days=200), source="clinic")
    db.commit()
    return htn, dm


def _count(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(ChronicReading)) or 0


def test_readings_update_every_active_enrolment_and_keep_the_newest(db: Session,
                                                                    registry_world: RegistryWorld) -> None:
    w = registry_world
    htn, dm = _enrol_both(db, w)
    now = utcnow()
    service.record_reading(db, by=w.doc1, patient_id=w.p1.id, kind="bp", measured_at=now - timedelta(hours=1),
                           sbp=146, dbp=88, pulse=72, point_id=w.point.id)
    # An older reading entered later does not replace the newer figure, but still counts as contact.
    service.record_reading(db, by=w.doc1, patient_id=w.p1.id, kind="bp", measured_at=now - timedelta(days=2),
                           sbp=128, dbp=80)
    service.record_reading(db, by=w.doc1, patient_id=w.p1.id, kind="glucose", measured_at=now - timedelta(minutes=5),
                           glucose=6.4, glucose_context="fasting")
    # A random glucose is contact, not the fasting figure control is judged by.
    service.record_reading(db, by=w.doc1, patient_id=w.p1.id, kind="glucose", measured_at=now - timedelta(minutes=1),
                           glucose=9.1, glucose_context="random")
    db.commit()
    for row in (htn, dm):
        db.refresh(row)
        assert (row.last_sbp, row.last_dbp) == (146, 88)
        assert row.last_glucose == 6.4
        assert row.last_contact_at is not None and abs((now - row.last_contact_at).total_seconds() - 60) < 5
        assert row.risk_level == 1
    reading = db.scalar(select(ChronicReading).where(ChronicReading.sbp == 146))
    assert reading.organisation_id == w.clinic.id and reading.pulse == 72 and reading.source == "manual"


def test_a_danger_reading_raises_the_risk_and_a_normal_one_does_not_lower_it(
        db: Session, registry_world: RegistryWorld) -> None:
    w = registry_world
    htn, dm = _enrol_both(db, w)
    danger = service.record_reading(db, by=w.doc1, patient_id=w.p1.id, kind="bp",
                                    measured_at=utcnow() - timedelta(minutes=10), sbp=186, dbp=96)
    db.commit()
    assert service.reading_danger(db, danger)
    db.refresh(htn)
    db.refresh(dm)
    assert htn.risk_level == 3 and dm.risk_level == 3  # a crisis is a crisis whichever card it is on
    service.record_reading(db, by=w.doc1, patient_id=w.p1.id, kind="bp", measured_at=utcnow(), sbp=130, dbp=80)
    db.commit()
    db.refresh(htn)
    assert htn.risk_level == 3 and htn.last_sbp == 130
    low = service.record_reading(db, by=w.doc1, patient_id=w.p1.id, kind="glucose", measured_at=utcnow(),
                                 glucose=3.2, glucose_context="random")
    assert service.reading_danger(db, low)


@pytest.mark.parametrize(("values", "field"), [
    ({"kind": "bp", "sbp": 400, "dbp": 90}, "sbp"),
    ({"kind": "bp", "sbp": 120, "dbp": 130}, "dbp"),
    ({"kind": "bp", "sbp": 120}, "dbp"),
    ({"kind": "bp", "sbp": 120, "dbp": 80, "pulse": 400}, "pulse"),
    ({"kind": "glucose", "glucose": 0.0}, "glucose"),
    ({"kind": "glucose", "glucose": 6.0, "glucose_context": "after_lunch"}, "glucose_context"),
    ({"kind": "weight", "sbp": 120, "dbp": 80}, "kind"),
])
def test_impossible_readings_are_refused_by_field(db: Session, registry_world: RegistryWorld,
                                                  values: dict[str, object], field: str) -> None:
    w = registry_world
    with pytest.raises(InvalidInput) as exc:
        service.record_reading(db, by=w.doc1, patient_id=w.p1.id, measured_at=utcnow(), **values)  # type: ignore[arg-type]
    assert field in {e["field"] for e in exc.value.field_errors}
    db.rollback()
    assert _count(db) == 0


def test_future_time_and_no_care_relationship_are_refused(db: Session, registry_world: RegistryWorld) -> None:
    w = registry_world
    with pytest.raises(InvalidInput) as exc:
        service.record_reading(db, by=w.doc1, patient_id=w.p1.id, kind="bp", sbp=120, dbp=80,
                               measured_at=utcnow() + timedelta(hours=2))
    assert [e["field"] for e in exc.value.field_errors] == ["measured_at"]
    db.rollback()
    with pytest.raises(NeedToKnowDenied):
        service.record_reading(db, by=w.doc2, patient_id=w.p1.id, kind="bp", sbp=120, dbp=80, measured_at=utcnow())
    db.rollback()
    assert _count(db) == 0


# --- device CSV import ----------------------------------------------------------------------------

def _when(days_ago: int, hour: int = 8) -> str:
    day = datetime.now(LOCAL_TZ) - timedelta(days=days_ago)
    return day.replace(hour=hour, minute=30).strftime("%Y-%m-%d %H:%M")


def _sheet(w: RegistryWorld) -> str:
    future = (datetime.now(LOCAL_TZ) + timedelta(days=2)).strftime("%Y-%m-%d %H:%M")
    return "\n".join([
        "设备序列号,记录编号,身份证号,居民编号,测量时间,收缩压(mmHg),舒张压(mmHg),脉搏,血糖(mmol/L),测量状态",
        f"BPM-001,1001,{w.p1_id_number},,{_when(3)},152,94,80,,",           # row 2 good
        f"BPM-001,1002,,{w.p1.id},{_when(2)},400,90,,,",                     # row 3 SBP 400
        f"BPM-001,1003,,{w.p1.id},{_when(1)},190,112,88,,",                  # row 4 good, danger
        "BPM-001,1004,110101199001011234,,2026-12-01 08:00,130,80,,,",      # row 5 unknown ID number
        f"GLU-9,77,,{w.p1.id},{_when(1, 7)},,,,6.1,空腹",                    # row 6 good glucose
        f"GLU-9,78,,{w.p1.id},{future},,,,5.5,空腹",                         # row 7 future
        f"GLU-9,79,,{w.p2.id},{_when(1)},,,,5.5,空腹",                       # row 8 no care relationship
        f"BPM-001,1001,{w.p1_id_number},,{_when(3)},152,94,80,,",           # row 9 duplicate of row 2
        f"BPM-001,1005,,{w.p1.id},yesterday,130,80,,,",                      # row 10 bad time
        "",
    ])


def test_import_keeps_good_rows_reports_bad_ones_and_counts_duplicates(db: Session,
                                                                       registry_world: RegistryWorld) -> None:
    w = registry_world
    htn, dm = _enrol_both(db, w)
    content = _sheet(w).encode("gb18030")  # what a Chinese Windows export writes
    report = service.import_device_csv(db, by=w.doc1, point_id=w.point.id,
                                       filename="bp.csv", content=content)
    db.commit()
    assert (report.total, report.added, report.duplicates, report.failed) == (9, 3, 1, 5)
    by_row = {(e["row"], e["field"]) for e in report.errors}
    assert {(3, "sbp"), (5, "resident_id"), (7, "measured_at"), (8, "resident_id"), (10, "measured_at")} <= by_row
    assert all(" / " in e["message"] for e in report.errors)
    assert report.danger == 1
    assert _count(db) == 3
    db.refresh(htn)
    assert (htn.last_sbp, htn.last_dbp) == (190, 112) and htn.risk_level == 3
    db.refresh(dm)
    assert dm.last_glucose == 6.1 and dm.last_sbp == 190  # every card of the resident sees every reading
    # Every reading written is audited: one event per resident naming the readings.
    events = db.scalars(select(AuditEvent).where(AuditEvent.action == "chronic.reading.record",
                                                 AuditEvent.patient_id == w.p1.id)).all()
    assert sorted(i for e in events for i in e.detail["reading_ids"]) == sorted(report.reading_ids)
    # Importing the same export again adds nothing.
    again = service.import_device_csv(db, by=w.doc1, point_id=w.point.id, filename="bp.csv", content=content)
    db.commit()
    assert (again.added, again.duplicates) == (0, 4) and _count(db) == 3


def test_import_reads_english_headers_with_a_bom_and_refuses_a_file_without_the_columns(
        db: Session, registry_world: RegistryWorld) -> None:
    w = registry_world
    text = ("Device Serial,Record ID,Patient ID,Measured At,SBP,DBP,Pulse\r\n"
            f"OMRON-7,a1,{w.p1.id},{_when(0, 0)},118,76,66\r\n")
    report = service.import_device_csv(db, by=w.doc1, point_id=w.point.id, filename="omron.csv",
                                       content=text.encode("utf-8-sig"))
    db.commit()
    assert (report.added, report.failed) == (1, 0)
    with pytest.raises(InvalidInput) as exc:
        service.import_device_csv(db, by=w.doc1, point_id=w.point.id, filename="x.csv",
                                  content="name,value\n张三,1\n".encode())
    assert exc.value.field_errors and {e["field"] for e in exc.value.field_errors} == {"file"}
    db.rollback()
    # Another township's doctor may not import for this village's point.
    from healthrelay.core.errors import AccessDenied

    with pytest.raises(AccessDenied):
        service.import_device_csv(db, by=w.doc2, point_id=w.point.id, filename="x.csv", content=text.encode())


# --- API and pages --------------------------------------------------------------------------------

def test_api_reading_danger_flag_and_4xx_shapes(client, db: Session, registry_world: RegistryWorld) -> None:  # noqa: ANN001
    w = registry_world
    headers = f.bearer(client, w.doc1.username)
    at = datetime.now(LOCAL_TZ).isoformat(timespec="seconds")
    ok = client.post("/api/v1/chronic/readings", headers=headers, json={
        "patient_id": w.p1.id, "kind": "bp", "measured_at": at, "sbp": 182, "dbp": 100})
    assert ok.status_code == 201, ok.text
    assert ok.json()["danger"] is True
    bad = client.post("/api/v1/chronic/readings", headers=headers, json={
        "patient_id": w.p1.id, "kind": "bp", "measured_at": at, "sbp": 400, "dbp": 90})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_input"
    assert [e["field"] for e in bad.json()["field_errors"]] == ["sbp"]
    naive = client.post("/api/v1/chronic/readings", headers=headers, json={
        "patient_id": w.p1.id, "kind": "bp", "measured_at": "2026-12-01T08:00:00", "sbp": 120, "dbp": 80})
    assert naive.status_code == 422
    refused = client.post("/api/v1/chronic/readings", headers=f.bearer(client, w.doc2.username), json={
        "patient_id": w.p1.id, "kind": "bp", "measured_at": at, "sbp": 120, "dbp": 80})
    assert refused.status_code == 403
    upload = client.post("/api/v1/chronic/readings/import", headers=headers, data={"point_id": str(w.point.id)},
                         files={"file": ("bp.csv", _sheet(w).encode("utf-8"), "text/csv")})
    assert upload.status_code == 200, upload.text
    body = upload.json()
    assert (body["added"], body["failed"], body["duplicates"]) == (3, 5, 1)
    assert {k: body["errors"][0][k] for k in ("row", "field")} == {"row": 3, "field": "sbp"}


def test_quick_form_saves_comes_back_empty_and_shows_a_danger_value_red(client, db: Session,  # noqa: ANN001
                                                                        registry_world: RegistryWorld) -> None:
    w = registry_world
    service.sign_contract(db, by=w.doc1, patient_id=w.p1.id, team_id=w.team1.id, package_code="basic",
                          starts_on=local_today())
    db.commit()
    token = login(client, w.vdoc.username, "/chronic/readings/new")
    picker = client.get("/chronic/readings/new?q=wxy")
    assert f'id="choose-patient-{w.p1.id}"' in picker.text
    form_page = client.get(f"/chronic/readings/new?patient_id={w.p1.id}")
    assert 'id="sbp"' in form_page.text and "autofocus" in form_page.text.split('id="sbp"')[1].split(">")[0]
    assert f'<option value="{w.point.id}" selected>' in form_page.text  # the village's point by default
    now = datetime.now(LOCAL_TZ).strftime("%Y-%m-%dT%H:%M")
    form = {"csrf_token": token, "patient_id": str(w.p1.id), "measured_at": now, "sbp": "400", "dbp": "90",
            "pulse": "", "glucose": "0", "glucose_context": "fasting", "point_id": str(w.point.id)}
    refused = client.post("/chronic/readings/new", data=form, follow_redirects=False)
    assert refused.status_code == 422
    assert 'id="sbp-error"' in refused.text and 'id="glucose-error"' in refused.text and _count(db) == 0
    saved = client.post("/chronic/readings/new", data={**form, "sbp": "188", "dbp": "102", "glucose": "6.2"},
                        follow_redirects=False)
    assert saved.status_code == 303 and saved.headers["location"].startswith("/chronic/readings/new?saved=")
    page = client.get(saved.headers["location"])
    assert "188/102 mmHg" in page.text and "6.2 mmol/L" in page.text
    assert 'class="cr-danger-box"' in page.text and 'data-danger="1"' in page.text
    assert 'id="patient-q"' in page.text  # empty again, ready for the next resident
    assert _count(db) == 2
    chronic_page = client.get(f"/chronic/patients/{w.p1.id}")
    assert 'id="danger-alert"' in chronic_page.text
    row = chronic_page.text.split('data-danger="1"')[0].rsplit("<tr", 1)[1]
    assert 'class="cr-danger-row"' in row


def test_import_page_shows_the_row_report(client, db: Session, registry_world: RegistryWorld) -> None:  # noqa: ANN001
    w = registry_world
    token = login(client, w.doc1.username, "/chronic/readings/import")
    response = client.post("/chronic/readings/import", data={"csrf_token": token, "point_id": str(w.point.id)},
                           files={"file": ("bp.csv", _sheet(w).encode("utf-8-sig"), "text/csv")})
    assert response.status_code == 200
    assert 'id="r-added">3<' in response.text and 'id="r-failed">5<' in response.text
    table = response.text.split('id="import-errors"')[1].split("</table>")[0]
    assert "<td class=\"num\">3</td><td class=\"mono\">sbp</td>" in table
    empty = client.post("/chronic/readings/import", data={"csrf_token": token, "point_id": str(w.point.id)})
    assert empty.status_code == 422 and 'id="file-error"' in empty.text


def test_village_doctor_records_a_reading_from_the_keyboard(page, db: Session,  # noqa: ANN001
                                                            registry_world: RegistryWorld) -> None:
    """Search, choose, type the two numbers, Enter: the form comes back empty with the reading confirmed, and the
    patient's chronic page draws the trend (on a tablet-sized screen)."""
    from playwright.sync_api import expect

    from tests.browser import sign_in

    w = registry_world
    service.sign_contract(db, by=w.doc1, patient_id=w.p1.id, team_id=w.team1.id, package_code="basic",
                          starts_on=local_today())
    service.enrol(db, by=w.doc1, patient_id=w.p1.id, condition_code="htn",
                  diagnosed_on=local_today() - timedelta(days=100), source="clinic")
    service.record_reading(db, by=w.doc1, patient_id=w.p1.id, kind="bp", measured_at=utcnow() - timedelta(days=7),
                           sbp=150, dbp=92)
    db.commit()
    sign_in(page, w.vdoc.username)
    page.goto("/chronic/readings/new")
    expect(page.locator("#patient-q")).to_be_focused()
    page.keyboard.type("wxy")
    page.keyboard.press("Enter")
    page.locator(f"#choose-patient-{w.p1.id}").click()
    expect(page.locator("#sbp")).to_be_focused()
    page.keyboard.type("192")
    page.keyboard.press("Tab")
    page.keyboard.type("104")
    page.keyboard.press("Enter")
    expect(page.locator(".cr-danger-box")).to_contain_text("192/104")
    expect(page.locator("#patient-q")).to_be_focused()  # ready for the next resident
    page.set_viewport_size({"width": 800, "height": 1024})
    page.goto(f"/chronic/patients/{w.p1.id}")
    expect(page.locator("#danger-alert")).to_be_visible()
    expect(page.locator("#bp-chart canvas")).to_have_count(1)
    expect(page.locator("#readings-table tbody tr")).to_have_count(2)
    expect(page.locator('[data-field="last_bp"]')).to_contain_text("192/104")
