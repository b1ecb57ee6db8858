"""Results pages as clinicians use them: the patient-wide view across members, the lab's entry form, details."""

from __future__ import annotations

import json
import re
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.audit.models import AuditEvent
from healthrelay.core.db import utcnow
from healthrelay.recognition.models import EqaRecord
from healthrelay.results import service
from healthrelay.results.models import LabResult
from tests.results.conftest import ResultsWorld, count_labs, exam_in, lab_in, login


def seed_two_members(db: Session, world: ResultsWorld) -> None:
    """Glucose three times at the township, once at the county (with a national mark there), and a county CT."""
    w = world.tele
    db.add(EqaRecord(organisation_id=w.county.id, category="chemistry", scope="national", year=utcnow().year,
                     passed=True))
    db.flush()
    now = utcnow()
    for days, value in ((40, "6.0"), (20, "7.4"), (10, "6.6")):
        service.record_lab_result(db, data=lab_in(world, value=value, reported_at=now - timedelta(days=days)),
                                  source="hl7", by=None)
    service.record_lab_result(db, data=lab_in(world, organisation_id=w.county.id, value="8.1",
                                              reported_at=now - timedelta(days=2)), source="hl7", by=None)
    service.record_lab_result(db, data=lab_in(world, test_code="HBSAG", value="阴性"), source="hl7", by=None)
    service.record_exam_result(db, data=exam_in(world, organisation_id=w.county.id, exam_code="CT_HEAD",
                                                study_instance_uid="1.2.826.0.1.3680043.8.498.1",
                                                impression="未见出血"), source="hl7", by=None)
    db.commit()


def test_the_results_view_shows_every_members_results_with_trends(client, db: Session,  # noqa: ANN001
                                                                  world: ResultsWorld) -> None:
    seed_two_members(db, world)
    login(client, "town_doc")
    page = client.get(f"/patients/{world.tele.patient.id}/results")
    assert page.status_code == 200, page.text
    html = page.text
    assert "东山镇卫生院" in html and "测试县人民医院" in html
    group = re.search(r'id="lab-group-GLU".*?</table>', html, re.S).group(0)
    values = re.findall(r'<td class="value num">([\d.]+) mmol/L</td>', group)
    assert values == ["8.1", "6.6", "7.4", "6.0"]  # newest first across both members
    assert 'class="hr-mark" data-scope="national"' in group and "全国HR" in group
    assert group.count('class="flag flag-high"') >= 3  # three H flags highlighted (+ the group's count badge)
    assert 'href="/imaging/studies/1.2.826.0.1.3680043.8.498.1/viewer"' in html
    chart = json.loads(re.search(r'<script type="application/json" id="rs-chart-data">(.*?)</script>', html,
                                 re.S).group(1))
    glucose = next(s for s in chart if s["code"] == "GLU")
    assert [p[1] for p in glucose["points"]] == [6.0, 7.4, 6.6, 8.1]  # oldest first on the time axis
    assert (glucose["low"], glucose["high"], glucose["unit"]) == (3.9, 6.1, "mmol/L")
    assert all(s["code"] != "HBSAG" for s in chart)  # qualitative tests get no chart
    assert 'data-trend="GLU"' in html
    read = db.execute(select(AuditEvent).where(AuditEvent.action == "results.read")).scalars().all()
    assert [e.patient_id for e in read] == [world.tele.patient.id]


def test_the_filters_narrow_by_kind_organisation_and_date(client, db: Session, world: ResultsWorld) -> None:  # noqa: ANN001
    seed_two_members(db, world)
    login(client, "town_doc")
    base = f"/patients/{world.tele.patient.id}/results"
    county_only = client.get(f"{base}?organisation={world.tele.county.id}").text
    assert re.findall(r'<td class="value num">([\d.]+) mmol/L</td>', county_only) == ["8.1"]
    exams_only = client.get(f"{base}?kind=exam").text
    assert 'id="lab-results"' not in exams_only and "头颅CT" in exams_only
    recent = (utcnow() - timedelta(days=15)).date().isoformat()
    recent_page = client.get(f"{base}?kind=lab&from={recent}").text
    assert re.findall(r'<td class="value num">([\d.]+) mmol/L</td>', recent_page) == ["8.1", "6.6"]
    bad = client.get(f"{base}?from=2026-13-40")
    assert bad.status_code == 422 and "YYYY-MM-DD" in bad.text


def test_a_stranger_gets_403_and_the_refusal_is_audited(client, db: Session, world: ResultsWorld) -> None:  # noqa: ANN001
    seed_two_members(db, world)
    login(client, "outsider_doc")
    page = client.get(f"/patients/{world.tele.patient.id}/results")
    assert page.status_code == 403 and "测试县人民医院" not in page.text
    lab_id = db.execute(select(LabResult.id).limit(1)).scalar_one()
    assert client.get(f"/results/lab/{lab_id}").status_code == 403
    denied = db.execute(select(AuditEvent).where(AuditEvent.action == "results.read",
                                                 AuditEvent.outcome == "denied")).scalar_one()
    assert denied.patient_id == world.tele.patient.id


def test_detail_pages_show_the_result_and_its_links(client, db: Session, world: ResultsWorld) -> None:  # noqa: ANN001
    seed_two_members(db, world)
    login(client, "town_doc")
    lab = db.execute(select(LabResult).where(LabResult.value_text == "8.1")).scalar_one()
    page = client.get(f"/results/lab/{lab.id}")
    assert page.status_code == 200 and "8.1 mmol/L" in page.text and "全国HR" in page.text
    assert "测试县人民医院" in page.text and "&lt; 2.8" in page.text
    exam = client.get(f"/patients/{world.tele.patient.id}/results?kind=exam").text
    exam_id = int(re.search(r'data-exam-id="(\d+)"', exam).group(1))
    detail = client.get(f"/results/exam/{exam_id}")
    assert detail.status_code == 200 and "未见出血" in detail.text and 'id="images-link"' in detail.text
    assert client.get("/results/exam/99999").status_code == 404


def entry_form(token: str, world: ResultsWorld, **changes: object) -> dict[str, object]:
    form: dict[str, object] = {
        "csrf_token": token, "patient_id": str(world.tele.patient.id),
        "reported_at": (utcnow() - timedelta(minutes=5)).astimezone(service.LOCAL_TZ).strftime("%Y-%m-%dT%H:%M"),
        "collected_at": "", "specimen": "血清", "filler_number": "TOWN-0001",
        "test_code": ["ptt", "K", "", "", "", ""], "value": ["7.0", "6.9", "", "", "", ""],
        "unit": ["", "", "", "", "", ""]}
    form.update(changes)
    return form


def test_the_lab_enters_results_with_flags_computed(client, db: Session, world: ResultsWorld) -> None:  # noqa: ANN001
    token = login(client, "town_lab")
    start = client.get("/results/lab/new")
    assert start.status_code == 200 and 'id="patient-q"' in start.text
    form_page = client.get(f"/results/lab/new?patient_id={world.tele.patient.id}")
    assert form_page.status_code == 200 and "王秀英" in form_page.text
    assert 'list="result-codes"' in form_page.text and 'label="葡萄糖 · glucose · ptt · mmol/L"' in form_page.text
    assert re.search(r'id="rows-0-test_code"[^>]*autofocus', form_page.text)
    # "ptt" is typed, not picked from the list: the pinyin initials of 葡萄糖 name exactly one test (GLU)
    response = client.post("/results/lab/new", data=entry_form(token, world), follow_redirects=False)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == f"/patients/{world.tele.patient.id}/results?kind=lab&done=entered"
    rows = {r.test_code: r for r in db.execute(select(LabResult)).scalars()}
    assert (rows["GLU"].abnormal_flag, rows["GLU"].critical) == ("H", False)
    assert (rows["K"].abnormal_flag, rows["K"].critical) == ("HH", True)
    assert rows["GLU"].entered_by_user_id == world.town_lab.id and rows["GLU"].specimen == "血清"


def test_a_bad_row_keeps_the_whole_form_unsaved_with_the_error_beside_it(client, db: Session,  # noqa: ANN001
                                                                        world: ResultsWorld) -> None:
    token = login(client, "town_lab")
    form = entry_form(token, world, test_code=["GLU", "NOPE", "K", "", "", ""], value=["7.0", "1", "abc", "", "", ""])
    response = client.post("/results/lab/new", data=form, follow_redirects=False)
    assert response.status_code == 422
    html = response.text
    assert re.search(r'id="rows-1-test_code"[^>]*aria-invalid="true"', html)
    assert 'id="rows-1-test_code-error"' in html and 'id="rows-2-value-error"' in html
    assert 'value="NOPE"' in html  # what was typed stays
    assert count_labs(db) == 0  # GLU was fine, but nothing is half-written
    future = entry_form(token, world, reported_at=(utcnow() + timedelta(days=1)).astimezone(
        service.LOCAL_TZ).strftime("%Y-%m-%dT%H:%M"))
    late = client.post("/results/lab/new", data=future, follow_redirects=False)
    assert late.status_code == 422 and 'id="reported_at-error"' in late.text and count_labs(db) == 0


def test_only_staff_who_may_enter_see_the_form(client, db: Session, world: ResultsWorld) -> None:  # noqa: ANN001
    login(client, "yx_senior")  # a remote reader, not a lab
    assert client.get("/results/lab/new").status_code == 403
    login(client, "outsider_doc")  # a clinician, but no care relationship with this patient
    assert client.get(f"/results/lab/new?patient_id={world.tele.patient.id}").status_code == 403
