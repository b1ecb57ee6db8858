"""Imaging fixtures other imaging tests may use.

- `imaging_site`: a township with a registered CT modality (AE title TOWNCT1) and a clinician there,
  committed so a receiver running in other threads sees them.
- `dicom_bytes(...)`: a new Part 10 instance made from a pydicom sample with the patient and UIDs you choose.
- `receiver`: our DICOM receiver on a free 127.0.0.1 port (`receiver.port`, AE title HEALTHRELAY).
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session

from healthrelay.accounts.models import User
from healthrelay.directory.models import Organisation
from healthrelay.imaging.models import Modality
from healthrelay.imaging.scp import Receiver
from tests import factories as f
from tests.conftest import free_port

OUR_AE = "HEALTHRELAY"
MODALITY_AE = "TOWNCT1"

_KEEP = object()


@dataclass
class ImagingSite:
    township: Organisation
    modality: Modality
    doctor: User


def empty_dicom_folder_now() -> None:
    """The data dir lives for the whole session; each imaging test starts with no stored files."""
    from healthrelay.core.config import get_settings

    shutil.rmtree(get_settings().data_dir / "dicom", ignore_errors=True)


@pytest.fixture(autouse=True)
def empty_dicom_folder(database_url: str) -> None:
    empty_dicom_folder_now()


def register_site(db: Session) -> ImagingSite:
    """A township with an active CT modality (TOWNCT1) and a clinician, committed."""
    township = f.organisation(db, name="东山镇卫生院")
    modality = Modality(ae_title=MODALITY_AE, organisation_id=township.id, modality_type="CT", name="东山镇 CT")
    db.add(modality)
    doctor = f.user(db, organisation=township, username="dongshan_doc")
    db.flush()
    db.commit()
    return ImagingSite(township=township, modality=modality, doctor=doctor)


@pytest.fixture
def imaging_site(db: Session) -> ImagingSite:
    return register_site(db)


def sample_path(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(f"pydicom sample {name} is not installed")
    return Path(str(path))


def make_dataset(sample: str = "CT_small.dcm", *, patient_name: object = _KEEP, patient_id: object = _KEEP,
                 birth_date: object = _KEEP, sex: object = _KEEP, study_uid: str | None = None,
                 series_uid: str | None = None, sop_uid: str | None = None, accession: str | None = None,
                 charset: str | None = None, other_patient_ids: list[str] | None = None) -> Dataset:
    """The sample with fresh UIDs (unless given) and the patient module set as asked."""
    ds = pydicom.dcmread(sample_path(sample))
    if charset is not None:
        ds.SpecificCharacterSet = charset
    for keyword, value in (("PatientName", patient_name), ("PatientID", patient_id),
                           ("PatientBirthDate", birth_date), ("PatientSex", sex)):
        if value is not _KEEP:
            setattr(ds, keyword, value)
    if accession is not None:
        ds.AccessionNumber = accession
    if other_patient_ids:
        seq = []
        for value in other_patient_ids:
            item = Dataset()
            item.PatientID = value
            seq.append(item)
        ds.OtherPatientIDsSequence = seq
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dicom_bytes(sample: str = "CT_small.dcm", **changes: object) -> bytes:
    """A new Part 10 instance from a pydicom sample (see make_dataset for the changes you may ask)."""
    return to_bytes(make_dataset(sample, **changes))  # type: ignore[arg-type]


def start_test_receiver() -> Receiver:
    """Our receiver on a free loopback port, using the test database (call .shutdown() when done)."""
    import healthrelay.models  # noqa: F401
    from healthrelay.core.db import get_sessionmaker
    from healthrelay.imaging.scp import start_receiver

    return start_receiver(get_sessionmaker(), host="127.0.0.1", port=free_port(), ae_title=OUR_AE)


@pytest.fixture
def receiver(database_url: str) -> Iterator[Receiver]:
    handle = start_test_receiver()
    yield handle
    handle.shutdown()
