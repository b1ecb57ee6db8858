"""Report pages and API as their users meet them: the editor on the claim, the panel on the request page, the
co-signature, addenda, the critical-result acknowledgement form, the report of critical results and its export."""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
from openpyxl import load_workbook
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from healthrelay.core.db import utcnow
from healthrelay.notifications.models import Notification
from healthrelay.teleconsult import critical, reports, service
from healthrelay.teleconsult.models import ConsultState, CriticalResult, CriticalState, Report, ReportState
from tests import factories as f
from tests.notifications.conftest import login
from tests.teleconsult.conftest import Requests, TeleWorld, make_request
from tests.teleconsult.test_critical import CRITICAL
from tests.teleconsult.test_reports import FULL

FORM = {"technique": FULL.technique, "findings": FULL.findings, "impression": FULL.impression,
        "recommendation": FULL.recommendation, "recognition_scope": "county"}


def switch(client, username: str) -> str:  # noqa: ANN001
    client.cookies.clear()
    return login(client, username)


def _report(db: Session, request_id: int) -> Report | None:
    db.expire_all()
    return db.execute(select(Report).where(Report.request_id == request_id)).scalar()


def test_the_editor_is_the_claim_holders(client, db: Session, tele: TeleWorld, requests: Requests) -> None:  # noqa: ANN001
    rid = requests.claimed_senior.id
    login(client, "yx_senior")
    page = client.get(f"/teleconsult/{rid}/report")
    assert page.status_code == 200
    assert re.search(r'<textarea id="f-technique" name="technique"[^>]*autofocus', page.text)
    assert 'id="sign-report"' in page.text and "Ctrl+Enter" in page.text
    switch(client, "yx_trainee")
    refused = client.get(f"/teleconsult/{rid}/report")
    assert refused.status_code == 403 and "钱医师" in refused.text
    switch(client, "town_doc")  # the requester has nothing to write: back to the request
    away = client.get(f"/teleconsult/{rid}/report", follow_redirects=False)
    assert away.status_code == 303 and away.headers["location"] == f"/teleconsult/{rid}"


def test_save_then_sign_from_the_form(client, db: Session, tele: TeleWorld, requests: Requests) -> None:  # noqa: ANN001
    rid = requests.claimed_senior.id
    token = login(client, "yx_senior")
    saved = client.post(f"/teleconsult/{rid}/report", data={**FORM, "impression": "", "csrf_token": token,
                                                             "action": "save"}, follow_redirects=False)
    assert saved.status_code == 303 and saved.headers["location"].endswith("done=saved")
    again = client.get(saved.headers["location"])
    assert 'id="saved-notice"' in again.text and FULL.findings.split(" / ")[0] in again.text
    assert _report(db, rid).state == ReportState.DRAFT
    # Signing without an impression: the form comes back with the message and what was typed.
    refused = client.post(f"/teleconsult/{rid}/report", data={**FORM, "impression": "", "csrf_token": token,
                                                               "action": "sign"})
    assert refused.status_code == 422
    assert 'id="f-impression-error"' in refused.text and 'aria-invalid="true"' in refused.text
    assert FULL.technique.split(" / ")[0] in refused.text
    assert _report(db, rid).state == ReportState.DRAFT
    signed = client.post(f"/teleconsult/{rid}/report", data={**FORM, "csrf_token": token, "action": "sign"},
                         follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"].startswith(f"/teleconsult/{rid}")
    report = _report(db, rid)
    assert report.state == ReportState.SIGNED and reports.verify(db, report)
    # A signed report cannot be edited, not even by posting the form again.
    late = client.post(f"/teleconsult/{rid}/report", data={**FORM, "findings": "改", "csrf_token": token,
                                                           "action": "save"})
    assert late.status_code == 409
    assert _report(db, rid).findings == FULL.findings


def test_the_requester_reads_the_signed_report_on_the_request_page(client, db: Session, tele: TeleWorld,  # noqa: ANN001
                                                                     requests: Requests) -> None:
    rid = requests.claimed_senior.id
    reports.save_draft(db, request_id=rid, by=tele.senior, data=FULL)
    db.commit()
    login(client, "town_doc")
    before = client.get(f"/teleconsult/{rid}/report/panel")
    assert before.status_code == 200 and 'id="report-none"' in before.text
    assert FULL.findings not in before.text  # a draft never reaches the requester
    assert f"detail.request_id=={rid}" in before.text and "hr-live" in before.text
    reports.sign(db, request_id=rid, by=tele.senior)
    db.commit()
    page = client.get(f"/teleconsult/{rid}")
    assert page.status_code == 200 and 'id="report-panel"' in page.text
    assert FULL.impression in page.text and "县域HR" in page.text
    assert 'id="hash-check"' in page.text and "hash-ok" in page.text
    assert 'id="addendum-form"' not in page.text and 'id="cosign-button"' not in page.text
    assert f'href="/teleconsult/{rid}/report.pdf"' in page.text


def test_a_senior_cosigns_from_the_page(client, db: Session, tele: TeleWorld, requests: Requests) -> None:  # noqa: ANN001
    rid = requests.claimed_trainee.id
    reports.sign(db, request_id=rid, by=tele.trainee, data=FULL)
    db.commit()
    login(client, "yx_trainee")
    own = client.get(f"/teleconsult/{rid}/report")
    assert own.status_code == 200 and 'id="cosign-button"' not in own.text and "初步报告" in own.text
    token = switch(client, "yx_senior")
    page = client.get(f"/teleconsult/{rid}/report")
    assert 'id="cosign-button"' in page.text
    done = client.post(f"/teleconsult/{rid}/report/cosign", data={"csrf_token": token}, follow_redirects=False)
    assert done.status_code == 303
    report = _report(db, rid)
    assert report.state == ReportState.SIGNED and report.cosigned_by_user_id == tele.senior.id
    again = client.post(f"/teleconsult/{rid}/report/cosign", data={"csrf_token": token})
    assert again.status_code == 409
    shown = client.get(f"/teleconsult/{rid}/report/panel").text
    assert "孙医师" in shown and "钱医师" in shown


def test_cosign_by_a_non_senior_is_refused(client, db: Session, tele: TeleWorld, requests: Requests) -> None:  # noqa: ANN001
    rid = requests.claimed_trainee.id
    reports.sign(db, request_id=rid, by=tele.trainee, data=FULL)
    db.commit()
    token = login(client, "county_doc")
    assert client.post(f"/teleconsult/{rid}/report/cosign", data={"csrf_token": token}).status_code == 403
    assert _report(db, rid).state == ReportState.AWAITING_COSIGN


def test_addenda_from_the_page(client, db: Session, tele: TeleWorld, requests: Requests) -> None:  # noqa: ANN001
    rid = requests.claimed_senior.id
    reports.sign(db, request_id=rid, by=tele.senior, data=FULL)
    db.commit()
    token = login(client, "yx_senior")
    empty = client.post(f"/teleconsult/{rid}/report/addenda", data={"csrf_token": token, "text": "  "})
    assert empty.status_code == 422 and 'id="addendum-error"' in empty.text
    added = client.post(f"/teleconsult/{rid}/report/addenda",
                        data={"csrf_token": token, "text": "补充：左侧少量胸腔积液"}, follow_redirects=False)
    assert added.status_code == 303
    panel = client.get(f"/teleconsult/{rid}/report/panel").text
    assert "补充：左侧少量胸腔积液" in panel and panel.count("✓ ") == 2  # the report and its addendum check out
    token = switch(client, "town_doc")
    assert client.post(f"/teleconsult/{rid}/report/addenda",
                       data={"csrf_token": token, "text": "申请方不能改"}).status_code == 403


def test_the_critical_result_is_acknowledged_from_the_inbox_link(client, db: Session, tele: TeleWorld,  # noqa: ANN001
                                                                  requests: Requests) -> None:
    rid = requests.claimed_senior.id
    reports.sign(db, request_id=rid, by=tele.senior, data=CRITICAL)
    db.commit()
    result = critical.for_request(db, request_id=rid)
    token = login(client, "town_doc")
    note = db.execute(select(Notification).where(Notification.user_id == tele.requester.id,
                                                 Notification.kind == "teleconsult.critical")).scalar_one()
    assert f'action="/inbox/{note.id}/open"' in client.get("/inbox").text
    opened = client.post(f"/inbox/{note.id}/open", data={"csrf_token": token}, follow_redirects=False)
    assert opened.headers["location"] == f"/teleconsult/critical/{result.id}"
    page = client.get(opened.headers["location"])
    assert page.status_code == 200 and CRITICAL.critical_finding in page.text
    assert re.search(r'<input id="ack-call-number"[^>]*autofocus', page.text)
    assert 'data-kind="flagged"' in page.text and 'data-kind="notified"' in page.text
    missing = client.post(f"/teleconsult/critical/{result.id}/acknowledge", data={"csrf_token": token})
    assert missing.status_code == 422
    for name in ("call_number", "call_spoken_to", "call_read_back", "action_taken"):
        assert f'id="ack-{name}-error"' in missing.text, name
    db.expire_all()
    assert db.get(CriticalResult, result.id).state == CriticalState.OPEN
    local_now = (utcnow() + timedelta(hours=8)).strftime("%Y-%m-%dT%H:%M")
    done = client.post(f"/teleconsult/critical/{result.id}/acknowledge", data={
        "csrf_token": token, "call_number": "0710-3322110", "call_at": local_now, "call_spoken_to": "钱医师",
        "call_read_back": "yes", "action_taken": "已联系 120 转县医院神经外科"}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"].endswith("done=acknowledged")
    db.expire_all()
    acked = db.get(CriticalResult, result.id)
    assert acked.state == CriticalState.ACKNOWLEDGED and acked.call_read_back is True
    # The centre sees the acknowledgement on its request page.
    switch(client, "yx_senior")
    panel = client.get(f"/teleconsult/{rid}/report/panel").text
    assert 'id="critical-ack"' in panel and "0710-3322110" in panel and "已联系 120" in panel


def test_the_panel_form_returns_to_the_request(client, db: Session, tele: TeleWorld, requests: Requests) -> None:  # noqa: ANN001
    rid = requests.claimed_senior.id
    reports.sign(db, request_id=rid, by=tele.senior, data=CRITICAL)
    db.commit()
    result = critical.for_request(db, request_id=rid)
    token = login(client, "town_doc2")  # a colleague of the requester
    panel = client.get(f"/teleconsult/{rid}/report/panel").text
    assert 'id="ack-form"' in panel and f'value="/teleconsult/{rid}#report-panel"' in panel
    done = client.post(f"/teleconsult/critical/{result.id}/acknowledge", data={
        "csrf_token": token, "call_number": "13900001111", "call_at": "", "call_spoken_to": "郑医生",
        "call_read_back": "no", "action_taken": "复查 CT", "next": f"/teleconsult/{rid}#report-panel"})
    assert done.status_code == 422 and 'id="ack-call_at-error"' in done.text  # the call time is required
    done = client.post(f"/teleconsult/critical/{result.id}/acknowledge", data={
        "csrf_token": token, "call_number": "13900001111",
        "call_at": (utcnow() + timedelta(hours=8)).strftime("%Y-%m-%dT%H:%M"), "call_spoken_to": "郑医生",
        "call_read_back": "no", "action_taken": "复查 CT", "next": "https://evil.example/"}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"].startswith(f"/teleconsult/critical/{result.id}")


def test_the_critical_results_page_and_its_export(client, db: Session, tele: TeleWorld) -> None:  # noqa: ANN001
    made = []
    for _ in range(2):
        req = make_request(db, tele)
        service.claim(db, by=tele.senior, request_id=req.id)
        reports.sign(db, request_id=req.id, by=tele.senior, data=CRITICAL)
        db.commit()
        made.append((req, critical.for_request(db, request_id=req.id)))
    (late_req, late), (done_req, done) = made
    critical.acknowledge(db, critical_id=done.id, by=tele.requester, data=critical.AckInput(
        call_at=utcnow(), call_number="0710-1", call_spoken_to="钱医师", call_read_back=True, action_taken="处理"))
    db.execute(update(CriticalResult).where(CriticalResult.id == late.id).values(
        ack_due_at=utcnow() - timedelta(minutes=3)))
    db.commit()
    login(client, "ywk_admin")
    page = client.get("/teleconsult/critical")
    assert page.status_code == 200
    rows = re.findall(r'<tr id="critical-row-(\d+)" class="([^"]*)"', page.text)
    assert [int(r[0]) for r in rows] == [late.id, done.id]
    assert "overdue" in rows[0][1] and "overdue" not in rows[1][1]
    assert re.search(r'id="sum-total">2<', page.text) and re.search(r'id="sum-overdue">1<', page.text)
    assert re.search(r'<input id="cr-start"[^>]*autofocus', page.text)
    export = client.get("/teleconsult/critical.xlsx")
    assert export.status_code == 200 and "spreadsheetml" in export.headers["content-type"]
    book = load_workbook(io.BytesIO(export.content))
    sheet = book.worksheets[0]
    assert sheet.cell(1, 1).value == "会诊编号"
    assert [sheet.cell(r, 1).value for r in (2, 3)] == [late_req.number, done_req.number]
    assert sheet.cell(2, 12).value == "是"  # overdue
    summary = {row[0].value: row[1].value for row in book.worksheets[1].iter_rows()}
    assert summary["危急值总数"] == 2 and summary["超时未确认"] == 1
    assert client.get("/teleconsult/critical?start=yesterday").status_code == 422
    switch(client, "outsider_doc")
    assert 'id="critical-empty"' in client.get("/teleconsult/critical").text
    assert client.get(f"/teleconsult/critical/{late.id}").status_code == 404


# ---------------------------------------------------------------------------- the JSON API

def test_the_report_api(client, db: Session, tele: TeleWorld, requests: Requests) -> None:  # noqa: ANN001
    rid = requests.claimed_trainee.id
    base = f"/api/v1/teleconsult/requests/{rid}/report"
    trainee, senior, requester = (f.bearer(client, u) for u in ("yx_trainee", "yx_senior", "town_doc"))
    assert client.put(base, json={"findings": "x"}, headers=senior).status_code == 403
    draft = client.put(base, json={"findings": FULL.findings}, headers=trainee)
    assert draft.status_code == 200 and draft.json()["state"] == "draft"
    assert client.get(base, headers=requester).status_code == 404
    empty = client.post(f"{base}/sign", headers=trainee)
    assert empty.status_code == 422
    assert {e["field"] for e in empty.json()["field_errors"]} == {"technique", "impression"}
    assert client.put(base, json={"recognition_scope": "city"}, headers=trainee).status_code == 422
    assert client.put(base, json={"nonsense": 1}, headers=trainee).status_code == 422
    signed = client.post(f"{base}/sign", json={**FORM, "critical": True, "critical_finding": "张力性气胸"},
                         headers=trainee)
    assert signed.status_code == 200 and signed.json()["state"] == "awaiting_cosign"
    assert signed.json()["critical_result_id"] is not None and signed.json()["hash_ok"]
    assert client.post(f"{base}/cosign", headers=trainee).status_code == 403
    final = client.post(f"{base}/cosign", headers=senior)
    assert final.status_code == 200 and final.json()["state"] == "signed"
    assert final.json()["recognition_mark"] == "县域HR"
    seen = client.get(base, headers=requester).json()
    assert seen["impression"] == FULL.impression and seen["hash_ok"] and seen["cosigned_by_user_id"] == tele.senior.id
    assert client.put(base, json=FORM, headers=trainee).status_code == 409
    added = client.post(f"{base}/addenda", json={"text": "复阅无变化"}, headers=senior)
    assert added.status_code == 201 and added.json()["hash_ok"]
    assert len(client.get(base, headers=requester).json()["addenda"]) == 1
    db.expire_all()
    assert service.get_request_for(db, request_id=rid, user=tele.head).state == ConsultState.REPORTED


def test_the_critical_api(client, db: Session, tele: TeleWorld, requests: Requests) -> None:  # noqa: ANN001
    rid = requests.claimed_senior.id
    reports.sign(db, request_id=rid, by=tele.senior, data=CRITICAL)
    db.commit()
    result = critical.for_request(db, request_id=rid)
    requester = f.bearer(client, "town_doc")
    listed = client.get("/api/v1/teleconsult/critical", headers=requester)
    assert listed.status_code == 200
    body = listed.json()
    assert body["summary"]["open"] == 1 and body["items"][0]["id"] == result.id
    one = client.get(f"/api/v1/teleconsult/critical/{result.id}", headers=requester).json()
    assert [e["kind"] for e in one["events"]][0] == "flagged"
    url = f"/api/v1/teleconsult/critical/{result.id}/acknowledge"
    refused = client.post(url, json={"call_number": "0710-1"}, headers=requester)
    assert refused.status_code == 422
    assert {e["field"] for e in refused.json()["field_errors"]} == {"call_at", "call_spoken_to", "call_read_back",
                                                                   "action_taken"}
    outsider = f.bearer(client, "outsider_doc")
    assert client.post(url, json={}, headers=outsider).status_code == 404
    ok = client.post(url, headers=requester, json={
        "call_at": (utcnow() - timedelta(minutes=1)).isoformat(), "call_number": "0710-1", "call_spoken_to": "钱医师",
        "call_read_back": True, "action_taken": "转上级医院"})
    assert ok.status_code == 200 and ok.json()["state"] == "acknowledged" and ok.json()["minutes_to_ack"] is not None
    assert client.post(url, headers=requester, json={
        "call_at": utcnow().isoformat(), "call_number": "1", "call_spoken_to": "x", "call_read_back": True,
        "action_taken": "y"}).status_code == 409


# ---------------------------------------------------------------------------- in a real browser

@pytest.mark.e2e
def test_in_the_browser_the_requester_sees_the_signature_live_and_acknowledges(
        page, browser, live_server: str, db: Session, tele: TeleWorld, requests: Requests) -> None:  # noqa: ANN001
    from playwright.sync_api import expect

    from tests.browser import SCREENSHOTS, sign_in

    rid = requests.claimed_senior.id
    # The reader writes with the keyboard: Ctrl+Enter saves the draft.
    reader = browser.new_context(base_url=live_server, viewport={"width": 1366, "height": 768}, locale="zh-CN")
    editor = reader.new_page()
    sign_in(editor, "yx_senior")
    editor.goto(f"/teleconsult/{rid}/report")
    expect(editor.locator("#f-technique")).to_be_focused()
    editor.keyboard.type(CRITICAL.technique)
    editor.fill("#f-findings", CRITICAL.findings)
    editor.fill("#f-impression", CRITICAL.impression)
    editor.check("#f-critical")
    editor.fill("#f-critical_finding", CRITICAL.critical_finding)
    editor.select_option("#f-recognition_scope", "county")
    editor.focus("#f-impression")
    editor.keyboard.press("Control+Enter")
    expect(editor.locator("#saved-notice")).to_be_visible()
    editor.screenshot(path=str(SCREENSHOTS / "teleconsult-report-editor.png"), full_page=True)

    # The requester has the request open, before anything is signed.
    sign_in(page, "town_doc")
    page.goto(f"/teleconsult/{rid}")
    expect(page.locator("#report-none")).to_be_visible()
    editor.click("#sign-report")
    expect(editor).to_have_url(re.compile(rf"/teleconsult/{rid}"))
    reader.close()

    # No reload: the urgent toast arrives and the panel shows the signed report and the acknowledgement form.
    expect(page.get_by_role("alert").first).to_contain_text("危急值")
    expect(page.locator("#report-impression")).to_contain_text("急性硬膜下血肿")
    expect(page.locator("#hr-mark")).to_have_text("县域HR")
    expect(page.locator("#hash-check")).to_have_class(re.compile("hash-ok"))
    page.screenshot(path=str(SCREENSHOTS / "teleconsult-report-panel-live.png"), full_page=True)
    page.locator("#ack-call-number").fill("0710-3322110")
    expect(page.locator("#ack-call-at")).not_to_have_value("")  # the call time is filled in already
    page.fill("#ack-spoken-to", "钱医师")
    page.check("#ack-read-back-yes")
    page.fill("#ack-action", "已联系 120 转县医院神经外科")
    page.locator("#ack-action").press("Tab")
    page.keyboard.press("Enter")
    expect(page.locator("#critical-ack")).to_contain_text("0710-3322110")
    db.expire_all()
    assert critical.for_request(db, request_id=rid).state == CriticalState.ACKNOWLEDGED
    page.set_viewport_size({"width": 390, "height": 800})
    page.goto("/teleconsult/critical")
    expect(page.locator("#critical-table tbody tr")).to_have_count(1)
    page.screenshot(path=str(SCREENSHOTS / "teleconsult-critical-list-phone.png"), full_page=True)
