"""The clinic's upload page, the ECG worklist, and the viewer with its report editor, as staff use them."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.ecg.models import EcgRecording
from healthrelay.teleconsult import reports
from healthrelay.teleconsult.models import ConsultRequest, CriticalResult
from tests.ecg.conftest import csv, dicom, flat, tracing
from tests.teleconsult.conftest import TeleWorld
from tests.teleconsult.test_pages import CSRF_RE, login


def _post_upload(client, token: str, files: dict[str, bytes], **form: str):  # noqa: ANN001, ANN202
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files.items()]
    return client.post("/ecg/upload", files=parts, data={"csrf_token": token, "priority": "urgent", **form},
                       follow_redirects=False)


def _count(db: Session, model: type) -> int:
    db.rollback()
    return db.execute(select(func.count()).select_from(model)).scalar_one()


def test_a_clinic_uploads_and_lands_on_the_request_with_a_message(client, db: Session,  # noqa: ANN001
                                                                    tele: TeleWorld) -> None:
    token = login(client, "town_doc")
    page = client.get(f"/ecg/upload?patient_id={tele.patient.id}")
    assert page.status_code == 200 and 'id="upload-patient"' in page.text and "王秀英" in page.text
    assert 'accept=".dcm,.xml,.csv' in page.text and "县域心电诊断中心" in page.text
    search = client.get("/ecg/upload?q=王秀英")
    assert f'href="/ecg/upload?patient_id={tele.patient.id}"' in search.text
    response = _post_upload(client, token, dicom(tracing()), patient_id=str(tele.patient.id),
                            clinical_question="胸闷")
    assert response.status_code == 303, response.text
    request_id = int(re.search(r"/teleconsult/(\d+)\?done=ecg_uploaded", response.headers["location"]).group(1))
    detail = client.get(response.headers["location"])
    assert "已进入心电诊断中心的工作列表" in detail.text
    assert f'href="/ecg/requests/{request_id}"' in detail.text


def test_upload_errors_are_shown_in_place_and_nothing_is_written(client, db: Session,  # noqa: ANN001
                                                                  tele: TeleWorld) -> None:
    token = login(client, "town_doc")
    response = _post_upload(client, token, {"ecg.dat": b"\x00\x01" * 100}, patient_id=str(tele.patient.id))
    assert response.status_code == 422
    assert 'id="form-error"' in response.text and ".hea" in response.text
    assert 'id="files-error"' in response.text and 'aria-invalid="true"' in response.text
    nothing = _post_upload(client, token, {}, patient_id=str(tele.patient.id))
    assert nothing.status_code == 422 and 'id="files-error"' in nothing.text
    assert _count(db, EcgRecording) == 0 and _count(db, ConsultRequest) == 0


def test_flagged_tracings_show_on_the_worklist_and_above_the_tracing(client, db: Session,  # noqa: ANN001
                                                                      tele: TeleWorld) -> None:
    token = login(client, "town_doc")
    _post_upload(client, token, csv(flat(tracing(), "V3")), patient_id=str(tele.patient.id))
    rec = db.execute(select(EcgRecording)).scalar_one()
    login(client, "yx_senior")
    worklist = client.get("/ecg/worklist")
    row = re.search(rf'data-request-id="{rec.consult_request_id}".*?</tr>', worklist.text, re.S).group(0)
    assert "质量问题" in row and "flat_line V3" in row and f'/ecg/recordings/{rec.id}' in row
    general = client.get("/teleconsult/worklist")
    assert f'href="/ecg/requests/{rec.consult_request_id}"' in general.text
    opened = client.get(f"/ecg/requests/{rec.consult_request_id}")
    assert str(opened.url).endswith(f"/ecg/recordings/{rec.id}")
    assert 'id="quality-flags"' in opened.text and "V3" in opened.text
    assert opened.text.index('id="quality-flags"') < opened.text.index('<svg')
    assert 'id="auto-none"' in opened.text


def test_the_reader_claims_confirms_and_signs_a_stemi_from_the_viewer(client, db: Session,  # noqa: ANN001
                                                                       tele: TeleWorld) -> None:
    token = login(client, "town_doc")
    _post_upload(client, token, dicom(tracing(stemi=True)), patient_id=str(tele.patient.id))
    rec = db.execute(select(EcgRecording)).scalar_one()
    token = login(client, "yx_senior")
    viewer = client.get(f"/ecg/recordings/{rec.id}")
    assert viewer.status_code == 200 and 'class="ecg-sheet"' in viewer.text and "/static/ecg.js" in viewer.text
    assert "初步" in viewer.text and 'id="ecg-claim"' in viewer.text and 'id="ecg-report-form"' not in viewer.text
    claimed = client.post(f"/ecg/recordings/{rec.id}/claim", data={"csrf_token": token}, follow_redirects=True)
    form = re.search(r'<form[^>]*id="ecg-report-form".*?</form>', claimed.text, re.S).group(0)
    # The automatic suggestions are ticked and labelled as such; the automatic values fill the inputs.
    assert re.search(r'id="code-stemi_inferior" checked', form)
    assert re.search(r'code-stemi_inferior" checked>\s*急性下壁[^<]*<span[^>]*>[^<]*</span> <span class="auto"', form)
    rate = re.search(r'id="m_heart_rate_bpm" name="m_heart_rate_bpm" inputmode="decimal" value="([\d.]+)"', form)
    assert rate and abs(float(rate.group(1)) - 72) <= 3

    no_conclusion = client.post(f"/ecg/recordings/{rec.id}/report", data={
        "csrf_token": token, "action": "sign", "codes": ["sinus_rhythm"], "m_heart_rate_bpm": "72"})
    assert no_conclusion.status_code == 422 and 'id="codes-error"' in no_conclusion.text
    assert 'id="code-sinus_rhythm" checked' in no_conclusion.text
    assert reports.report_of(db, rec.consult_request_id) is None

    bad_value = client.post(f"/ecg/recordings/{rec.id}/report", data={
        "csrf_token": token, "action": "save", "codes": ["stemi_inferior"], "m_qrs_ms": "宽"})
    assert bad_value.status_code == 422 and 'id="m_qrs_ms-error"' in bad_value.text

    signed = client.post(f"/ecg/recordings/{rec.id}/report", data={
        "csrf_token": token, "action": "sign", "codes": ["sinus_rhythm", "st_elevation", "stemi_inferior"],
        "m_heart_rate_bpm": "72", "m_qtc_ms": "420"}, follow_redirects=True)
    assert signed.status_code == 200 and "报告已签名" in signed.text
    assert 'id="report-critical"' in signed.text and "急性下壁ST段抬高型心肌梗死" in signed.text
    db.rollback()
    crit = db.execute(select(CriticalResult).where(CriticalResult.request_id == rec.consult_request_id)).scalar_one()
    assert "STEMI" in crit.finding


def test_others_see_the_viewer_without_the_editor_and_strangers_not_at_all(client, db: Session,  # noqa: ANN001
                                                                            tele: TeleWorld) -> None:
    token = login(client, "town_doc")
    _post_upload(client, token, csv(tracing()), patient_id=str(tele.patient.id))
    rec = db.execute(select(EcgRecording)).scalar_one()
    mine = client.get(f"/ecg/recordings/{rec.id}")
    assert mine.status_code == 200 and 'id="ecg-report-form"' not in mine.text and 'id="ecg-claim"' not in mine.text
    login(client, "town_b_doc")
    assert client.get(f"/ecg/recordings/{rec.id}").status_code == 403
    assert CSRF_RE.search(client.get("/teleconsult").text)


def test_report_links_of_ecg_requests_lead_to_the_tracing_or_the_plain_editor(client, db: Session,  # noqa: ANN001
                                                                              tele: TeleWorld) -> None:
    from healthrelay.teleconsult import service as consult
    from healthrelay.teleconsult.models import ConsultKind
    from tests.teleconsult.conftest import make_request

    token = login(client, "town_doc")
    _post_upload(client, token, csv(tracing()), patient_id=str(tele.patient.id))
    rec = db.execute(select(EcgRecording)).scalar_one()
    asked = make_request(db, tele, centre_id=tele.ecg_centre.id, kind=ConsultKind.ECG, clinical_question="动态心电？")
    for request_id in (rec.consult_request_id, asked.id):
        consult.claim(db, by=tele.senior, request_id=request_id)
    db.commit()
    login(client, "yx_senior")
    worklist = client.get("/teleconsult/worklist").text
    assert f'href="/ecg/requests/{rec.consult_request_id}#report" id="report-{rec.consult_request_id}"' in worklist
    with_tracing = client.get(f"/ecg/requests/{rec.consult_request_id}", follow_redirects=False)
    assert with_tracing.headers["location"] == f"/ecg/recordings/{rec.id}"
    without = client.get(f"/ecg/requests/{asked.id}", follow_redirects=False)
    assert without.headers["location"] == f"/teleconsult/{asked.id}/report"


# --- in a real browser ------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_upload_from_the_keyboard_then_read_with_zoom_and_calipers(page, db: Session,  # noqa: ANN001
                                                                    tele: TeleWorld, tmp_path) -> None:  # noqa: ANN001
    from playwright.sync_api import expect

    from tests.browser import SCREENSHOTS, sign_in

    path = tmp_path / "ecg.dcm"
    path.write_bytes(dicom(tracing(stemi=True))["ecg.dcm"])
    sign_in(page, "town_doc")
    page.goto("/ecg/upload")
    expect(page.locator("#patient-q")).to_be_focused()
    page.keyboard.type("wxy")
    page.keyboard.press("Enter")
    page.locator(f"#choose-patient-{tele.patient.id}").click()
    expect(page.locator("#files")).to_be_focused()
    page.set_input_files("#files", str(path))
    page.locator("#priority-emergency").check()
    page.fill("#clinical_question", "胸痛 1 小时")
    page.locator("#upload-submit").press("Enter")
    expect(page.locator("#done")).to_contain_text("心电诊断中心")
    page.locator("#ecg-tracing-link").click()
    expect(page.locator("svg.ecg-sheet")).to_be_visible()

    page.context.clear_cookies()
    sign_in(page, "yx_senior")
    page.goto("/ecg/worklist")
    page.locator("a[id^=open-ecg-]").first.click()
    expect(page.locator("#auto-measurements")).to_contain_text("初步")
    page.keyboard.press("0")
    expect(page.locator("#ecg-zoom")).to_have_text("100%")
    page.keyboard.press("+")
    expect(page.locator("#ecg-zoom")).to_have_text("125%")
    page.keyboard.press("c")
    expect(page.locator('[data-ecg="calipers"]')).to_have_attribute("aria-pressed", "true")
    # Two clicks 20 mm apart on the first row: 800 ms at 25 mm/s, a rate of 75 bpm; 5 mm up is 0.5 mV.
    page.locator("#ecg-paper").scroll_into_view_if_needed()
    for x, y in ((30.0, 30.0), (50.0, 25.0)):
        client = page.evaluate("""([x, y]) => { const svg = document.querySelector('svg.ecg-sheet');
            const p = svg.createSVGPoint(); p.x = x; p.y = y; const c = p.matrixTransform(svg.getScreenCTM());
            return [c.x, c.y]; }""", [x, y])
        page.mouse.click(client[0], client[1])
    readout = page.locator("#ecg-readout")
    expect(readout).to_contain_text("bpm")
    # Mouse positions are whole pixels (about 0.2 mm here): a few milliseconds either way.
    assert abs(float(readout.get_attribute("data-dt-ms") or 0) - 800) <= 12
    assert abs(float(readout.get_attribute("data-dv-mv") or 0) - 0.5) <= 0.02
    assert re.search(r"(74|75|76) bpm", readout.inner_text())
    page.keyboard.press("?")
    expect(page.locator("#ecg-help")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#ecg-help")).to_be_hidden()
    page.screenshot(path=str(SCREENSHOTS / "ecg-viewer.png"), full_page=False)
    page.locator("#ecg-claim").click()
    expect(page.locator("#code-stemi_inferior")).to_be_checked()
    page.locator("#report-sign").click()
    expect(page.locator("#report-critical")).to_contain_text("急性下壁ST段抬高型心肌梗死")
    page.screenshot(path=str(SCREENSHOTS / "ecg-report-signed.png"), full_page=True)
