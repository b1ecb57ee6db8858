"""ECG waveforms through the DICOM doors: dcmtk's storescu and pynetdicom (C-STORE) and STOW-RS hand 12-lead and
general ECG waveforms to the ECG centre instead of the image index."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import GeneralECGWaveformStorage, TwelveLeadECGWaveformStorage  # type: ignore[attr-defined]
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import healthrelay.models  # noqa: F401
from healthrelay.ecg import formats
from healthrelay.ecg.models import EcgRecording
from healthrelay.imaging.models import ImagingInstance, Modality
from healthrelay.imaging.scp import Receiver
from healthrelay.patients.models import IdentifierType, PatientIdentifier
from healthrelay.teleconsult.models import ConsultKind, ConsultRequest
from tests import factories as f
from tests.ecg.conftest import build_ecg_world, tracing
from tests.imaging.conftest import OUR_AE, make_dataset, start_test_receiver
from tests.imaging.test_dicomweb import stow
from tests.teleconsult.conftest import TeleWorld

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk (storescu) is not installed")

ECG_AE = "TOWNECG1"


@pytest.fixture
def tele(db: Session) -> TeleWorld:
    return build_ecg_world(db)


@pytest.fixture
def ecg_cart(db: Session, tele: TeleWorld) -> Modality:
    """The township's ECG cart, registered to send; pydicom's sample patient is on the township's books."""
    cart = Modality(ae_title=ECG_AE, organisation_id=tele.town.id, modality_type="ECG", name="东山镇心电图机")
    db.add(cart)
    sample_patient = f.patient(db, name="安娜", birth_date=date(1971, 1, 23), registered_at=tele.town)
    db.add(PatientIdentifier(patient_id=sample_patient.id, type=IdentifierType.MEDICAL_RECORD, value="642341",
                             issuer_organisation_id=tele.town.id))
    db.commit()
    return cart


@pytest.fixture
def receiver(database_url: str) -> Iterator[Receiver]:
    handle = start_test_receiver()
    yield handle
    handle.shutdown()


def _count(db: Session, model: type) -> int:
    db.rollback()
    return db.scalar(select(func.count()).select_from(model)) or 0


def test_storescu_sends_pydicoms_12_lead_sample_to_the_ecg_centre(db: Session, tele: TeleWorld, ecg_cart: Modality,
                                                                   receiver: Receiver, tmp_path: Path) -> None:
    ds = make_dataset("waveform_ecg.dcm")
    path = tmp_path / "ecg.dcm"
    ds.save_as(path, enforce_file_format=True)
    done = subprocess.run(["storescu", "-aet", ECG_AE, "-aec", OUR_AE, "127.0.0.1", str(receiver.port), str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rec = db.execute(select(EcgRecording)).scalar_one()
    assert rec.uid == ds.SOPInstanceUID and rec.received_via == "dicom" and rec.organisation_id == tele.town.id
    assert rec.sample_rate == 1000 and rec.number_of_leads == 12 and rec.patient_match == "matched"
    assert "病案号" in rec.match_note
    request = db.get(ConsultRequest, rec.consult_request_id)
    assert request is not None and request.kind == ConsultKind.ECG and request.created_via == "dimse"
    assert request.centre_id == tele.ecg_centre.id and request.requested_by_user_id is None
    assert _count(db, ImagingInstance) == 0  # not in the image archive


def _scu() -> AE:
    ae = AE(ae_title=ECG_AE)
    ae.add_requested_context(TwelveLeadECGWaveformStorage)
    ae.add_requested_context(GeneralECGWaveformStorage)
    return ae


def test_pynetdicom_sends_a_synthetic_ecg_once_and_bad_waveforms_are_refused(
        db: Session, tele: TeleWorld, ecg_cart: Modality, receiver: Receiver) -> None:
    data = formats.to_dicom(tracing(stemi=True))
    ds = pydicom.dcmread(io.BytesIO(data))
    broken = pydicom.dcmread(io.BytesIO(formats.to_dicom(tracing(seed=9))))
    del broken.WaveformSequence
    assoc = _scu().associate("127.0.0.1", receiver.port, ae_title=OUR_AE)
    assert assoc.is_established
    try:
        first = assoc.send_c_store(ds)
        again = assoc.send_c_store(ds)
        bad = assoc.send_c_store(broken)
    finally:
        assoc.release()
    assert first.Status == 0x0000 and again.Status == 0x0000
    assert bad.Status != 0x0000 and "waveform" in bad.ErrorComment.lower()
    assert _count(db, EcgRecording) == 1 and _count(db, ConsultRequest) == 1
    rec = db.execute(select(EcgRecording)).scalar_one()
    assert rec.patient_id == tele.patient.id and "stemi_inferior" in rec.suggested_codes


def test_stow_rs_hands_ecg_waveforms_to_the_ecg_centre(client, db: Session, tele: TeleWorld) -> None:  # noqa: ANN001
    data = formats.to_dicom(tracing())
    response = stow(client, f.bearer(client, "town_doc"), [data])
    assert response.status_code == 200, response.text
    rec = db.execute(select(EcgRecording)).scalar_one()
    assert rec.received_via == "stow" and rec.uploaded_by_user_id == tele.requester.id
    assert _count(db, ImagingInstance) == 0
    garbage = formats.to_dicom(tracing(seed=5))
    ds = pydicom.dcmread(io.BytesIO(garbage))
    del ds.WaveformSequence
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    refused = stow(client, f.bearer(client, "town_doc"), [buffer.getvalue()])
    assert refused.status_code == 409 and _count(db, EcgRecording) == 1
