"""DIMSE interop: real peers (dcmtk's echoscu/storescu, pynetdicom as SCU) against our receiver.

Our receiver binds 127.0.0.1 and dcmtk's tools are clients, so no network namespace is needed here.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import healthrelay.models  # noqa: F401
from healthrelay.audit.models import AuditEvent
from healthrelay.core.config import get_settings
from healthrelay.imaging.models import ImagingInstance, ImagingStudy
from healthrelay.imaging.scp import Receiver
from healthrelay.imaging.storage import get_backend
from tests.imaging.conftest import (
    MODALITY_AE,
    OUR_AE,
    ImagingSite,
    empty_dicom_folder_now,
    make_dataset,
    register_site,
    start_test_receiver,
)

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None or shutil.which("echoscu") is None,
                                reason="dcmtk (storescu, echoscu) is not installed")

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


@pytest.fixture(autouse=True)
def _no_stored_files(database_url: str) -> None:
    empty_dicom_folder_now()


@pytest.fixture
def imaging_site(db: Session) -> ImagingSite:
    return register_site(db)


@pytest.fixture
def receiver(database_url: str) -> Iterator[Receiver]:
    handle = start_test_receiver()
    yield handle
    handle.shutdown()

# Sample, the storescu option that proposes its transfer syntax (and uncompressed ones).
SAMPLES = [
    ("CT_small.dcm", "-xe"),
    ("MR_small.dcm", "-xe"),
    ("MR_small_implicit.dcm", "-xi"),
    ("examples_ybr_color.dcm", "-xy"),  # 30-frame ultrasound, JPEG baseline
    ("SC_rgb_rle_2frame.dcm", "-xr"),  # 2-frame RLE
    ("JPEG2000.dcm", "-xw"),
    ("MR_small_jp2klossless.dcm", "-xv"),
    ("MR_small_RLE.dcm", "-xr"),
    ("JPEG-lossy.dcm", "-xx"),
    ("MR_small_jpeg_ls_lossless.dcm", "-xt"),
]


def _count(db: Session, model: type) -> int:
    db.rollback()  # see what the receiver committed
    return db.scalar(select(func.count()).select_from(model)) or 0


def _dataset_bytes(data: bytes) -> bytes:
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length:]


def _write(tmp_path: Path, sample: str, **changes: object) -> tuple[Path, Dataset]:
    ds = make_dataset(sample, **changes)  # type: ignore[arg-type]
    # dcmtk never sends Data Set Trailing Padding (PS3.10 7.2), so files that carry it could not come back
    # byte for byte; leave it out of what we send.
    if "DataSetTrailingPadding" in ds:
        del ds.DataSetTrailingPadding
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, ds


def _storescu(receiver: Receiver, *files: Path, calling: str = MODALITY_AE, called: str = OUR_AE,
              propose: str = "-xe") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["storescu", "-aet", calling, "-aec", called, propose, "127.0.0.1", str(receiver.port),
                           *map(str, files)], env=DCMTK_ENV, capture_output=True, text=True, timeout=120)


def _echoscu(receiver: Receiver, *, calling: str = MODALITY_AE,
             called: str = OUR_AE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(receiver.port)],
                          env=DCMTK_ENV, capture_output=True, text=True, timeout=60)


# --- dcmtk ------------------------------------------------------------------------------------------

def test_echoscu_from_a_registered_modality(imaging_site: ImagingSite, receiver: Receiver) -> None:
    result = _echoscu(receiver)
    assert result.returncode == 0, result.stderr


def test_unknown_calling_ae_title_is_rejected(imaging_site: ImagingSite, receiver: Receiver) -> None:
    result = _echoscu(receiver, calling="STRANGER")
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr


def test_wrong_called_ae_title_is_rejected(imaging_site: ImagingSite, receiver: Receiver) -> None:
    result = _echoscu(receiver, called="SOMEONEELSE")
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr


def test_deactivated_modality_is_rejected(db: Session, imaging_site: ImagingSite, receiver: Receiver) -> None:
    imaging_site.modality.is_active = False
    db.commit()
    assert _echoscu(receiver).returncode != 0


@pytest.mark.parametrize("sample,propose", SAMPLES)
def test_storescu_sends_sample_and_it_is_stored_unchanged(db: Session, imaging_site: ImagingSite,
                                                          receiver: Receiver, tmp_path: Path, sample: str,
                                                          propose: str) -> None:
    path, ds = _write(tmp_path, sample)
    result = _storescu(receiver, path, propose=propose)
    assert result.returncode == 0, result.stderr
    db.rollback()
    instance = db.scalar(select(ImagingInstance).where(ImagingInstance.sop_instance_uid == ds.SOPInstanceUID))
    assert instance is not None, result.stderr
    assert instance.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    assert instance.number_of_frames == int(ds.get("NumberOfFrames") or 1)
    assert instance.calling_ae_title == MODALITY_AE and instance.received_via == "dimse"
    # dcmtk re-encodes sequences with explicit lengths, so the file is compared element by element; the
    # pixel data (compressed fragments included) must come back byte for byte.
    stored = pydicom.dcmread(io.BytesIO(get_backend().read(instance.storage_key)))
    sent = pydicom.dcmread(path)
    assert set(stored.keys()) == set(sent.keys())
    assert all(stored[elem.tag].value == elem.value for elem in sent)  # VRs may be normalised (OW → OB)
    if "PixelData" in sent:
        assert stored.PixelData == sent.PixelData
        if sample != "JPEG-lossy.dcm":  # 12-bit JPEG extended: neither pylibjpeg nor Pillow decodes this sample
            assert stored.pixel_array.shape == sent.pixel_array.shape


def test_storescu_series_in_one_association(db: Session, imaging_site: ImagingSite, receiver: Receiver,
                                            tmp_path: Path) -> None:
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = [_write(tmp_path, "CT_small.dcm", study_uid=study_uid, series_uid=series_uid)[0] for _ in range(12)]
    result = _storescu(receiver, *paths)
    assert result.returncode == 0, result.stderr
    assert _count(db, ImagingInstance) == 12
    study = db.scalar(select(ImagingStudy).where(ImagingStudy.study_instance_uid == study_uid))
    assert study is not None and study.number_of_instances == 12 and study.number_of_series == 1
    assert study.organisation_id == imaging_site.township.id


def test_storescu_from_unknown_ae_title_stores_nothing(db: Session, imaging_site: ImagingSite,
                                                       receiver: Receiver, tmp_path: Path) -> None:
    path, _ = _write(tmp_path, "CT_small.dcm")
    result = _storescu(receiver, path, calling="STRANGER")
    assert result.returncode != 0
    assert _count(db, ImagingInstance) == 0 and _count(db, ImagingStudy) == 0


def test_storescu_resend_is_acknowledged_and_stored_once(db: Session, imaging_site: ImagingSite,
                                                         receiver: Receiver, tmp_path: Path) -> None:
    path, _ = _write(tmp_path, "CT_small.dcm")
    assert _storescu(receiver, path).returncode == 0
    second = _storescu(receiver, path)
    assert second.returncode == 0, second.stderr
    assert _count(db, ImagingInstance) == 1
    assert len(_files()) == 1


def _files() -> list[Path]:
    root = get_settings().data_dir / "dicom"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


# --- pynetdicom as SCU ------------------------------------------------------------------------------

def _scu(max_pdu: int = 16382) -> AE:
    ae = AE(ae_title=MODALITY_AE)
    ae.maximum_pdu_size = max_pdu
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    return ae


def test_pynetdicom_echo_and_store(db: Session, imaging_site: ImagingSite, receiver: Receiver) -> None:
    assoc = _scu().associate("127.0.0.1", receiver.port, ae_title=OUR_AE)
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        ds = make_dataset("CT_small.dcm")
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    assert _count(db, ImagingInstance) == 1
    # What pynetdicom put on the wire is what pydicom encodes: the file holds exactly those bytes.
    instance = db.scalars(select(ImagingInstance)).one()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert _dataset_bytes(get_backend().read(instance.storage_key)) == _dataset_bytes(buffer.getvalue())


def test_pynetdicom_bad_data_gets_a_failure_status_and_nothing_is_stored(db: Session, imaging_site: ImagingSite,
                                                                          receiver: Receiver) -> None:
    ds = make_dataset("CT_small.dcm")
    del ds.StudyInstanceUID
    truncated = make_dataset("CT_small.dcm")
    truncated.PixelData = truncated.PixelData[:1000]
    assoc = _scu().associate("127.0.0.1", receiver.port, ae_title=OUR_AE)
    try:
        missing_uid = assoc.send_c_store(ds)
        short = assoc.send_c_store(truncated)
        fine = assoc.send_c_store(make_dataset("CT_small.dcm"))  # the association survives bad data
    finally:
        assoc.release()
    assert missing_uid.Status == 0xA900 and "Study Instance UID" in missing_uid.ErrorComment
    assert short.Status == 0xC000 and "truncated" in short.ErrorComment
    assert fine.Status == 0x0000
    assert _count(db, ImagingInstance) == 1 and len(_files()) == 1
    refusals = db.scalars(select(AuditEvent).where(AuditEvent.action == "imaging.ingest",
                                                   AuditEvent.outcome == "refused")).all()
    assert len(refusals) == 2 and refusals[0].username == f"dicom:{MODALITY_AE}"


def test_pynetdicom_same_uid_different_content_is_refused(db: Session, imaging_site: ImagingSite,
                                                          receiver: Receiver) -> None:
    ds = make_dataset("CT_small.dcm")
    assoc = _scu().associate("127.0.0.1", receiver.port, ae_title=OUR_AE)
    try:
        first = assoc.send_c_store(ds)
        same = assoc.send_c_store(ds)
        ds.PatientName = "OTHER^PERSON"
        changed = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert first.Status == 0x0000 and same.Status == 0x0000
    assert changed.Status == 0xC001 and "different content" in changed.ErrorComment
    assert _count(db, ImagingInstance) == 1


def test_killed_association_leaves_nothing_half_stored(db: Session, imaging_site: ImagingSite,
                                                       receiver: Receiver) -> None:
    """The connection dies while the second instance (4 MB, several PDUs) is on the wire: only the first is kept."""
    big = make_dataset("CT_small.dcm")
    big.Rows = big.Columns = 1024
    big.NumberOfFrames = 2
    big.PixelData = os.urandom(1024 * 1024 * 2 * 2)
    pdus_of_big = {"n": 0, "armed": False}
    killed = threading.Event()

    def on_pdu_sent(event: evt.Event) -> None:
        if not pdus_of_big["armed"] or not isinstance(event.pdu, P_DATA_TF):  # type: ignore[attr-defined]
            return
        pdus_of_big["n"] += 1
        if pdus_of_big["n"] == 2 and not killed.is_set():
            killed.set()
            sock = event.assoc.dul.socket.socket
            sock.shutdown(socket.SHUT_RDWR)

    assoc = _scu().associate("127.0.0.1", receiver.port, ae_title=OUR_AE,
                             evt_handlers=[(evt.EVT_PDU_SENT, on_pdu_sent)])
    assert assoc.send_c_store(make_dataset("CT_small.dcm")).Status == 0x0000
    pdus_of_big["armed"] = True
    with suppress(Exception):  # the SCU notices its own dead socket in various ways
        assoc.send_c_store(big)
    assoc.abort()
    assert killed.is_set()
    assert _count(db, ImagingInstance) == 1 and len(_files()) == 1
    # The receiver carries on.
    assert _echoscu(receiver).returncode == 0


def test_garbage_on_the_port_is_logged_and_the_receiver_carries_on(db: Session, imaging_site: ImagingSite,
                                                                    receiver: Receiver) -> None:
    """An HTTP request, a lying PDU length and a half-sent association request: each connection is
    dropped, nothing is stored, and a real modality is served right after."""
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x04\x00\xff\xff\xff\xff" + b"\x00" * 32,
                 b"\x01\x00\x00\x00\x01\x00\x00\x01"):
        with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock, suppress(OSError):
            sock.sendall(junk)  # the receiver may hang up before we finish: that is the point
            sock.shutdown(socket.SHUT_WR)
            sock.recv(100)
    assert _echoscu(receiver).returncode == 0
    assert _count(db, ImagingInstance) == 0
