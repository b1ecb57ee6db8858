"""Imaging pages as staff use them: the studies list with its 待匹配 filter, linking a flagged study to a
resident, and the viewer page (whose initial HTML already carries the first frame)."""

from __future__ import annotations

import html
import re

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.imaging.models import ImagingStudy, PatientMatch
from healthrelay.teleconsult.models import ConsultRequest
from tests import factories as f
from tests.imaging.conftest import ImagingSite
from tests.imaging.viewing_world import ViewingWorld, build, ingest_series

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def world(db: Session, imaging_site: ImagingSite) -> ViewingWorld:
    return build(db, imaging_site)


def login(client, username: str) -> str:  # noqa: ANN001
    """Sign in through the login form; returns the CSRF token the page forms carry."""
    client.cookies.clear()
    token = CSRF_RE.search(client.get("/login").text).group(1)
    response = client.post("/login", data={"username": username, "password": f.PASSWORD, "csrf_token": token,
                                           "next": "/"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return CSRF_RE.search(client.get("/imaging").text).group(1)


def row_uids(page: str) -> list[str]:
    return re.findall(r'<tr id="study-\d+" data-uid="([0-9.]+)"', page)


def test_list_shows_the_organisations_studies_and_the_unmatched_filter(client, db: Session,
                                                                      world: ViewingWorld) -> None:  # noqa: ANN001
    town = world.site.township.id
    matched = ingest_series(db, organisation_id=town, patient_id=world.resident_id, count=1)
    flagged = ingest_series(db, organisation_id=town, patient_id="DS-77", patient_name="ZHAO^LIU", count=1)
    elsewhere = ingest_series(db, organisation_id=world.other_town.id, patient_id="XH-1", patient_name="QIAN^QI",
                              count=1)
    login(client, "dongshan_doc")

    page = client.get("/imaging")
    assert page.status_code == 200
    assert row_uids(page.text) == [flagged.study_instance_uid, matched.study_instance_uid]
    assert elsewhere.study_instance_uid not in page.text
    assert "王*英" in page.text and "王秀英" not in page.text
    assert 'id="unmatched-count"' in page.text and "1 个待匹配" in page.text
    # The viewer link and, for the flagged study only, the link-to-patient action.
    assert f'href="/imaging/studies/{matched.study_instance_uid}/viewer"' in page.text
    assert f'href="/imaging/studies/{flagged.study_instance_uid}/link"' in page.text
    assert f'href="/imaging/studies/{matched.study_instance_uid}/link"' not in page.text
    request = db.get(ConsultRequest, matched.consult_request_id)
    assert f'<a href="/teleconsult/{request.id}">{request.number}</a>' in page.text

    only_flagged = client.get("/imaging?unmatched=1")
    assert row_uids(only_flagged.text) == [flagged.study_instance_uid]
    assert "待匹配" in only_flagged.text and 'checked autofocus' in only_flagged.text
    assert row_uids(client.get("/imaging?modality=MR").text) == []
    bad = client.get("/imaging?date_from=yesterday")
    assert bad.status_code == 422 and "日期格式" in bad.text


def test_link_a_flagged_study_from_the_page(client, db: Session, world: ViewingWorld) -> None:  # noqa: ANN001
    flagged = ingest_series(db, organisation_id=world.site.township.id, patient_id="DS-77",
                            patient_name="WANG^XY", count=1)
    uid = flagged.study_instance_uid
    token = login(client, "dongshan_doc")

    form_page = client.get(f"/imaging/studies/{uid}/link")
    assert form_page.status_code == 200
    assert 'id="dicom-name">WANG XY<' in form_page.text and "DS-77" in form_page.text
    found = client.get(f"/imaging/studies/{uid}/link", params={"q": "王秀英"})
    assert f'id="choose-patient-{world.patient.id}"' in found.text

    missing = client.post(f"/imaging/studies/{uid}/link", data={"csrf_token": token, "q": "王秀英"})
    assert missing.status_code == 422 and "请先选择患者" in missing.text
    forged = client.post(f"/imaging/studies/{uid}/link", data={"csrf_token": "x", "patient_id": world.patient.id})
    assert forged.status_code == 403

    done = client.post(f"/imaging/studies/{uid}/link", follow_redirects=False,
                       data={"csrf_token": token, "patient_id": str(world.patient.id), "note": "电话核对"})
    assert done.status_code == 303 and done.headers["location"] == f"/imaging?linked={uid}"
    db.expire_all()
    study = db.execute(select(ImagingStudy).where(ImagingStudy.study_instance_uid == uid)).scalar_one()
    assert study.patient_match == PatientMatch.MANUAL and study.patient_id == world.patient.id
    listed = client.get(done.headers["location"])
    assert 'id="linked-notice"' in listed.text and "人工关联" in listed.text

    again = client.post(f"/imaging/studies/{uid}/link", data={"csrf_token": token, "patient_id": world.patient.id})
    assert again.status_code == 409 and "已关联患者" in again.text

    # Another township's doctor gets the error page, not the form.
    other = ingest_series(db, organisation_id=world.site.township.id, patient_id="DS-78", patient_name="LI^SI",
                          count=1)
    other_token = login(client, "xihe_doc")
    refused = client.post(f"/imaging/studies/{other.study_instance_uid}/link",
                          data={"csrf_token": other_token, "patient_id": world.patient.id},
                          headers={"Accept": "text/html"})
    assert refused.status_code == 403 and 'class="error-page"' in refused.text


def test_viewer_page_carries_the_first_frame_in_its_html(client, db: Session, world: ViewingWorld) -> None:  # noqa: ANN001
    study = ingest_series(db, organisation_id=world.site.township.id, patient_id=world.resident_id,
                          instance_numbers=[2, 1, 3])
    first_sop = db.execute(select(ImagingStudy).where(ImagingStudy.id == study.id)).scalar_one()
    login(client, "dongshan_doc")
    detail = client.get(f"/api/v1/imaging/studies/{first_sop.study_instance_uid}").json()
    series = detail["series"][0]
    first_url = (f"/dicomweb/studies/{study.study_instance_uid}/series/{series['series_instance_uid']}"
                 f"/instances/{series['instances'][0]['sop_instance_uid']}/frames/1/rendered")
    assert series["instances"][0]["instance_number"] == 1

    page = client.get(f"/imaging/studies/{study.study_instance_uid}/viewer")

    assert page.status_code == 200
    text = html.unescape(page.text)
    assert f'<link rel="preload" as="image" href="{first_url}"' in text
    assert re.search(rf'<img class="hv-first" id="hv-first" src="{re.escape(first_url)}"', text)
    assert '<script src="/static/viewer.js" defer></script>' in text
    assert "1 / 3" in text and "王*英" in text and "肺窗" in text and 'data-center="-600"' in text
    request = db.get(ConsultRequest, study.consult_request_id)
    assert f'id="hv-consult" href="/teleconsult/{request.id}"' in text
    # The first frame itself comes from H2's rendering route, as a PNG.
    image = client.get(first_url)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG")
    assert client.get("/static/viewer.js").status_code == 200
    assert client.get("/static/viewer.css").status_code == 200

    login(client, "xihe_doc")
    refused = client.get(f"/imaging/studies/{study.study_instance_uid}/viewer")
    assert refused.status_code == 403 and "hv-first" not in refused.text
    assert client.get("/imaging/studies/1.2.3.4/viewer").status_code == 404


def test_pages_need_a_signed_in_user(client) -> None:  # noqa: ANN001
    response = client.get("/imaging", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/login")
