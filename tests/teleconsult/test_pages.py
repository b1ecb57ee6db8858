"""Consultation pages as staff use them: the list, the request form, the worklist, the detail and its actions."""

from __future__ import annotations

import re

from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.imaging.models import ImagingSeries, ImagingStudy
from healthrelay.teleconsult.models import ConsultRequest, ConsultState, Priority
from tests import factories as f
from tests.teleconsult.conftest import Requests, TeleWorld, make_request, move_due_into_past

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def login(client, username: str) -> str:  # noqa: ANN001
    """Sign in through the login form; returns the CSRF token the page forms carry."""
    client.cookies.clear()
    token = CSRF_RE.search(client.get("/login").text).group(1)
    response = client.post("/login", data={"username": username, "password": f.PASSWORD, "csrf_token": token,
                                           "next": "/"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return CSRF_RE.search(client.get("/teleconsult").text).group(1)


def row_ids(html: str, table_id: str) -> list[int]:
    match = re.search(rf'id="{table_id}".*?</table>', html, re.S)
    return [int(i) for i in re.findall(r'data-request-id="(\d+)"', match.group(0))] if match else []


def new_form(token: str, w: TeleWorld, **changes: str) -> dict[str, str]:
    form = {"csrf_token": token, "patient_id": str(w.patient.id), "centre_id": str(w.centre.id), "kind": "imaging",
            "priority": "urgent", "clinical_question": "胸片：肺炎？", "case_summary": "发热咳嗽 3 天\n体温 38.9℃",
            "wanted_specialty_id": "", "wanted_grade": "attending", "consent_given": "yes",
            "consent_kind": "written", "consent_note": ""}
    form.update(changes)
    return form


def count(db: Session) -> int:
    db.expire_all()
    return db.execute(select(func.count()).select_from(ConsultRequest)).scalar_one()


def test_the_township_doctor_finds_the_patient_and_sends_a_request(client, db: Session,  # noqa: ANN001
                                                                   tele: TeleWorld) -> None:
    token = login(client, "town_doc")
    start = client.get("/teleconsult/new")
    assert start.status_code == 200 and 'id="patient-q"' in start.text and "autofocus" in start.text
    found = client.get("/teleconsult/new?q=wxy")
    assert f'href="/teleconsult/new?patient_id={tele.patient.id}"' in found.text
    form_page = client.get(f"/teleconsult/new?patient_id={tele.patient.id}")
    assert form_page.status_code == 200 and "王秀英" in form_page.text and "县域影像诊断中心" in form_page.text
    assert 'id="consent_given"' in form_page.text
    response = client.post("/teleconsult/new", data=new_form(token, tele), follow_redirects=False)
    assert response.status_code == 303, response.text
    request_id = int(re.search(r"/teleconsult/(\d+)\?done=created", response.headers["location"]).group(1))
    request = db.get(ConsultRequest, request_id)
    assert request is not None and request.priority == Priority.URGENT and request.wanted_grade == "attending"
    assert request.case_summary == "发热咳嗽 3 天\n体温 38.9℃" and request.consent_kind == "written"
    page = client.get(response.headers["location"])
    assert page.status_code == 200 and request.number in page.text and "会诊请求已提交" in page.text
    assert 'id="cancel-form"' in page.text and 'id="claim-form"' not in page.text
    listing = client.get("/teleconsult")
    assert row_ids(listing.text, "request-list") == [request_id]


def test_errors_are_shown_beside_the_fields_and_the_values_are_kept(client, db: Session,  # noqa: ANN001
                                                                    tele: TeleWorld) -> None:
    token = login(client, "town_doc")
    response = client.post("/teleconsult/new", data=new_form(
        token, tele, consent_given="", clinical_question="", case_summary="既往体健"))
    assert response.status_code == 422
    html = response.text
    assert 'id="consent_given-error"' in html and 'id="clinical_question-error"' in html
    assert "既往体健" in html and 'value="attending" selected' in html
    # The first field with a problem gets the focus, so the keyboard user lands on it.
    assert re.search(r'id="clinical_question"[^>]*aria-invalid="true"[^>]*autofocus', html)
    response = client.post("/teleconsult/new", data=new_form(token, tele, priority="routine",
                                                              consent_kind="emergency_waiver", consent_given=""))
    assert response.status_code == 422 and 'id="consent_kind-error"' in response.text
    response = client.post("/teleconsult/new", data=new_form(token, tele, centre_id=str(tele.ecg_centre.id)))
    assert response.status_code == 422 and 'id="kind-error"' in response.text
    assert count(db) == 0
    # Without the CSRF token nothing happens either.
    response = client.post("/teleconsult/new", data={**new_form(token, tele), "csrf_token": "x"})
    assert response.status_code == 403 and count(db) == 0


def test_the_worklist_by_deadline_with_filters_countdown_and_viewer_links(client, db: Session,  # noqa: ANN001
                                                                          tele: TeleWorld, requests: Requests) -> None:
    uid = generate_uid()
    study = ImagingStudy(study_instance_uid=uid, patient_id=tele.patient.id, organisation_id=tele.town.id,
                         consult_request_id=requests.accepted.id, modalities_in_study="CT")
    db.add(study)
    db.flush()
    db.add(ImagingSeries(study_id=study.id, series_instance_uid=generate_uid(), modality="CT"))
    db.commit()
    move_due_into_past(db, requests.requested, minutes=75)
    login(client, "yx_trainee")
    page = client.get("/teleconsult/worklist")
    assert page.status_code == 200
    ids = row_ids(page.text, "worklist-table")
    assert ids[0] == requests.requested.id and len(ids) == 5
    assert requests.declined.id not in ids
    assert "超时 1 小时 16 分" in page.text or "超时 1 小时 15 分" in page.text
    assert f'href="/imaging/studies/{uid}/viewer"' in page.text
    assert "王*英" in page.text and "王秀英" not in page.text and "东山镇卫生院" in page.text
    assert 'hx-trigger="hr-live' in page.text and "every 30s" in page.text
    assert f'id="claim-{requests.accepted.id}"' in page.text
    assert f'id="claim-{requests.claimed_senior.id}"' not in page.text  # held by someone else
    assert f'id="report-{requests.claimed_trainee.id}"' in page.text  # my own claim
    fragment = client.get("/teleconsult/_worklist?modality=CT")
    assert row_ids(fragment.text, "worklist-table") == [requests.accepted.id]
    assert 'id="worklist-count" hx-swap-oob="true">1<' in fragment.text
    mine = client.get("/teleconsult/worklist?view=mine")
    assert row_ids(mine.text, "worklist-table") == [requests.claimed_trainee.id]
    urgent = client.get("/teleconsult/worklist?priority=emergency")
    assert row_ids(urgent.text, "worklist-table") == [requests.emergency.id]
    assert client.get("/teleconsult/worklist?priority=stat").status_code == 422


def test_the_township_doctor_has_no_worklist(client, tele: TeleWorld) -> None:  # noqa: ANN001
    login(client, "town_doc")
    assert client.get("/teleconsult/worklist").status_code == 403


def test_claim_from_the_worklist_then_the_detail_offers_the_report(client, db: Session,  # noqa: ANN001
                                                                   tele: TeleWorld, requests: Requests) -> None:
    token = login(client, "yx_senior")
    target = requests.requested
    response = client.post(f"/teleconsult/{target.id}/claim", data={"csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == f"/teleconsult/{target.id}?done=claim"
    page = client.get(response.headers["location"])
    assert 'id="report-link"' in page.text and 'id="release-form"' in page.text
    assert 'id="request-claimed-by">钱医师' in page.text
    assert 'data-action="claim"' in page.text
    db.expire_all()
    assert db.get(ConsultRequest, target.id).state == ConsultState.ACCEPTED
    # The trainee, too late, sees who holds it, inside the page.
    token = login(client, "yx_trainee")
    late = client.post(f"/teleconsult/{target.id}/claim", data={"csrf_token": token})
    assert late.status_code == 409 and "钱医师" in late.text


def test_detail_actions_follow_who_you_are(client, tele: TeleWorld, requests: Requests) -> None:  # noqa: ANN001
    rid = requests.claimed_trainee.id
    login(client, "yx_head")
    head = client.get(f"/teleconsult/{rid}").text
    assert 'id="reassign-form"' in head and 'id="release-form"' in head and 'id="decline-form"' in head
    assert ">钱医师</option>" in head and ">孙医师</option>" not in head  # not to the current holder
    login(client, "yx_senior")
    senior = client.get(f"/teleconsult/{rid}").text
    assert 'id="reassign-form"' not in senior and 'id="release-form"' not in senior
    assert 'id="claim-form"' not in senior and 'id="decline-form"' in senior
    login(client, "town_doc")
    town = client.get(f"/teleconsult/{rid}").text
    assert 'id="cancel-form"' in town and 'id="decline-form"' not in town and "王秀英" in town
    login(client, "outsider_doc")
    assert client.get(f"/teleconsult/{rid}").status_code == 403


def test_a_refused_action_shows_its_message_in_its_form_with_what_was_typed(  # noqa: ANN001
        client, db: Session, tele: TeleWorld, requests: Requests) -> None:
    token = login(client, "yx_senior")
    rid = requests.requested.id
    response = client.post(f"/teleconsult/{rid}/decline", data={"csrf_token": token, "reason": "  "})
    assert response.status_code == 422
    assert re.search(r'id="decline-reason"[^>]*aria-invalid="true"', response.text)
    response = client.post(f"/teleconsult/{rid}/decline", data={"csrf_token": token, "reason": "图像伪影太重"},
                           follow_redirects=False)
    assert response.status_code == 303
    page = client.get(response.headers["location"])
    assert "图像伪影太重" in page.text and 'id="no-actions"' in page.text
    token = login(client, "yx_head")
    response = client.post(f"/teleconsult/{requests.accepted.id}/reassign",
                           data={"csrf_token": token, "to_user_id": "", "reason": "急"})
    assert response.status_code == 422 and 'id="to_user_id-error"' in response.text and 'value="急"' in response.text
    response = client.post(f"/teleconsult/{requests.accepted.id}/reassign",
                           data={"csrf_token": token, "to_user_id": str(tele.trainee.id), "reason": "急"},
                           follow_redirects=False)
    assert response.status_code == 303
    db.expire_all()
    assert db.get(ConsultRequest, requests.accepted.id).claimed_by_user_id == tele.trainee.id


def test_the_list_shows_sent_and_received_with_state_filters(client, db: Session,  # noqa: ANN001
                                                            tele: TeleWorld, requests: Requests) -> None:
    login(client, "town_doc")
    open_rows = row_ids(client.get("/teleconsult").text, "request-list")
    assert set(open_rows) == {requests.requested.id, requests.accepted.id, requests.claimed_senior.id,
                              requests.claimed_trainee.id, requests.emergency.id}
    declined = client.get("/teleconsult?state=declined").text
    assert row_ids(declined, "request-list") == [requests.declined.id]
    assert len(row_ids(client.get("/teleconsult?state=all").text, "request-list")) == 7
    assert client.get("/teleconsult?state=bogus").status_code == 422
    assert 'id="tab-received"' not in client.get("/teleconsult").text
    login(client, "yx_senior")
    page = client.get("/teleconsult")
    assert 'id="tab-received" aria-current="page"' in page.text
    assert len(row_ids(page.text, "request-list")) == 5
    newer = make_request(db, tele)
    assert row_ids(client.get("/teleconsult").text, "request-list")[0] == newer.id


def test_pages_in_english(client, tele: TeleWorld, requests: Requests) -> None:  # noqa: ANN001
    login(client, "yx_senior")
    client.cookies.set("lang", "en")
    page = client.get("/teleconsult/worklist")
    assert "Reading worklist" in page.text and "Claim" in page.text
    detail = client.get(f"/teleconsult/{requests.claimed_senior.id}")
    assert "Write the report" in detail.text and "History" in detail.text
