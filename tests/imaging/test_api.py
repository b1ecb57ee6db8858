"""The imaging JSON API as the viewer and the studies list use it: one study with its series, instances in
viewing order and priors; who may read it (and the audit trail of refusals); the list; linking by hand."""

from __future__ import annotations

from datetime import date

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.audit.models import AuditEvent
from healthrelay.imaging.models import ImagingStudy, PatientMatch
from healthrelay.patients.identity import make_resident_id
from healthrelay.patients.models import IdentifierType, PatientIdentifier
from healthrelay.teleconsult.models import ConsultRequest, ConsultTransition, RoutingRule
from tests import factories as f
from tests.imaging.conftest import ImagingSite
from tests.imaging.viewing_world import ViewingWorld, build, ingest_series


@pytest.fixture
def world(db: Session, imaging_site: ImagingSite) -> ViewingWorld:
    return build(db, imaging_site)


def _study(client, headers: dict[str, str], uid: str):  # noqa: ANN001, ANN202
    return client.get(f"/api/v1/imaging/studies/{uid}", headers=headers)


def _events(db: Session, action: str) -> list[AuditEvent]:
    db.expire_all()
    return list(db.execute(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)).scalars())


def test_study_has_series_instances_in_viewing_order_and_what_the_viewer_needs(
        client, db: Session, world: ViewingWorld) -> None:  # noqa: ANN001
    town = world.site.township.id
    study = ingest_series(db, organisation_id=town, patient_id=world.resident_id, instance_numbers=[3, 1, 2],
                          window=(40, 400))
    # A second series without instance numbers: ordered by slice location.
    ingest_series(db, organisation_id=town, patient_id=world.resident_id, study_uid=study.study_instance_uid,
                  instance_numbers=[None, None], series_number=3, series_description="纵隔")
    headers = f.bearer(client, "dongshan_doc")

    response = _study(client, headers, study.study_instance_uid)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["patient_match"] == "matched"
    assert body["patient"]["masked_name"] == "王*英" and body["patient"]["sex"] == "F"
    assert body["patient"]["masked_id"].startswith("421") and "*" in body["patient"]["masked_id"]
    assert "王秀英" not in response.text and world.resident_id not in response.text
    assert body["organisation"]["name"] == "东山镇卫生院"
    assert body["modality"] == "CT" and body["description"] == "胸部CT平扫" and body["study_date"] == "2026-11-20"
    # Routed to the county centre by the CT rule: the consult request is named.
    request = db.get(ConsultRequest, body["consult_request"]["id"])
    assert request is not None and body["consult_request"]["number"] == request.number
    assert [s["series_number"] for s in body["series"]] == [2, 3]
    first, second = body["series"]
    assert first["description"] == "肺 5mm" and first["modality"] == "CT"
    assert first["instance_count"] == 3 and first["frame_count"] == 3
    assert [i["instance_number"] for i in first["instances"]] == [1, 2, 3]
    inst = first["instances"][0]
    assert (inst["rows"], inst["columns"], inst["frames"]) == (128, 128, 1)
    assert inst["pixel_spacing"] == [0.661468, 0.661468]
    assert inst["window"] == {"center": 40.0, "width": 400.0}
    assert [i["slice_location"] for i in second["instances"]] == [0.0, 5.0]
    # The thumbnail is the rendered middle frame of the series.
    assert first["thumbnail_url"].endswith(f"/instances/{first['instances'][1]['sop_instance_uid']}/frames/1/rendered")
    assert body["viewer_url"] == f"/imaging/studies/{study.study_instance_uid}/viewer"
    reads = _events(db, "imaging.read")
    assert reads and reads[-1].patient_id == world.patient.id and reads[-1].outcome == "ok"


def test_priors_come_from_every_member_newest_first(client, db: Session, world: ViewingWorld) -> None:  # noqa: ANN001
    town, county = world.site.township.id, world.county.id
    older = ingest_series(db, organisation_id=county, patient_id=world.resident_id, study_date="20250102",
                          description="头颅CT", count=1)
    newer = ingest_series(db, organisation_id=town, patient_id=world.resident_id, study_date="20260301",
                          description="胸部CT复查", count=1)
    current = ingest_series(db, organisation_id=town, patient_id=world.resident_id, study_date="20261120", count=1)
    someone_else = ingest_series(db, organisation_id=town, patient_id="NOBODY-1", patient_name="LI^SI", count=1)

    body = _study(client, f.bearer(client, "dongshan_doc"), current.study_instance_uid).json()

    assert [p["study_instance_uid"] for p in body["priors"]] == [newer.study_instance_uid, older.study_instance_uid]
    assert body["priors"][1]["organisation"]["name"] == "青溪县人民医院"
    assert body["priors"][1]["description"] == "头颅CT"
    assert someone_else.study_instance_uid not in {p["study_instance_uid"] for p in body["priors"]}


def test_priors_are_withheld_from_staff_without_a_care_relationship(client, db: Session,
                                                                     world: ViewingWorld) -> None:  # noqa: ANN001
    # A resident registered at the county only; no routing rule, so no consultation links the township.
    resident = f.patient(db, name="赵德明", registered_at=world.county)
    number = make_resident_id("421122", date(1950, 1, 2), 3, "M")
    db.add(PatientIdentifier(patient_id=resident.id, type=IdentifierType.RESIDENT_ID, value=number))
    for rule in db.execute(select(RoutingRule)).scalars():
        rule.is_active = False
    db.commit()
    prior = ingest_series(db, organisation_id=world.county.id, patient_id=number, count=1, study_date="20250101")
    study = ingest_series(db, organisation_id=world.site.township.id, patient_id=number, count=1)
    assert study.consult_request_id is None and study.patient_id == resident.id
    headers = f.bearer(client, "dongshan_doc")

    body = _study(client, headers, study.study_instance_uid).json()

    # The township holds the images, so it reads them; the resident's history elsewhere stays closed.
    assert body["patient"]["masked_name"] == "赵*明"
    assert body["priors"] == [] and body["priors_withheld"] is True
    assert _study(client, headers, prior.study_instance_uid).status_code == 403
    # The county, where the resident is registered, sees the township study among the priors.
    county_doc = f.user(db, organisation=world.county, username="county_doc")
    db.commit()
    county = _study(client, f.bearer(client, county_doc.username), prior.study_instance_uid).json()
    assert [p["study_instance_uid"] for p in county["priors"]] == [study.study_instance_uid]
    assert county["priors_withheld"] is False


def test_someone_elses_study_is_refused_and_the_refusal_audited(client, db: Session,
                                                                world: ViewingWorld) -> None:  # noqa: ANN001
    study = ingest_series(db, organisation_id=world.site.township.id, patient_id=world.resident_id, count=1)
    headers = f.bearer(client, "xihe_doc")

    response = _study(client, headers, study.study_instance_uid)

    assert response.status_code == 403
    assert "series" not in response.json()
    denied = [e for e in _events(db, "imaging.read") if e.outcome == "denied"]
    assert denied and denied[-1].username == "xihe_doc" and denied[-1].patient_id == world.patient.id
    # The list does not show it either, and an unknown study is a plain 404.
    listed = client.get("/api/v1/imaging/studies", headers=headers).json()
    assert study.study_instance_uid not in {s["study_instance_uid"] for s in listed["items"]}
    assert _study(client, headers, generate_uid()).status_code == 404
    assert _study(client, headers, "not-a-uid").status_code == 422
    # Aggregate-only accounts never browse studies.
    assert client.get("/api/v1/imaging/studies", headers=f.bearer(client, "bureau")).status_code == 403


def test_unmatched_study_is_visible_to_its_organisation_and_the_centre_only(client, db: Session,
                                                                           world: ViewingWorld) -> None:  # noqa: ANN001
    study = ingest_series(db, organisation_id=world.site.township.id, patient_id="DS-0042",
                          patient_name="ZHANG^SAN", count=2)
    assert study.patient_match == PatientMatch.UNMATCHED

    town = _study(client, f.bearer(client, "dongshan_doc"), study.study_instance_uid)
    assert town.status_code == 200
    body = town.json()
    assert body["patient"] is None and body["patient_match"] == "unmatched"
    assert body["dicom_patient_name"] == "ZHANG SAN" and body["dicom_patient_id"] == "DS-0042"
    assert body["can_link_patient"] is True and body["priors"] == []
    listed = client.get("/api/v1/imaging/studies?unmatched=true",
                        headers=f.bearer(client, "dongshan_doc")).json()["items"]
    assert [s["study_instance_uid"] for s in listed] == [study.study_instance_uid]
    assert listed[0]["dicom_patient_name_masked"] == "Z*******N"

    # The county centre reads it before anyone links the patient.
    assert _study(client, f.bearer(client, "county_reader"), study.study_instance_uid).status_code == 200
    # Another township may not.
    other = _study(client, f.bearer(client, "xihe_doc"), study.study_instance_uid)
    assert other.status_code == 403
    denied = [e for e in _events(db, "imaging.read") if e.outcome == "denied"]
    assert denied[-1].username == "xihe_doc" and denied[-1].resource == f"imaging_study:{study.study_instance_uid}"


def test_list_filters_and_pages(client, db: Session, world: ViewingWorld) -> None:  # noqa: ANN001
    town = world.site.township.id
    uids = [ingest_series(db, organisation_id=town, patient_id=world.resident_id, count=1,
                          study_date=f"2026112{k}").study_instance_uid for k in range(3)]
    flagged = ingest_series(db, organisation_id=town, patient_id="X-1", patient_name="LI^SI", count=1)
    headers = f.bearer(client, "dongshan_doc")

    first = client.get("/api/v1/imaging/studies?limit=3", headers=headers).json()
    assert [s["study_instance_uid"] for s in first["items"]] == [flagged.study_instance_uid, *reversed(uids[1:])]
    assert first["next_cursor"]
    # The list read is audited with the residents it showed.
    assert world.patient.id in _events(db, "imaging.list")[-1].detail["patient_ids"]
    second = client.get("/api/v1/imaging/studies", params={"limit": 3, "cursor": first["next_cursor"]},
                        headers=headers).json()
    assert [s["study_instance_uid"] for s in second["items"]] == [uids[0]] and second["next_cursor"] is None

    by_date = client.get("/api/v1/imaging/studies", params={"date_from": "2026-11-21", "date_to": "2026-11-21"},
                         headers=headers).json()["items"]
    assert [s["study_instance_uid"] for s in by_date] == [uids[1]]
    assert client.get("/api/v1/imaging/studies?modality=MR", headers=headers).json()["items"] == []
    assert len(client.get("/api/v1/imaging/studies?modality=CT", headers=headers).json()["items"]) == 4
    other_org = client.get(f"/api/v1/imaging/studies?organisation_id={world.county.id}", headers=headers).json()
    assert other_org["items"] == []
    assert client.get("/api/v1/imaging/studies?cursor=garbage", headers=headers).status_code == 422
    assert client.get("/api/v1/imaging/studies?modality=C;T", headers=headers).status_code == 422


def test_link_a_flagged_study_by_hand(client, db: Session, world: ViewingWorld) -> None:  # noqa: ANN001
    study = ingest_series(db, organisation_id=world.site.township.id, patient_id="DS-0042",
                          patient_name="WANG^XY", count=1)
    request_id = study.consult_request_id
    assert request_id is not None and db.get(ConsultRequest, request_id).patient_id is None
    uid = study.study_instance_uid
    url = f"/api/v1/imaging/studies/{uid}/patient"

    # Another township's doctor may not; nor may anyone link a resident they have no relationship with.
    assert client.post(url, json={"patient_id": world.patient.id},
                       headers=f.bearer(client, "xihe_doc")).status_code == 403
    reader = client.post(url, json={"patient_id": world.patient.id}, headers=f.bearer(client, "county_reader"))
    assert reader.status_code == 403 and reader.json()["code"] == "no_care_relationship"
    refused = _events(db, "patient.read")[-1]
    assert (refused.username, refused.outcome, refused.patient_id) == ("county_reader", "denied", world.patient.id)
    assert client.post(url, json={"patient_id": 999999}, headers=f.bearer(client, "dongshan_doc")).status_code == 404

    headers = f.bearer(client, "dongshan_doc")
    response = client.post(url, json={"patient_id": world.patient.id, "note": "电话核对出生日期"}, headers=headers)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["patient_match"] == "manual" and body["patient"]["masked_name"] == "王*英"
    db.expire_all()
    stored = db.execute(select(ImagingStudy).where(ImagingStudy.study_instance_uid == uid)).scalar_one()
    assert stored.patient_id == world.patient.id and "电话核对出生日期" in stored.match_note
    assert db.get(ConsultRequest, request_id).patient_id == world.patient.id
    moves = db.execute(select(ConsultTransition).where(ConsultTransition.request_id == request_id,
                                                       ConsultTransition.action == "link_patient")).scalars().all()
    assert len(moves) == 1 and moves[0].detail["patient_id"] == world.patient.id
    linked = _events(db, "imaging.link_patient")
    assert len(linked) == 1 and linked[0].patient_id == world.patient.id and linked[0].username == "dongshan_doc"
    # Once linked, the centre reads it through the consultation and sees the priors; a second link is refused.
    assert _study(client, f.bearer(client, "county_reader"), uid).status_code == 200
    again = client.post(url, json={"patient_id": world.patient.id}, headers=headers)
    assert again.status_code == 409 and again.json()["code"] == "already_linked"
    assert client.post(url, json={"patient_id": "x"}, headers=headers).status_code == 422


def test_multi_frame_instances_count_every_frame(client, db: Session, world: ViewingWorld) -> None:  # noqa: ANN001
    from healthrelay.imaging import service
    from tests.imaging.conftest import dicom_bytes

    stored = service.ingest(db, data=dicom_bytes("examples_ybr_color.dcm", patient_id=world.resident_id),
                            received_via="stow", organisation_id=world.site.township.id)
    db.commit()

    body = _study(client, f.bearer(client, "dongshan_doc"), stored.study.study_instance_uid).json()

    (series,) = body["series"]
    (instance,) = series["instances"]
    assert instance["frames"] == stored.instance.number_of_frames > 1
    assert series["frame_count"] == instance["frames"]
    middle = (instance["frames"] + 1) // 2
    assert series["thumbnail_url"].endswith(f"/frames/{middle}/rendered")
    assert client.get(series["thumbnail_url"], headers=f.bearer(client, "dongshan_doc")).status_code == 200
