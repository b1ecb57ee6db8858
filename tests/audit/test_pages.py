"""The admins' audit page: search in local time, page back, export, verify."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime

import pytest
from openpyxl import load_workbook
from sqlalchemy import select, text

from healthrelay.accounts.models import Role
from healthrelay.audit.models import AuditEvent
from tests import factories as f
from tests.audit.helpers import event_at


@pytest.fixture
def trail(db):  # noqa: ANN001, ANN201
    class Trail:
        a = f.organisation(db, name="青山镇卫生院")
        b = f.organisation(db, name="白水镇卫生院")
        boss = f.user(db, role=Role.ALLIANCE_ADMIN, username="boss")
        admin_a = f.user(db, role=Role.ORG_ADMIN, organisation=a, username="admin_a")

    t = Trail
    t.glass = event_at(db, datetime(2025, 5, 1, 3, 0, tzinfo=UTC), username="doc_a", organisation_id=t.a.id,
                       patient_id=502, action="access.break_glass", purpose="break_glass",
                       detail={"reason": "=HYPERLINK(\"http://x\")急诊昏迷", "id": "11010519491231002X"})
    t.other = event_at(db, datetime(2025, 5, 1, 4, 0, tzinfo=UTC), username="doc_b", organisation_id=t.b.id,
                       patient_id=900, outcome="denied")
    # 16:30 UTC on 1 May is 00:30 on 2 May in Beijing.
    t.late = event_at(db, datetime(2025, 5, 1, 16, 30, tzinfo=UTC), username="doc_a", organisation_id=t.a.id,
                      patient_id=501)
    db.commit()
    return t


def sign_in(client, username: str) -> str:  # noqa: ANN001
    client.cookies.clear()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    assert client.post("/login", data={"username": username, "password": f.PASSWORD, "csrf_token": token},
                       follow_redirects=False).status_code == 303
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get("/").text).group(1)


def shown_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr id="event-(\d+)"', html)]


def test_search_by_local_dates_username_and_patient(client, trail) -> None:
    sign_in(client, "boss")
    page = client.get("/admin/audit", params={"date_from": "2025-05-02", "date_to": "2025-05-02"})
    assert page.status_code == 200
    assert shown_ids(page.text) == [trail.late.id]
    assert "2025-05-02 00:30:00" in page.text  # shown in Beijing time
    may_first = client.get("/admin/audit", params={"date_from": "2025-05-01", "date_to": "2025-05-01"})
    assert shown_ids(may_first.text) == [trail.other.id, trail.glass.id]
    assert shown_ids(client.get("/admin/audit", params={"patient_id": "900"}).text) == [trail.other.id]
    by_user = client.get("/admin/audit", params={"username": "doc_a", "action": "patient."})
    assert shown_ids(by_user.text) == [trail.late.id]
    denied = client.get("/admin/audit", params={"outcome": "denied", "username": "doc_b"})
    assert shown_ids(denied.text) == [trail.other.id]


def test_break_glass_rows_stand_out_and_ids_are_masked(client, trail) -> None:
    sign_in(client, "boss")
    page = client.get("/admin/audit", params={"username": "doc_a"})
    assert f'<tr id="event-{trail.glass.id}" class="break-glass">' in page.text
    assert re.search(rf'<tr id="event-{trail.late.id}"\s*>', page.text)  # an ordinary read is not highlighted
    assert "11010519491231002X" not in page.text and "110***********002X" in page.text


def test_bad_search_input_is_named_on_the_form(client, trail) -> None:
    sign_in(client, "boss")
    page = client.get("/admin/audit", params={"patient_id": "abc", "date_from": "2025-13-01"})
    assert page.status_code == 422
    assert "查询条件有误" in page.text and "a whole number" in page.text and "YYYY-MM-DD" in page.text
    backwards = client.get("/admin/audit", params={"date_from": "2025-05-03", "date_to": "2025-05-01"})
    assert backwards.status_code == 422


def test_newest_first_with_an_older_link(client, db, trail) -> None:
    for i in range(120):
        event_at(db, datetime(2025, 6, 1, 0, i % 60, tzinfo=UTC), username="bulk", patient_id=i)
    db.commit()
    sign_in(client, "boss")
    first = client.get("/admin/audit", params={"username": "bulk"})
    ids = shown_ids(first.text)
    assert len(ids) == 100 and ids == sorted(ids, reverse=True)
    older = re.search(r'<a href="([^"]+)" rel="next">', first.text).group(1).replace("&amp;", "&")
    assert "username=bulk" in older
    second = client.get(older)
    rest = shown_ids(second.text)
    assert len(rest) == 20 and max(rest) < min(ids)
    assert 'rel="next"' not in second.text


def test_org_admin_sees_their_organisation_only_and_no_verify_button(client, trail) -> None:
    sign_in(client, "admin_a")
    page = client.get("/admin/audit")
    assert trail.other.id not in shown_ids(page.text)
    assert {trail.late.id, trail.glass.id} <= set(shown_ids(page.text))
    assert "/admin/audit/verify" not in page.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    refused = client.post("/admin/audit/verify", data={"csrf_token": token}, headers={"accept": "application/json"})
    assert refused.status_code == 403


def test_csv_export_follows_the_filter_and_is_safe_to_open(client, db, trail) -> None:
    sign_in(client, "boss")
    response = client.get("/admin/audit/export.csv", params={"username": "doc_a"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    assert response.content.startswith(b"\xef\xbb\xbf")  # BOM: Excel reads the Chinese correctly
    rows = list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))
    assert [int(r["id"]) for r in rows] == [trail.late.id, trail.glass.id]
    assert rows[0]["occurred_at_local"] == "2025-05-02 00:30:00"
    assert "11010519491231002X" not in response.text
    glass = rows[1]
    assert glass["action"] == "access.break_glass" and "急诊昏迷" in glass["detail"]
    export = db.execute(select(AuditEvent).where(AuditEvent.action == "audit.export")).scalar_one()
    assert export.username == "boss" and export.detail["rows"] == 2 and export.detail["format"] == "csv"


def test_csv_cells_never_start_a_formula(client, db, trail) -> None:
    event_at(db, datetime(2025, 7, 1, tzinfo=UTC), username="=cmd|' /C calc'!A0", patient_id=1)
    db.commit()
    sign_in(client, "boss")
    rows = list(csv.reader(io.StringIO(client.get("/admin/audit/export.csv").content.decode("utf-8-sig"))))
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row)
    assert any(cell == "'=cmd|' /C calc'!A0" for row in rows for cell in row)


def test_excel_export(client, trail, tmp_path) -> None:
    sign_in(client, "admin_a")
    response = client.get("/admin/audit/export.xlsx", params={"date_from": "2025-05-01", "date_to": "2025-05-02"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/vnd.openxmlformats")
    path = tmp_path / "audit.xlsx"
    path.write_bytes(response.content)
    sheet = load_workbook(path, read_only=True).active
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0][:3] == ("id", "occurred_at_local", "username")
    assert [r[0] for r in rows[1:]] == [trail.late.id, trail.glass.id]  # only admin_a's organisation
    assert all(not (isinstance(c, str) and c.startswith("=")) for r in rows for c in r)


def test_verify_button_shows_the_result_and_names_a_broken_row(client, db, trail) -> None:
    token = sign_in(client, "boss")
    intact = client.post("/admin/audit/verify", data={"csrf_token": token})
    assert intact.status_code == 200 and "哈希链完整" in intact.text
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update"))
        db.execute(text("UPDATE audit_events SET patient_id = 1 WHERE id = :id"), {"id": trail.glass.id})
        db.execute(text("ALTER TABLE audit_events ENABLE TRIGGER audit_events_no_update"))
    else:
        db.execute(text("DROP TRIGGER audit_events_no_update"))
        db.execute(text("UPDATE audit_events SET patient_id = 1 WHERE id = :id"), {"id": trail.glass.id})
    db.commit()
    broken = client.post("/admin/audit/verify", data={"csrf_token": token})
    assert "哈希链被破坏" in broken.text and f"第 {trail.glass.id} 号记录" in broken.text
    assert client.post("/admin/audit/verify").status_code == 403  # no CSRF token


def test_reading_the_audit_page_is_audited(client, db, trail) -> None:
    sign_in(client, "admin_a")
    client.get("/admin/audit", params={"patient_id": "501"})
    read = db.execute(select(AuditEvent).where(AuditEvent.action == "audit.read")).scalar_one()
    assert read.username == "admin_a" and read.detail["filters"]["patient_id"] == 501
