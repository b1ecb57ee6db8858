"""The board, the case page and the metrics as staff use them, through the real app."""

from __future__ import annotations

import io
import re
from datetime import timedelta

from openpyxl import load_workbook
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.core.db import utcnow
from healthrelay.pathways import service
from healthrelay.pathways.models import PathwayCase, PathwayNode
from tests import factories as f
from tests.pathways.conftest import PathwayWorld, minutes_ago

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def login(client, username: str) -> str:  # noqa: ANN001
    client.cookies.clear()
    token = CSRF_RE.search(client.get("/login").text).group(1)
    response = client.post("/login", data={"username": username, "password": f.PASSWORD, "csrf_token": token,
                                           "next": "/"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return CSRF_RE.search(client.get("/pathways/chest_pain/board").text).group(1)


def _stemi_in_the_cath_lab(db: Session, w: PathwayWorld) -> PathwayCase:
    """A STEMI from the township: FMC 100 min ago, door 80 min ago, balloon 8 min ago (D2B 72 min)."""
    case = service.open_case(db, centre="chest_pain", patient_id=w.patient.id, by=w.town_doctor, source="ecg",
                             hospital_organisation_id=w.county.id, diagnosis="STEMI", arrival_mode="ambulance",
                             nodes={"first_medical_contact": minutes_ago(100), "first_ecg": minutes_ago(95),
                                    "diagnosis": minutes_ago(90), "cath_lab_activation": minutes_ago(85),
                                    "arrival": minutes_ago(80), "wire_crossing": minutes_ago(8)})
    db.commit()
    return case


def test_board_shows_open_cases_with_running_clocks(client, db: Session, world: PathwayWorld) -> None:  # noqa: ANN001
    w = world
    running = service.open_case(db, centre="chest_pain", patient_id=w.patient.id, by=w.town_doctor, source="ecg",
                                hospital_organisation_id=w.county.id,
                                nodes={"first_medical_contact": minutes_ago(30), "arrival": minutes_ago(70 - 5)})
    db.commit()
    login(client, "cardio")
    page = client.get("/pathways/chest_pain/board")
    assert page.status_code == 200
    card = re.search(rf'id="case-{running.id}".*?</article>', page.text, re.S).group(0)
    assert running.number in card and "王*英" in card and "王秀英" not in card
    # D2B running for 65 min against ≤ 90: amber (past two thirds), with the start time for pathways.js.
    assert 'class="clock lvl-amber"' in card and "1:05" in card
    assert 'data-clock-start="' in card
    fragment = client.get("/pathways/chest_pain/_board")
    assert running.number in fragment.text and "<html" not in fragment.text
    # Another hospital's staff see none of it.
    login(client, "outsider")
    assert running.number not in client.get("/pathways/chest_pain/board").text
    assert client.get("/pathways/cardiac/board").status_code == 422


def test_case_page_shows_the_timeline_and_d2b_against_the_target(client, db: Session,  # noqa: ANN001
                                                                   world: PathwayWorld) -> None:
    case = _stemi_in_the_cath_lab(db, world)
    login(client, "cardio")
    page = client.get(f"/pathways/cases/{case.id}")
    assert page.status_code == 200
    d2b = re.search(r'<li data-metric="d2b">(.*?)</li>', page.text, re.S).group(1)
    assert "72 分钟" in d2b and "≤ 90" in d2b and "✓" in d2b
    timeline = re.search(r'id="timeline".*?</table>', page.text, re.S).group(0)
    assert timeline.index("首次医疗接触") < timeline.index("到达医院大门") < timeline.index("球囊扩张")
    assert "72′" in timeline  # the balloon, 72 min from the door
    assert "王秀英" in page.text  # a party to the case may see the patient


def test_recording_through_the_page_and_refusals_shown_in_the_form(client, db: Session,  # noqa: ANN001
                                                                     world: PathwayWorld) -> None:
    case = service.open_case(db, centre="chest_pain", patient_id=None, by=world.cardiologist, source="walk_in",
                             hospital_organisation_id=world.county.id)
    db.commit()
    token = login(client, "cardio")
    done = client.post(f"/pathways/cases/{case.id}/nodes", data={"csrf_token": token, "node": "arrival", "now": "1"},
                       follow_redirects=False)
    assert done.status_code == 303
    local = (utcnow() + timedelta(hours=8) - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M")
    refused = client.post(f"/pathways/cases/{case.id}/nodes", data={"csrf_token": token, "node": "wire_crossing",
                                                                     "at": local})
    assert refused.status_code == 409
    assert "球囊扩张" in refused.text and "早于到达医院大门" in refused.text and 'role="alert"' in refused.text
    bad = client.post(f"/pathways/cases/{case.id}/nodes", data={"csrf_token": token, "node": "arrival",
                                                                 "at": "yesterday"})
    assert bad.status_code == 422 and "YYYY-MM-DD" in bad.text
    again = client.post(f"/pathways/cases/{case.id}/nodes", data={"csrf_token": token, "node": "arrival",
                                                                   "at": local})
    assert again.status_code == 409 and "needs a reason" in again.text
    db.expire_all()
    assert db.execute(select(func.count()).select_from(PathwayNode)).scalar() == 1


def test_an_unrelated_organisations_doctor_gets_403(client, db: Session, world: PathwayWorld) -> None:  # noqa: ANN001
    case = _stemi_in_the_cath_lab(db, world)
    token = login(client, "outsider")
    assert client.get(f"/pathways/cases/{case.id}").status_code == 403
    posted = client.post(f"/pathways/cases/{case.id}/nodes", data={"csrf_token": token, "node": "ecg_read",
                                                                    "now": "1"})
    assert posted.status_code == 403
    api = client.get(f"/api/v1/pathways/cases/{case.id}", headers=f.bearer(client, "outsider"))
    assert api.status_code == 403 and api.json()["code"] == "forbidden"


def test_api_opens_records_and_refuses_with_clear_errors(client, db: Session, world: PathwayWorld) -> None:  # noqa: ANN001
    headers = f.bearer(client, "cardio")
    opened = client.post("/api/v1/pathways/cases", headers=headers, json={
        "centre": "stroke", "patient_id": world.patient.id, "source": "walk_in",
        "hospital_organisation_id": world.county.id, "nodes": {"arrival": minutes_ago(50).isoformat()}})
    assert opened.status_code == 201, opened.text
    case_id = opened.json()["id"]
    assert opened.json()["number"].startswith("CZ")
    recorded = client.post(f"/api/v1/pathways/cases/{case_id}/nodes", headers=headers,
                           json={"node": "ct", "at": minutes_ago(40).isoformat()})
    assert recorded.status_code == 201
    needle = client.post(f"/api/v1/pathways/cases/{case_id}/nodes", headers=headers,
                         json={"node": "needle", "at": minutes_ago(5).isoformat()})
    dnt = next(i for i in needle.json()["intervals"] if i["code"] == "dnt")
    assert (round(dnt["minutes"]), dnt["on_target"]) == (45, True)
    wrong = client.post(f"/api/v1/pathways/cases/{case_id}/nodes", headers=headers,
                        json={"node": "wire_crossing", "at": minutes_ago(1).isoformat()})
    assert wrong.status_code == 422 and "wire_crossing" in wrong.json()["message"]
    naive = client.post(f"/api/v1/pathways/cases/{case_id}/nodes", headers=headers,
                        json={"node": "ct_read", "at": "2026-12-04T08:00:00"})
    assert naive.status_code == 422
    future = client.post(f"/api/v1/pathways/cases/{case_id}/nodes", headers=headers,
                         json={"node": "ct_read", "at": (utcnow() + timedelta(hours=1)).isoformat()})
    assert future.status_code == 422 and "future" in future.json()["message"]


def test_metrics_page_and_workbook(client, db: Session, world: PathwayWorld) -> None:  # noqa: ANN001
    late = service.open_case(db, centre="chest_pain", patient_id=None, by=None, source="manual",
                             hospital_organisation_id=world.county.id, opened_organisation_id=world.county.id,
                             nodes={"arrival": minutes_ago(200), "wire_crossing": minutes_ago(80)})
    db.commit()
    login(client, "bureau")
    page = client.get("/pathways/metrics?centre=chest_pain")
    assert page.status_code == 200
    month = utcnow().astimezone(service._SHANGHAI).strftime("%Y-%m")
    section = re.search(r'id="metric-chest_pain-d2b".*?</section>', page.text, re.S).group(0)
    row = re.search(rf'<tr[^>]*data-month="{month}">.*?</tr>', section, re.S).group(0)
    assert late.number in row and "120′" in row and "✗" in row
    assert "王" not in page.text
    workbook = client.get("/pathways/metrics.xlsx?centre=chest_pain")
    assert workbook.status_code == 200
    wb = load_workbook(io.BytesIO(workbook.content))
    rows = [r for r in wb.worksheets[0].iter_rows(values_only=True)
            if r[3] == month and r[1] == "进门至球囊扩张（D2B）"]
    assert rows and rows[0][4] == 1 and rows[0][6] == 120.0 and rows[0][8] == 0
    assert [r[3] for r in wb.worksheets[1].iter_rows(values_only=True)][1:] == [late.number]
    assert client.get("/pathways/metrics?start=2026-13").status_code == 422
    login(client, "cardio")
    assert client.get("/pathways/metrics").status_code == 200


def test_a_refused_opening_writes_nothing(client, db: Session, world: PathwayWorld) -> None:  # noqa: ANN001
    headers = f.bearer(client, "cardio")
    refused = client.post("/api/v1/pathways/cases", headers=headers, json={
        "centre": "chest_pain", "patient_id": world.patient.id, "source": "walk_in",
        "nodes": {"arrival": minutes_ago(10).isoformat(), "wire_crossing": minutes_ago(30).isoformat()}})
    assert refused.status_code == 409
    assert "球囊扩张" in refused.json()["message"] and "hospital door" in refused.json()["message"]
    unknown = client.post("/api/v1/pathways/cases", headers=headers, json={"centre": "burns", "source": "manual"})
    assert unknown.status_code == 422
    db.expire_all()
    assert db.execute(select(func.count()).select_from(PathwayCase)).scalar() == 0
    assert db.execute(select(func.count()).select_from(PathwayNode)).scalar() == 0
