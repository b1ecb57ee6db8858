"""DICOMweb as a viewer or a gateway uses it: STOW-RS uploads, QIDO-RS searches, WADO-RS retrieval, frames
and rendered images, with the platform's tokens, need-to-know and bad input on purpose."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from datetime import date

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import healthrelay.models  # noqa: F401
from healthrelay.accounts.models import Role, User
from healthrelay.audit.models import AuditEvent
from healthrelay.directory.models import Organisation, OrgKind, OrgLevel
from healthrelay.imaging.models import ImagingInstance, ImagingStudy, PatientMatch
from healthrelay.patients.identity import make_resident_id
from healthrelay.patients.models import IdentifierType, PatientIdentifier, PatientRegistration, Sex
from healthrelay.teleconsult.models import ConsultKind, ReadingCentre, RoutingRule
from tests import factories as f
from tests.imaging.conftest import dicom_bytes, make_dataset, to_bytes

STOW_TYPE = 'multipart/related; type="application/dicom"; boundary={b}'


@dataclass
class World:
    town: Organisation
    county: Organisation
    other_town: Organisation
    doctor: User  # township clinician who uploads
    reader: User  # the county imaging centre's reader
    outsider: User  # a clinician at another township


@pytest.fixture
def world(db: Session) -> World:
    county = f.organisation(db, name="测试县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL)
    town = f.organisation(db, name="东山镇卫生院")
    other_town = f.organisation(db, name="西河镇卫生院")
    centre = ReadingCentre(code="YX-CENTRE", name="县影像诊断中心", kind=ConsultKind.IMAGING, organisation_id=county.id)
    db.add(centre)
    db.flush()
    db.add(RoutingRule(modality_type="CT", from_organisation_id=town.id, centre_id=centre.id))
    w = World(town=town, county=county, other_town=other_town,
              doctor=f.user(db, organisation=town, username="town_doc"),
              reader=f.user(db, organisation=county, username="county_reader", role=Role.REMOTE_READER),
              outsider=f.user(db, organisation=other_town, username="west_doc"))
    db.commit()
    return w


def stow_body(parts: list[bytes], boundary: str = "hrBOUNDARY42", content_type: str = "application/dicom") -> bytes:
    out = b""
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + part + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def stow(client, headers: dict[str, str], parts: list[bytes], path: str = "/dicomweb/studies"):  # noqa: ANN001, ANN201
    return client.post(path, content=stow_body(parts),
                       headers={**headers, "Content-Type": STOW_TYPE.format(b="hrBOUNDARY42"),
                                "Accept": "application/dicom+json"})


def multipart_parts(response) -> list[tuple[str, bytes]]:  # noqa: ANN001
    """(part content type, body) of a multipart/related response."""
    match = re.search(r"boundary=\"?([^\";]+)\"?", response.headers["content-type"])
    assert match, response.headers["content-type"]
    marker = b"--" + match.group(1).encode()
    parts = []
    for chunk in response.content.split(marker)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.partition(b"\r\n\r\n")
        content_type = re.search(rb"Content-Type: ([^\r\n]+)", head).group(1).decode()
        parts.append((content_type, body[:-2] if body.endswith(b"\r\n") else body))
    return parts


def sequence(body: dict, tag: str) -> list[dict]:
    return body.get(tag, {}).get("Value", [])


def value(item: dict, tag: str):  # noqa: ANN201
    values = item.get(tag, {}).get("Value", [])
    return values[0] if values else None


def ct_study(n: int = 2, **changes: object) -> tuple[str, list[bytes]]:
    study_uid, series_uid = generate_uid(), generate_uid()
    files = []
    for number in range(1, n + 1):
        ds = make_dataset("CT_small.dcm", study_uid=study_uid, series_uid=series_uid, **changes)
        ds.InstanceNumber = number
        files.append(to_bytes(ds))
    return study_uid, files


def read_events(db: Session, action: str) -> list[AuditEvent]:
    db.expire_all()
    return list(db.execute(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)).scalars())


# --- STOW-RS ------------------------------------------------------------------------------------------

def test_stow_stores_every_instance_and_qido_finds_the_study(client, db: Session, world: World) -> None:  # noqa: ANN001
    token = f.bearer(client, "town_doc")
    study_uid, files = ct_study(2, patient_name="ZHANG^SAN", patient_id="MZ777", accession="ACC1")
    response = stow(client, token, files)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    body = response.json()
    assert len(sequence(body, "00081199")) == 2 and "00081198" not in body
    assert value(body, "00081190").endswith(f"/dicomweb/studies/{study_uid}")

    study = db.execute(select(ImagingStudy).where(ImagingStudy.study_instance_uid == study_uid)).scalar_one()
    assert study.number_of_instances == 2 and study.organisation_id == world.town.id
    assert {i.received_via for i in db.execute(select(ImagingInstance)).scalars()} == {"stow"}

    found = client.get("/dicomweb/studies", params={"PatientID": "MZ777"}, headers=token)
    assert found.status_code == 200 and found.headers["content-type"] == "application/dicom+json"
    (row,) = found.json()
    assert value(row, "0020000D") == study_uid
    assert value(row, "00100010") == {"Alphabetic": "ZHANG^SAN"}
    assert value(row, "00080050") == "ACC1" and value(row, "00201208") == 2
    assert row["00080061"]["Value"] == ["CT"]


def test_stow_is_idempotent_for_the_same_instance(client, db: Session, world: World) -> None:  # noqa: ANN001
    token = f.bearer(client, "town_doc")
    study_uid, files = ct_study(1)
    assert stow(client, token, files).status_code == 200
    again = stow(client, token, files)
    assert again.status_code == 200 and len(sequence(again.json(), "00081199")) == 1
    assert db.scalar(select(func.count()).select_from(ImagingInstance)) == 1


def test_one_bad_part_does_not_lose_the_good_ones(client, db: Session, world: World) -> None:  # noqa: ANN001
    token = f.bearer(client, "town_doc")
    _, (good,) = ct_study(1)
    truncated = dicom_bytes("CT_small.dcm")[:5000]
    response = stow(client, token, [b"this is not a DICOM file at all" * 10, good, truncated])
    assert response.status_code == 202, response.text
    body = response.json()
    assert len(sequence(body, "00081199")) == 1
    failed = sequence(body, "00081198")
    assert [value(item, "00081197") for item in failed] == [0xC000, 0xC000]
    assert "not a DICOM" in response.headers["warning"] and "truncated" in response.headers["warning"]
    assert db.scalar(select(func.count()).select_from(ImagingInstance)) == 1
    refusals = [e for e in read_events(db, "imaging.ingest") if e.outcome == "refused"]
    assert len(refusals) == 2 and refusals[0].username == "town_doc"


def test_nothing_stored_is_a_409_with_reasons(client, db: Session, world: World) -> None:  # noqa: ANN001
    token = f.bearer(client, "town_doc")
    sr = dicom_bytes("rtplan.dcm")  # an RT plan: not a SOP class a county archive takes
    response = stow(client, token, [sr])
    assert response.status_code == 409
    (item,) = sequence(response.json(), "00081198")
    assert value(item, "00081197") == 0x0122 and value(item, "00081155")


def test_same_uid_with_other_content_is_refused_as_conflict(client, db: Session, world: World) -> None:  # noqa: ANN001
    token = f.bearer(client, "town_doc")
    ds = make_dataset("CT_small.dcm")
    assert stow(client, token, [to_bytes(ds)]).status_code == 200
    ds.PatientName = "SOMEONE^ELSE"
    response = stow(client, token, [to_bytes(ds)])
    assert response.status_code == 409
    (item,) = sequence(response.json(), "00081198")
    assert value(item, "00081197") == 0x0111 and value(item, "00081155") == ds.SOPInstanceUID


def test_stow_into_a_named_study_refuses_instances_of_another(client, db: Session, world: World) -> None:  # noqa: ANN001
    token = f.bearer(client, "town_doc")
    study_uid, (mine,) = ct_study(1)
    _, (stray,) = ct_study(1)
    response = stow(client, token, [mine, stray], path=f"/dicomweb/studies/{study_uid}")
    assert response.status_code == 202
    (item,) = sequence(response.json(), "00081198")
    assert value(item, "00081197") == 0xC409


@pytest.mark.parametrize("content_type,body,status,words", [
    ("application/json", b"{}", 415, "multipart/related"),
    ('multipart/related; type="application/dicom+json"; boundary=x', b"--x--\r\n", 415, "application/dicom"),
    ('multipart/related; type="application/dicom"', b"--x--\r\n", 400, "boundary"),
    ('multipart/related; type="application/dicom"; boundary=x', b"", 400, "truncated"),
    ('multipart/related; type="application/dicom"; boundary=x', b"--x--\r\n", 400, "no parts"),
    ('multipart/related; type="application/dicom"; boundary=x', b"garbage without any boundary", 400, ""),
])
def test_a_bad_multipart_body_is_refused_naming_the_problem(client, world: World, content_type: str, body: bytes,  # noqa: ANN001
                                                             status: int, words: str) -> None:
    token = f.bearer(client, "town_doc")
    response = client.post("/dicomweb/studies", content=body, headers={**token, "Content-Type": content_type})
    assert response.status_code == status, response.text
    assert words in response.json()["message"]


def test_a_body_cut_off_mid_part_stores_nothing(client, db: Session, world: World) -> None:  # noqa: ANN001
    token = f.bearer(client, "town_doc")
    _, files = ct_study(2)
    body = stow_body(files)
    response = client.post("/dicomweb/studies", content=body[: len(body) - 400],
                           headers={**token, "Content-Type": STOW_TYPE.format(b="hrBOUNDARY42")})
    assert response.status_code == 400 and "truncated" in response.json()["message"]
    assert db.scalar(select(func.count()).select_from(ImagingInstance)) == 0


def test_a_part_of_another_media_type_fails_alone(client, db: Session, world: World) -> None:  # noqa: ANN001
    token = f.bearer(client, "town_doc")
    _, (good,) = ct_study(1)
    boundary = "hrBOUNDARY42"
    body = (f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n".encode()
            + f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + good
            + f"\r\n--{boundary}--\r\n".encode())
    response = client.post("/dicomweb/studies", content=body,
                           headers={**token, "Content-Type": STOW_TYPE.format(b=boundary)})
    assert response.status_code == 202
    assert "application/json" in response.headers["warning"]


def test_stow_needs_a_signed_in_member_of_staff(client, db: Session, world: World) -> None:  # noqa: ANN001
    _, files = ct_study(1)
    assert stow(client, {}, files).status_code == 401
    bureau = f.user(db, role=Role.HEALTH_BUREAU, username="bureau", organisation=None)
    patient = f.patient(db)
    f.user(db, role=Role.PATIENT, username="resident", patient=patient)
    db.commit()
    assert stow(client, f.bearer(client, bureau.username), files).status_code == 403
    assert stow(client, f.bearer(client, "resident"), files).status_code == 403
    assert db.scalar(select(func.count()).select_from(ImagingInstance)) == 0


def test_a_browser_session_uploads_only_with_the_csrf_header(client, db: Session, world: World) -> None:  # noqa: ANN001
    from tests.patients.conftest import login

    token = login(client, "town_doc")
    _, files = ct_study(1)
    headers = {"Content-Type": STOW_TYPE.format(b="hrBOUNDARY42")}
    refused = client.post("/dicomweb/studies", content=stow_body(files), headers=headers)
    assert refused.status_code == 403 and refused.json()["code"] == "csrf_failed"
    ok = client.post("/dicomweb/studies", content=stow_body(files), headers={**headers, "X-CSRF-Token": token})
    assert ok.status_code == 200, ok.text
    # Reading with the session cookie needs no token.
    assert client.get("/dicomweb/studies").status_code == 200


# --- QIDO-RS --------------------------------------------------------------------------------------------

def _upload_three(client, token) -> list[str]:  # noqa: ANN001
    uids = []
    for name, pid, day, acc in (("WANG^XIAOMING", "P1", "20260101", "A1"), ("WANG^DAHAI", "P2", "20260315", "A2"),
                                ("LI^SI", "P3", "20261120", "A3")):
        uid, files = ct_study(1, patient_name=name, patient_id=pid, accession=acc)
        ds = pydicom.dcmread(io.BytesIO(files[0]))
        ds.StudyDate = day
        assert stow(client, token, [to_bytes(ds)]).status_code == 200
        uids.append(uid)
    return uids


@pytest.mark.parametrize("params,expected", [
    ({"PatientName": "wang*"}, [0, 1]),
    ({"PatientName": "*dahai"}, [1]),
    ({"PatientName": "WANG^XIAOMING"}, [0]),
    ({"00100020": "P3"}, [2]),
    ({"PatientID": "P?"}, [0, 1, 2]),
    ({"StudyDate": "20260101-20260331"}, [0, 1]),
    ({"StudyDate": "20260301-"}, [1, 2]),
    ({"StudyDate": "-20260101"}, [0]),
    ({"StudyDate": "20261120"}, [2]),
    ({"AccessionNumber": "A2"}, [1]),
    ({"ModalitiesInStudy": "CT"}, [0, 1, 2]),
    ({"ModalitiesInStudy": "MR"}, []),
])
def test_qido_matching_keys(client, world: World, params: dict, expected: list[int]) -> None:  # noqa: ANN001
    token = f.bearer(client, "town_doc")
    uids = _upload_three(client, token)
    response = client.get("/dicomweb/studies", params=params, headers=token)
    assert response.status_code == 200, response.text
    assert sorted(value(r, "0020000D") for r in response.json()) == sorted(uids[i] for i in expected)


def test_qido_study_uid_list_limit_offset_and_warnings(client, world: World) -> None:  # noqa: ANN001
    token = f.bearer(client, "town_doc")
    uids = _upload_three(client, token)
    by_uid = client.get("/dicomweb/studies", params={"StudyInstanceUID": f"{uids[0]},{uids[2]}"}, headers=token)
    assert {value(r, "0020000D") for r in by_uid.json()} == {uids[0], uids[2]}
    newest = client.get("/dicomweb/studies", params={"limit": 1}, headers=token)
    assert [value(r, "0020000D") for r in newest.json()] == [uids[2]]
    assert "limit" in newest.headers["warning"]
    second = client.get("/dicomweb/studies", params={"limit": 1, "offset": 1}, headers=token)
    assert [value(r, "0020000D") for r in second.json()] == [uids[1]]
    odd = client.get("/dicomweb/studies", params={"PatientWeight": "70", "includefield": "all"}, headers=token)
    assert odd.status_code == 200 and len(odd.json()) == 3 and "PatientWeight" in odd.headers["warning"]
    sneaky = client.get("/dicomweb/studies", params={"X\r\nSet-Cookie: a": "1"}, headers=token)
    assert sneaky.status_code == 200 and "set-cookie" not in sneaky.headers
    for bad in ({"StudyDate": "2026-13"}, {"limit": "-1"}, {"offset": "x"}):
        assert client.get("/dicomweb/studies", params=bad, headers=token).status_code == 400


def test_series_and_instance_searches(client, world: World) -> None:  # noqa: ANN001
    token = f.bearer(client, "town_doc")
    study_uid, files = ct_study(3)
    assert stow(client, token, files).status_code == 200
    (series,) = client.get(f"/dicomweb/studies/{study_uid}/series", headers=token).json()
    series_uid = value(series, "0020000E")
    assert value(series, "00080060") == "CT" and value(series, "00201209") == 3
    instances = client.get(f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances", headers=token).json()
    assert [value(i, "00200013") for i in instances] == [1, 2, 3]
    first = instances[0]
    assert value(first, "00280010") == 128 and value(first, "00281052") == -1024
    assert value(first, "00081190").endswith(f"/series/{series_uid}/instances/{value(first, '00080018')}")
    one = client.get(f"/dicomweb/studies/{study_uid}/instances", params={"InstanceNumber": 2}, headers=token).json()
    assert [value(i, "00200013") for i in one] == [2]
    everywhere = client.get("/dicomweb/series", params={"Modality": "CT"}, headers=token).json()
    assert [value(s, "0020000E") for s in everywhere] == [series_uid]
    assert len(client.get("/dicomweb/instances", params={"SOPInstanceUID": value(first, "00080018")},
                          headers=token).json()) == 1
    assert client.get(f"/dicomweb/studies/{study_uid}/series/1.2.3/instances", headers=token).status_code == 404


def test_searches_see_only_studies_the_user_may_read(client, db: Session, world: World) -> None:  # noqa: ANN001
    town = f.bearer(client, "town_doc")
    study_uid, files = ct_study(1)
    assert stow(client, town, files).status_code == 200
    # The routing rule sent the study to the county centre: its reader finds it, another township does not.
    study = db.execute(select(ImagingStudy).where(ImagingStudy.study_instance_uid == study_uid)).scalar_one()
    assert study.consult_request_id is not None
    reader = f.bearer(client, "county_reader")
    assert [value(r, "0020000D") for r in client.get("/dicomweb/studies", headers=reader).json()] == [study_uid]
    outsider = f.bearer(client, "west_doc")
    assert client.get("/dicomweb/studies", headers=outsider).json() == []
    assert client.get("/dicomweb/series", headers=outsider).json() == []
    assert client.get("/dicomweb/instances", headers=outsider).json() == []
    assert client.get(f"/dicomweb/studies/{study_uid}/series", headers=outsider).status_code == 403
    assert client.get("/dicomweb/studies").status_code == 401
    searches = read_events(db, "imaging.search")
    assert searches and searches[-1].username == "west_doc"


# --- WADO-RS ----------------------------------------------------------------------------------------------

def test_retrieve_study_series_and_instance_bit_identical(client, world: World) -> None:  # noqa: ANN001
    token = f.bearer(client, "town_doc")
    study_uid, files = ct_study(2)
    assert stow(client, token, files).status_code == 200
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    response = client.get(f"/dicomweb/studies/{study_uid}", headers={**token, **accept})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    parts = multipart_parts(response)
    assert [body for _, body in parts] == files
    assert parts[0][0] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"

    ds = pydicom.dcmread(io.BytesIO(files[1]))
    series = client.get(f"/dicomweb/studies/{study_uid}/series/{ds.SeriesInstanceUID}", headers=token)
    assert [b for _, b in multipart_parts(series)] == files
    one = client.get(f"/dicomweb/studies/{study_uid}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
                     headers=token)
    assert [b for _, b in multipart_parts(one)] == [files[1]]


def test_unknown_and_unreadable_studies(client, db: Session, world: World) -> None:  # noqa: ANN001
    token = f.bearer(client, "town_doc")
    study_uid, files = ct_study(1)
    assert stow(client, token, files).status_code == 200
    assert client.get("/dicomweb/studies/1.2.3.4.5", headers=token).status_code == 404
    assert client.get("/dicomweb/studies/../../etc", headers=token).status_code == 404
    assert client.get(f"/dicomweb/studies/{study_uid}/series/9.9.9", headers=token).status_code == 404
    outsider = f.bearer(client, "west_doc")
    for path in ("", "/metadata"):
        assert client.get(f"/dicomweb/studies/{study_uid}{path}", headers=outsider).status_code == 403
    denied = [e for e in read_events(db, "imaging.read") if e.outcome == "denied"]
    assert denied and denied[-1].username == "west_doc" and denied[-1].resource == f"imaging_study:{study_uid}"


def test_transcoding_to_explicit_little_endian_on_request(client, world: World) -> None:  # noqa: ANN001
    token = f.bearer(client, "town_doc")
    data = dicom_bytes("MR_small_RLE.dcm")
    ds = pydicom.dcmread(io.BytesIO(data))
    assert stow(client, token, [data]).status_code == 200
    url = f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    explicit = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
    response = client.get(url, headers={**token, "Accept": explicit})
    ((content_type, body),) = multipart_parts(response)
    assert content_type.endswith("transfer-syntax=1.2.840.10008.1.2.1")
    out = pydicom.dcmread(io.BytesIO(body))
    assert out.SOPInstanceUID == ds.SOPInstanceUID and out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.array_equal(out.pixel_array, ds.pixel_array)
    jpeg = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    assert client.get(url, headers={**token, "Accept": jpeg}).status_code == 406


def test_metadata_is_dicom_json_without_pixels(client, world: World) -> None:  # noqa: ANN001
    token = f.bearer(client, "town_doc")
    study_uid, files = ct_study(2, patient_name="王^小明", charset="ISO_IR 192")
    assert stow(client, token, files).status_code == 200
    response = client.get(f"/dicomweb/studies/{study_uid}/metadata", headers=token)
    assert response.status_code == 200 and response.headers["content-type"] == "application/dicom+json"
    items = response.json()
    assert len(items) == 2
    first = items[0]
    assert value(first, "00100010") == {"Alphabetic": "王^小明"}
    assert value(first, "00280010") == 128
    pixel = first["7FE00010"]
    assert "Value" not in pixel and "InlineBinary" not in pixel and pixel["BulkDataURI"].endswith("/frames/1")
    ds = pydicom.dcmread(io.BytesIO(files[0]))
    single = client.get(f"/dicomweb/studies/{study_uid}/series/{ds.SeriesInstanceUID}/instances/"
                        f"{ds.SOPInstanceUID}/metadata", headers=token).json()
    assert [value(i, "00080018") for i in single] == [ds.SOPInstanceUID]
    # Nothing large inline: binary values above 1 KB are referenced, never embedded.
    inline = [e["InlineBinary"] for item in items for e in item.values() if "InlineBinary" in e]
    assert all(len(b) <= 1368 for b in inline) and len(response.content) < 16_000 * len(items)


# --- frames and rendered images ---------------------------------------------------------------------------

def _instance_url(data: bytes) -> str:
    ds = pydicom.dcmread(io.BytesIO(data))
    return f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


@pytest.mark.parametrize("sample", ["CT_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                    "SC_rgb_rle_2frame.dcm"])
def test_frames_are_uncompressed_pixel_bytes(client, world: World, sample: str) -> None:  # noqa: ANN001
    token = f.bearer(client, "town_doc")
    data = dicom_bytes(sample)
    assert stow(client, token, [data]).status_code == 200
    ds = pydicom.dcmread(io.BytesIO(data))
    frames = int(ds.get("NumberOfFrames") or 1)
    wanted = ",".join(str(n) for n in range(1, frames + 1))
    response = client.get(f"{_instance_url(data)}/frames/{wanted}", headers={
        **token, "Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'})
    assert response.status_code == 200, response.text
    parts = multipart_parts(response)
    expected = ds.pixel_array if frames > 1 else ds.pixel_array[np.newaxis]
    assert len(parts) == frames
    for (content_type, body), arr in zip(parts, expected, strict=True):
        assert content_type.startswith("application/octet-stream")
        assert body == arr.astype(arr.dtype.newbyteorder("<")).tobytes()


def test_frame_requests_that_cannot_be_met(client, world: World) -> None:  # noqa: ANN001
    token = f.bearer(client, "town_doc")
    data = dicom_bytes("CT_small.dcm")
    assert stow(client, token, [data]).status_code == 200
    url = _instance_url(data)
    assert client.get(f"{url}/frames/2", headers=token).status_code == 404
    assert client.get(f"{url}/frames/0", headers=token).status_code == 400
    assert client.get(f"{url}/frames/a,b", headers=token).status_code == 400
    assert client.get(f"{url}/frames/1", headers={**token, "Accept": "image/gif"}).status_code == 406
    assert client.get(f"{url}/frames/1/rendered", headers={**token, "Accept": "image/gif"}).status_code == 406
    assert client.get(f"{url}/frames/3/rendered", headers=token).status_code == 404
    bad_window = client.get(f"{url}/frames/1/rendered", params={"window": "40"}, headers=token)
    assert bad_window.status_code == 422 and "window" in bad_window.json()["message"]


def test_rendered_frames_png_jpeg_window_and_caching(client, db: Session, world: World) -> None:  # noqa: ANN001
    token = f.bearer(client, "town_doc")
    data = dicom_bytes("CT_small.dcm")
    assert stow(client, token, [data]).status_code == 200
    url = f"{_instance_url(data)}/frames/1/rendered"
    png = client.get(url, headers=token)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    assert image.size == (128, 128) and image.mode == "L"
    jpeg = client.get(url, headers={**token, "Accept": "image/jpeg"})
    assert jpeg.headers["content-type"] == "image/jpeg" and jpeg.content[:2] == b"\xff\xd8"
    browser = client.get(url, headers={**token, "Accept": "image/avif,image/webp,image/*,*/*;q=0.8"})
    assert browser.headers["content-type"] == "image/png"

    # A bone window shows soft tissue darker than a soft-tissue window does.
    bone = np.asarray(Image.open(io.BytesIO(client.get(url, params={"window": "300,1500"}, headers=token).content)))
    soft = np.asarray(Image.open(io.BytesIO(client.get(url, params={"window": "40,400"}, headers=token).content)))
    assert bone.shape == soft.shape and not np.array_equal(bone, soft)

    padded = client.get(url, params={"window": "40\r\n,400"}, headers=token)
    assert padded.status_code == 200 and "\n" not in padded.headers["etag"]
    again = client.get(url, headers={**token, "If-None-Match": png.headers["etag"]})
    assert again.status_code == 304 and not again.content
    assert "private" in png.headers["cache-control"]

    instance_rendered = client.get(f"{_instance_url(data)}/rendered", headers=token)
    assert instance_rendered.content == png.content
    # Scrolling and re-windowing: one audited read for the study, not one per image.
    reads = [e for e in read_events(db, "imaging.read") if e.outcome == "ok"]
    assert len(reads) == 1 and reads[0].username == "town_doc"


def test_rendered_frames_of_someone_elses_study_are_refused(client, world: World) -> None:  # noqa: ANN001
    data = dicom_bytes("CT_small.dcm")
    assert stow(client, f.bearer(client, "town_doc"), [data]).status_code == 200
    outsider = f.bearer(client, "west_doc")
    assert client.get(f"{_instance_url(data)}/frames/1/rendered", headers=outsider).status_code == 403
    assert client.get(f"{_instance_url(data)}/frames/1", headers=outsider).status_code == 403
    assert client.get(f"{_instance_url(data)}/frames/1/rendered").status_code == 401


# --- need-to-know on matched studies ----------------------------------------------------------------------

def test_a_matched_study_follows_the_patients_care_relationships(client, db: Session, world: World) -> None:  # noqa: ANN001
    patient = f.patient(db, name="王秀英", sex=Sex.FEMALE, birth_date=date(1956, 3, 8))
    number = make_resident_id("421122", date(1956, 3, 8), 7, "F")
    db.add(PatientIdentifier(patient_id=patient.id, type=IdentifierType.RESIDENT_ID, value=number))
    # Registered at a third township, whose doctor has never seen the study.
    family_town = f.organisation(db, name="南岭镇卫生院")
    db.add(PatientRegistration(patient_id=patient.id, organisation_id=family_town.id))
    f.user(db, organisation=family_town, username="family_doc")
    db.commit()
    data = dicom_bytes("CT_small.dcm", patient_id=number)
    assert stow(client, f.bearer(client, "town_doc"), [data]).status_code == 200
    study = db.execute(select(ImagingStudy)).scalar_one()
    assert study.patient_id == patient.id and study.patient_match == PatientMatch.MATCHED

    family = f.bearer(client, "family_doc")
    assert [value(r, "0020000D") for r in client.get("/dicomweb/studies", headers=family).json()] == \
        [study.study_instance_uid]
    assert client.get(f"/dicomweb/studies/{study.study_instance_uid}/metadata", headers=family).status_code == 200
    reads = [e for e in read_events(db, "imaging.read") if e.username == "family_doc"]
    assert reads[-1].patient_id == patient.id and reads[-1].purpose == "registered_here"

    refused = client.get(f"/dicomweb/studies/{study.study_instance_uid}", headers=f.bearer(client, "west_doc"))
    assert refused.status_code == 403 and refused.json()["code"] == "no_care_relationship"
    assert refused.json()["patient_id"] == patient.id


def test_reading_centre_reads_what_it_was_sent(client, db: Session, world: World) -> None:  # noqa: ANN001
    data = dicom_bytes("CT_small.dcm")
    assert stow(client, f.bearer(client, "town_doc"), [data]).status_code == 200
    reader = f.bearer(client, "county_reader")
    png = client.get(f"{_instance_url(data)}/frames/1/rendered", headers=reader)
    assert png.status_code == 200
    reads = [e for e in read_events(db, "imaging.read") if e.username == "county_reader"]
    assert reads and reads[0].purpose == "consult_party"


def test_large_binary_values_are_bulk_data_uris(client, world: World) -> None:  # noqa: ANN001
    token = f.bearer(client, "town_doc")
    ds = make_dataset("CT_small.dcm")
    blob = bytes(range(256)) * 16  # 4 KB in a private OB element
    ds.add_new(0x00291010, "OB", blob)
    ds.add_new(0x00290010, "LO", "HEALTHRELAY TEST")
    assert stow(client, token, [to_bytes(ds)]).status_code == 200
    url = (f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}")
    (meta,) = client.get(f"{url}/metadata", headers=token).json()
    uri = meta["00291010"]["BulkDataURI"]
    assert uri.endswith(f"{url}/bulk/00291010") and "InlineBinary" not in meta["00291010"]
    bulk = client.get(uri.split("testserver", 1)[1], headers=token)
    assert bulk.status_code == 200 and multipart_parts(bulk) == [("application/octet-stream", blob)]
    assert client.get(f"{url}/bulk/00100010", headers=token).status_code == 404  # not a binary value
    assert client.get(f"{url}/bulk/zz", headers=token).status_code == 404


@pytest.fixture
def small_stow_client(monkeypatch: pytest.MonkeyPatch, database_url: str):  # noqa: ANN201
    """The app with a 100 KB STOW limit."""
    from fastapi.testclient import TestClient

    from healthrelay.app import create_app
    from healthrelay.core.config import get_settings

    monkeypatch.setenv("HEALTHRELAY_STOW_MAX_BYTES", str(100 * 1024))
    get_settings.cache_clear()
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c
    get_settings.cache_clear()


def test_an_upload_over_the_stow_limit_is_refused_whole(small_stow_client, db: Session, world: World) -> None:  # noqa: ANN001
    token = f.bearer(small_stow_client, "town_doc")
    _, files = ct_study(4)  # about 160 KB
    body = stow_body(files)
    headers = {**token, "Content-Type": STOW_TYPE.format(b="hrBOUNDARY42")}
    assert small_stow_client.post("/dicomweb/studies", content=body, headers=headers).status_code == 413

    def chunks():  # noqa: ANN202 - no Content-Length: the limit is counted as the body streams in
        for start in range(0, len(body), 16 * 1024):
            yield body[start:start + 16 * 1024]

    assert small_stow_client.post("/dicomweb/studies", content=chunks(), headers=headers).status_code == 413
    assert db.scalar(select(func.count()).select_from(ImagingInstance)) == 0
    assert stow(small_stow_client, token, files[:1]).status_code == 200
