"""The order form, an order, a patient's orders and the repeats page (+ Excel), through the browser's routes."""

from __future__ import annotations

import io
import re
from datetime import timedelta

from openpyxl import load_workbook
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.core.db import utcnow
from healthrelay.recognition.models import ClinicalOrder
from tests import factories as f
from tests.recognition.conftest import RecWorld

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def login(client, username: str) -> str:  # noqa: ANN001
    client.cookies.clear()
    token = CSRF_RE.search(client.get("/login").text).group(1)
    response = client.post("/login", data={"username": username, "password": f.PASSWORD, "csrf_token": token,
                                           "next": "/"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return CSRF_RE.search(client.get("/orders/new").text).group(1)


def _ct(db: Session, rec: RecWorld) -> int:
    row = f.exam_result(db, patient=rec.patient, organisation=rec.town, code="CT_HEAD",
                        reported_at=utcnow() - timedelta(days=5), impression="头颅CT平扫未见异常")
    db.commit()
    return row.id


def test_order_form_shows_priors_and_needs_a_reason_to_reorder(client, db: Session, rec: RecWorld) -> None:  # noqa: ANN001
    prior_id = _ct(db, rec)
    token = login(client, "county_doc")
    page = client.get(f"/orders/new?patient_id={rec.patient.id}&code=CT_HEAD")
    assert page.status_code == 200
    assert "东山镇卫生院" in page.text and "医共体HR" in page.text and "头颅CT平扫未见异常" in page.text
    assert f'value="exam:{prior_id}"' in page.text and 'id="decision-reorder"' in page.text
    # The htmx panel and code search answer on their own.
    panel = client.get(f"/orders/priors?patient_id={rec.patient.id}&code=CT_HEAD")
    assert "医共体HR" in panel.text and "<html" not in panel.text
    codes = client.get("/orders/codes?q=toulu")  # pinyin of 头颅
    assert 'value="CT_HEAD"' in codes.text and 'value="K"' not in codes.text
    form = {"csrf_token": token, "patient_id": str(rec.patient.id), "code": "CT_HEAD", "decision": "reorder",
            "prior_ref": f"exam:{prior_id}"}
    refused = client.post("/orders/new", data=form, follow_redirects=False)
    assert refused.status_code == 422
    assert 'id="reason_code-error"' in refused.text and 'aria-invalid="true"' in refused.text
    assert db.execute(select(func.count()).select_from(ClinicalOrder)).scalar_one() == 0
    done = client.post("/orders/new", data={**form, "reason_code": "condition_changed",
                                            "reason_note": "头痛加重"}, follow_redirects=False)
    assert done.status_code == 303
    detail = client.get(done.headers["location"])
    assert "重复检查（有理由）" in detail.text and "头痛加重" in detail.text
    orders = client.get(f"/patients/{rec.patient.id}/orders")
    assert "头颅CT" in orders.text and "医共体HR" in orders.text


def test_use_prior_from_the_form(client, db: Session, rec: RecWorld) -> None:  # noqa: ANN001
    _ct(db, rec)
    token = login(client, "county_doc")
    done = client.post("/orders/new", data={"csrf_token": token, "patient_id": str(rec.patient.id),
                                            "code": "CT_HEAD", "decision": "use_prior"}, follow_redirects=False)
    assert done.status_code == 303
    assert "已互认" in client.get(done.headers["location"]).text


def test_order_without_priors_and_bad_input(client, db: Session, rec: RecWorld) -> None:  # noqa: ANN001
    token = login(client, "county_doc")
    picker = client.get("/orders/new?q=王秀英")
    assert f'href="/orders/new?patient_id={rec.patient.id}"' in picker.text
    page = client.get(f"/orders/new?patient_id={rec.patient.id}&code=MR_HEAD")
    assert 'id="no-priors"' in page.text
    missing = client.post("/orders/new", data={"csrf_token": token, "patient_id": str(rec.patient.id), "code": ""})
    assert missing.status_code == 422 and 'id="code-error"' in missing.text
    placed = client.post("/orders/new", data={"csrf_token": token, "patient_id": str(rec.patient.id),
                                              "code": "MR_HEAD"}, follow_redirects=False)
    assert placed.status_code == 303
    stranger = login(client, "outsider_doc")
    assert stranger and client.get(f"/orders/new?patient_id={rec.patient.id}").status_code == 403


def test_repeats_page_and_excel(client, db: Session, rec: RecWorld) -> None:  # noqa: ANN001
    _ct(db, rec)
    token = login(client, "county_doc")
    for decision, reason in (("use_prior", ""), ("reorder", "emergency"), ("reorder", "emergency")):
        r = client.post("/orders/new", data={"csrf_token": token, "patient_id": str(rec.patient.id),
                                             "code": "CT_HEAD", "decision": decision, "reason_code": reason},
                        follow_redirects=False)
        assert r.status_code == 303
    login(client, "bureau")
    page = client.get("/recognition/repeats")
    assert page.status_code == 200
    assert re.search(r'data-kpi="recognised">1<', page.text) and re.search(r'data-kpi="repeated">2<', page.text)
    assert "¥200.00" in page.text and "急诊" in page.text
    assert "王秀英" not in page.text  # no patient data on this page
    xlsx = client.get("/recognition/repeats.xlsx")
    assert xlsx.status_code == 200
    ws = load_workbook(io.BytesIO(xlsx.content)).active
    rows = list(ws.iter_rows(values_only=True))
    county = next(r for r in rows if r[1] == "测试县人民医院")
    assert county[2:5] == (1, 2, 0) and county[6] == 200
    assert "王秀英" not in str(rows)
    login(client, "town_admin")
    own = client.get("/recognition/repeats")
    assert own.status_code == 200 and 'data-kpi="recognised">0<' in own.text
    assert client.get(f"/recognition/repeats?organisation={rec.county.id}").status_code == 403
    login(client, "county_doc")
    assert client.get("/recognition/repeats").status_code == 403


def test_quality_assessments_and_rules_are_edited_on_the_settings_page(client, db: Session,  # noqa: ANN001
                                                                        rec: RecWorld) -> None:
    from healthrelay.audit.models import AuditEvent
    from healthrelay.recognition.models import EqaRecord, RecognitionPrice, RecognitionValidity

    token = login(client, "town_admin")
    page = client.get("/recognition/settings")
    assert page.status_code == 200 and 'id="save-rules"' not in page.text  # an org admin does not edit rules
    year = str(utcnow().year)
    form = {"csrf_token": token, "organisation_id": str(rec.town.id), "target": "modality", "value": "US",
            "scope": "national", "year": year, "passed": "yes", "program": "国家卫健委临检中心 2026"}
    assert client.post("/recognition/settings/eqa", data=form, follow_redirects=False).status_code == 303
    assert client.post("/recognition/settings/eqa", data={**form, "organisation_id": str(rec.town_b.id)},
                       follow_redirects=False).status_code == 403
    bad = client.post("/recognition/settings/eqa", data={**form, "target": "code", "value": "NOPE"})
    assert bad.status_code == 422 and 'id="value-error"' in bad.text
    db.rollback()
    assert [r.modality for r in db.execute(select(EqaRecord).where(EqaRecord.organisation_id == rec.town_b.id))
            .scalars()] == []
    assert db.execute(select(EqaRecord).where(EqaRecord.modality == "US")).scalar_one().organisation_id == rec.town.id
    assert client.post("/recognition/settings/rules", data={"csrf_token": token, "days_1": "5"},
                       follow_redirects=False).status_code == 403

    token = login(client, "alliance_admin")
    electrolyte = db.execute(select(RecognitionValidity).where(RecognitionValidity.category == "electrolyte")
                             ).scalar_one()
    ct = db.execute(select(RecognitionPrice).where(RecognitionPrice.code == "CT_HEAD")).scalar_one()
    refused = client.post("/recognition/settings/rules", data={
        "csrf_token": token, f"days_{electrolyte.id}": "3", f"price_{ct.id}": "-5"})
    assert refused.status_code == 422 and f'id="price_{ct.id}-error"' in refused.text
    db.rollback()
    assert db.get(RecognitionValidity, electrolyte.id).days == 7  # nothing half-written
    ok = client.post("/recognition/settings/rules", data={
        "csrf_token": token, f"days_{electrolyte.id}": "3", f"price_{ct.id}": "180.50"}, follow_redirects=False)
    assert ok.status_code == 303
    db.rollback()
    assert db.get(RecognitionValidity, electrolyte.id).days == 3 and db.get(RecognitionPrice, ct.id).price_fen == 18050
    event = db.execute(select(AuditEvent).where(AuditEvent.action == "recognition.rules_changed")).scalar_one()
    assert {c["new"] for c in event.detail["changes"]} == {3, 18050}
    f.lab_result(db, patient=rec.patient, organisation=rec.town, code="K", value="4.0",
                 reported_at=utcnow() - timedelta(days=4))
    db.commit()
    login(client, "county_doc")
    assert 'id="no-priors"' in client.get(f"/orders/new?patient_id={rec.patient.id}&code=K").text


def test_a_flagged_hl7_repeat_gets_its_reason_on_the_order_page(client, db: Session, rec: RecWorld) -> None:  # noqa: ANN001
    from healthrelay.recognition import service
    from healthrelay.recognition.schemas import ExternalOrderIn

    _ct(db, rec)
    order = service.record_external_order(db, by=None, data=ExternalOrderIn(
        patient_id=rec.patient.id, ordering_organisation_id=rec.county.id, code="CT_HEAD", placer_number="HIS-77",
        ordered_at=utcnow()))
    db.commit()
    login(client, "county_admin")
    repeats = client.get("/recognition/repeats")
    assert f'href="/orders/{order.id}"' in repeats.text and 'data-kpi="unreasoned">1<' in repeats.text
    token = login(client, "county_doc")
    page = client.get(f"/orders/{order.id}")
    assert 'id="resolve-form"' in page.text and "HIS-77" in page.text
    refused = client.post(f"/orders/{order.id}/reason",
                          data={"csrf_token": token, "reason_code": "physician_judgement"})
    assert refused.status_code == 422 and 'id="reason_note-error"' in refused.text
    done = client.post(f"/orders/{order.id}/reason", data={"csrf_token": token, "reason_code": "forensic"},
                       follow_redirects=False)
    assert done.status_code == 303
    assert "重复检查（有理由）" in client.get(f"/orders/{order.id}").text
    login(client, "county_admin")
    assert 'data-kpi="unreasoned">0<' in client.get("/recognition/repeats").text
