"""A real DICOMweb client (the `dicomweb-client` package, as used by research tools and gateways) against the
app served by uvicorn on loopback: store, search, retrieve, metadata, frames and rendered images."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session

import healthrelay.models  # noqa: F401
from tests import factories as f
from tests.imaging.conftest import make_dataset


@pytest.fixture
def token(db: Session, live_server: str) -> str:
    town = f.organisation(db, name="东山镇卫生院")
    f.user(db, organisation=town, username="gateway_doc")
    db.commit()
    response = requests.post(f"{live_server}/api/v1/auth/token",
                             data={"username": "gateway_doc", "password": f.PASSWORD}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


@pytest.fixture
def dicomweb(live_server: str, token: str) -> DICOMwebClient:
    return DICOMwebClient(url=f"{live_server}/dicomweb", headers={"Authorization": f"Bearer {token}"})


def _study() -> tuple[str, list[pydicom.Dataset]]:
    """A CT series of two slices, an RLE-compressed MR and a two-frame RGB image in one study."""
    study_uid = generate_uid()
    ct_series = generate_uid()
    instances = []
    for number in (1, 2):
        ds = make_dataset("CT_small.dcm", study_uid=study_uid, series_uid=ct_series, patient_id="GW001",
                          patient_name="ZHAO^LIU")
        ds.InstanceNumber = number
        instances.append(ds)
    for sample in ("MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm"):
        instances.append(make_dataset(sample, study_uid=study_uid, patient_id="GW001", patient_name="ZHAO^LIU"))
    return study_uid, instances


def test_store_search_and_retrieve_with_dicomweb_client(dicomweb: DICOMwebClient) -> None:
    study_uid, instances = _study()
    result = dicomweb.store_instances(instances)
    assert len(result.ReferencedSOPSequence) == 4 and "FailedSOPSequence" not in result

    studies = dicomweb.search_for_studies(search_filters={"PatientID": "GW001"})
    assert [s["0020000D"]["Value"][0] for s in studies] == [study_uid]
    assert studies[0]["00201208"]["Value"] == [4]
    series = dicomweb.search_for_series(study_uid)
    assert sorted(s["00080060"]["Value"][0] for s in series) == ["CT", "MR", "OT"]
    ct = instances[0]
    found = dicomweb.search_for_instances(study_uid, ct.SeriesInstanceUID)
    assert [i["00200013"]["Value"][0] for i in found] == [1, 2]
    assert dicomweb.search_for_studies(search_filters={"PatientName": "zhao*"}, limit=1)

    retrieved = dicomweb.retrieve_study(study_uid)
    by_uid = {ds.SOPInstanceUID: ds for ds in retrieved}
    assert set(by_uid) == {ds.SOPInstanceUID for ds in instances}
    for original in instances:
        assert np.array_equal(by_uid[original.SOPInstanceUID].pixel_array, original.pixel_array)

    mr = instances[2]
    one = dicomweb.retrieve_instance(study_uid, mr.SeriesInstanceUID, mr.SOPInstanceUID)
    assert one.SOPInstanceUID == mr.SOPInstanceUID
    assert one.file_meta.TransferSyntaxUID == mr.file_meta.TransferSyntaxUID  # as stored: RLE

    metadata = dicomweb.retrieve_series_metadata(study_uid, ct.SeriesInstanceUID)
    assert len(metadata) == 2 and metadata[0]["00100010"]["Value"] == [{"Alphabetic": "ZHAO^LIU"}]
    assert "BulkDataURI" in metadata[0]["7FE00010"]
    instance_metadata = dicomweb.retrieve_instance_metadata(study_uid, mr.SeriesInstanceUID, mr.SOPInstanceUID)
    assert instance_metadata["00080018"]["Value"] == [mr.SOPInstanceUID]


def test_frames_and_rendered_images_with_dicomweb_client(dicomweb: DICOMwebClient) -> None:
    study_uid, instances = _study()
    dicomweb.store_instances(instances)
    rgb = instances[3]
    frames = dicomweb.retrieve_instance_frames(study_uid, rgb.SeriesInstanceUID, rgb.SOPInstanceUID,
                                               frame_numbers=[1, 2])
    assert [len(fr) for fr in frames] == [100 * 100 * 3] * 2
    assert frames[1] == rgb.pixel_array[1].tobytes()
    mr = instances[2]
    (mr_frame,) = dicomweb.retrieve_instance_frames(study_uid, mr.SeriesInstanceUID, mr.SOPInstanceUID,
                                                    frame_numbers=[1])
    assert mr_frame == mr.pixel_array.astype("<i2").tobytes()  # decompressed from RLE

    png = dicomweb.retrieve_instance_frames_rendered(study_uid, mr.SeriesInstanceUID, mr.SOPInstanceUID,
                                                     frame_numbers=[1], media_types=("image/png",))
    assert Image.open(io.BytesIO(png)).size == (64, 64)
    jpeg = dicomweb.retrieve_instance_rendered(study_uid, mr.SeriesInstanceUID, mr.SOPInstanceUID,
                                               media_types=("image/jpeg",), params={"window": "600,1600"})
    assert jpeg[:2] == b"\xff\xd8"


def test_without_a_token_the_client_is_refused(live_server: str, token: str) -> None:
    anonymous = DICOMwebClient(url=f"{live_server}/dicomweb")
    with pytest.raises(requests.HTTPError) as caught:
        anonymous.search_for_studies()
    assert caught.value.response.status_code == 401
