"""The tele-ECG JSON API: upload, metadata, samples, measurements, the SVG, linking, the vocabulary."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.ecg import formats
from healthrelay.ecg.models import EcgRecording
from healthrelay.teleconsult.models import ConsultRequest
from tests import factories as f
from tests.ecg.conftest import aecg, csv, dicom, flat, tracing
from tests.teleconsult.conftest import TeleWorld


def _upload(client, headers: dict[str, str], files: dict[str, bytes], **form: str):  # noqa: ANN001, ANN202
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files.items()]
    return client.post("/api/v1/ecg/recordings", headers=headers, files=parts, data=form)


def _count(db: Session, model: type) -> int:
    db.rollback()
    return db.execute(select(func.count()).select_from(model)).scalar_one()


def test_upload_then_read_everything_the_viewer_needs(client, db: Session, tele: TeleWorld) -> None:  # noqa: ANN001
    town = f.bearer(client, "town_doc")
    tr = tracing(heart_rate=80)
    files = dicom(tr)
    response = _upload(client, town, files, priority="emergency", clinical_question="胸痛")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["patient_id"] == tele.patient.id and body["patient_match"] == "matched"
    assert body["viewer_url"] == f"/ecg/recordings/{body['id']}" and body["quality_flags"] == []
    request = db.get(ConsultRequest, body["consult_request_id"])
    assert request is not None and request.priority == "emergency"

    reader = f.bearer(client, "yx_senior")
    meta = client.get(f"/api/v1/ecg/recordings/{body['id']}", headers=reader)
    assert meta.status_code == 200 and meta.json()["lead_names"][0] == "I"
    samples = client.get(f"/api/v1/ecg/recordings/{body['id']}/samples", headers=reader).json()
    assert samples["units"] == "uV" and samples["sample_rate"] == 500 and len(samples["leads"]) == 12
    original = formats.read_ecg(files).leads["II"]
    assert abs(samples["leads"]["II"][1234] - round(original[1234] * 1000)) <= 1
    measured = client.get(f"/api/v1/ecg/recordings/{body['id']}/measurements", headers=reader).json()
    assert measured["preliminary"] is True and measured["measurable"] is True
    assert abs(measured["measurements"]["heart_rate_bpm"] - 80) <= 3
    svg = client.get(f"/api/v1/ecg/recordings/{body['id']}/tracing.svg", headers=reader)
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.text.startswith("<svg") and 'data-speed="25"' in svg.text

    again = _upload(client, town, files)
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    assert _count(db, EcgRecording) == 1


def test_csv_aecg_and_wfdb_pairs_are_accepted(client, tele: TeleWorld) -> None:  # noqa: ANN001
    town = f.bearer(client, "town_doc")
    formats_seen = []
    for seed, files in ((2, csv(tracing(seed=2))), (3, aecg(tracing(seed=3))),
                        (4, formats.to_wfdb(tracing(seed=4), record="rec4"))):
        response = _upload(client, town, files, patient_id=str(tele.patient.id))
        assert response.status_code == 201, (seed, response.text)
        formats_seen.append(response.json()["source_format"])
    assert formats_seen == ["csv", "aecg", "wfdb"]


def test_bad_files_get_a_4xx_naming_the_problem_and_nothing_is_written(client, db: Session,  # noqa: ANN001
                                                                        tele: TeleWorld) -> None:
    town = f.bearer(client, "town_doc")
    garbage = _upload(client, town, {"ecg.dcm": b"\x00" * 200})
    assert garbage.status_code == 422 and garbage.json()["code"] == "ecg_unreadable"
    header_only = _upload(client, town, {"r.hea": formats.to_wfdb(tracing(), record="r")["r.hea"]})
    assert header_only.status_code == 422 and ".dat" in header_only.json()["message"]
    bad_priority = _upload(client, town, csv(tracing()), priority="whenever")
    assert bad_priority.status_code == 422
    assert [e["field"] for e in bad_priority.json()["field_errors"]] == ["priority"]
    assert _count(db, EcgRecording) == 0 and _count(db, ConsultRequest) == 0


def test_a_flagged_upload_says_so_in_its_answer(client, tele: TeleWorld) -> None:  # noqa: ANN001
    town = f.bearer(client, "town_doc")
    body = _upload(client, town, csv(flat(tracing(), "II")), patient_id=str(tele.patient.id)).json()
    assert body["measurable"] is False and body["quality_flags"][0]["code"] == "flat_line"
    measured = client.get(f"/api/v1/ecg/recordings/{body['id']}/measurements", headers=town).json()
    assert measured["measurements"] == {} and "II" in measured["measure_note"]


def test_only_the_two_parties_read_a_recording(client, tele: TeleWorld) -> None:  # noqa: ANN001
    body = _upload(client, f.bearer(client, "town_doc"), csv(tracing())).json()
    outsider = client.get(f"/api/v1/ecg/recordings/{body['id']}", headers=f.bearer(client, "outsider_doc"))
    assert outsider.status_code == 403
    other_town = client.get(f"/api/v1/ecg/recordings/{body['id']}/samples", headers=f.bearer(client, "town_b_doc"))
    assert other_town.status_code == 403
    missing = client.get("/api/v1/ecg/recordings/999", headers=f.bearer(client, "town_doc"))
    assert missing.status_code == 404


def test_display_settings_are_checked(client, tele: TeleWorld) -> None:  # noqa: ANN001
    town = f.bearer(client, "town_doc")
    body = _upload(client, town, csv(tracing())).json()
    bad = client.get(f"/api/v1/ecg/recordings/{body['id']}/tracing.svg?speed=30&gain=7", headers=town)
    assert bad.status_code == 422 and {e["field"] for e in bad.json()["field_errors"]} == {"speed", "gain"}
    fast = client.get(f"/api/v1/ecg/recordings/{body['id']}/tracing.svg?speed=50", headers=town)
    assert fast.status_code == 200 and 'data-speed="50"' in fast.text


def test_an_unmatched_upload_is_linked_by_hand(client, db: Session, tele: TeleWorld) -> None:  # noqa: ANN001
    from healthrelay.ecg.formats import Demographics

    town = f.bearer(client, "town_doc")
    body = _upload(client, town, csv(tracing(demographics=Demographics(name="无名")))).json()
    assert body["patient_id"] is None and body["patient_match"] == "unmatched"
    linked = client.post(f"/api/v1/ecg/recordings/{body['id']}/patient", headers=town,
                         json={"patient_id": tele.patient.id, "reason": "核对身份证"})
    assert linked.status_code == 200 and linked.json()["patient_match"] == "manual"
    request = db.get(ConsultRequest, body["consult_request_id"])
    assert request is not None and request.patient_id == tele.patient.id


def test_browser_sessions_need_the_csrf_header_to_upload(client, tele: TeleWorld) -> None:  # noqa: ANN001
    from tests.teleconsult.test_pages import login

    token = login(client, "town_doc")
    refused = _upload(client, {}, csv(tracing()))
    assert refused.status_code == 403 and refused.json()["code"] == "csrf_failed"
    accepted = _upload(client, {"X-CSRF-Token": token}, csv(tracing()))
    assert accepted.status_code == 201


def test_the_vocabulary_is_served(client, tele: TeleWorld) -> None:  # noqa: ANN001
    codes = client.get("/api/v1/ecg/codes", headers=f.bearer(client, "yx_senior")).json()
    stemi = next(c for c in codes if c["code"] == "stemi_inferior")
    assert stemi["critical"] is True and stemi["territory"] == "inferior" and stemi["group"] == "conclusion"


def test_a_long_high_rate_recording_larger_than_the_general_body_limit_is_accepted(  # noqa: ANN001
        client, tele: TeleWorld) -> None:
    """A 40 s aECG at 2,000 Hz is about 2.5 MB of XML: uploads get the attachment limit, not the 2 MB one."""
    from healthrelay.core.config import get_settings
    from healthrelay.ecg.synthetic import synthetic_12_lead

    long = synthetic_12_lead(duration_s=40, sample_rate=2000, seed=9, noise_mv=0.01,
                             demographics=tracing().demographics, acquired_at=tracing().acquired_at)
    files = aecg(long)
    assert len(files["ecg.xml"]) > get_settings().max_body_bytes
    response = _upload(client, f.bearer(client, "town_doc"), files, patient_id=str(tele.patient.id))
    assert response.status_code == 201, response.text[:300]
    assert response.json()["sample_rate"] == 2000
