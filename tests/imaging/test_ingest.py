"""Ingest: what a modality or a STOW upload hands us, stored and indexed, or refused without a trace."""

from __future__ import annotations

import threading
import time
from datetime import date
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import healthrelay.models  # noqa: F401
from healthrelay.audit.models import AuditEvent
from healthrelay.core.config import get_settings
from healthrelay.core.errors import Conflict, InvalidInput
from healthrelay.imaging import service
from healthrelay.imaging.models import ImagingInstance, ImagingSeries, ImagingStudy, PatientMatch
from healthrelay.imaging.storage import get_backend
from healthrelay.patients.identity import make_resident_id
from healthrelay.patients.models import IdentifierType, PatientIdentifier, Sex
from tests import factories as f
from tests.imaging.conftest import ImagingSite, dicom_bytes, make_dataset, sample_path, to_bytes


def _ingest(db: Session, site: ImagingSite, data: bytes) -> service.Stored:
    stored = service.ingest(db, data=data, received_via="dimse", calling_ae_title=site.modality.ae_title,
                            modality=site.modality)
    db.commit()
    return stored


def _stored_files() -> list[Path]:
    root = get_settings().data_dir / "dicom"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _count(db: Session, model: type) -> int:
    return db.scalar(select(func.count()).select_from(model)) or 0


# --- a good instance --------------------------------------------------------------------------------

def test_instance_is_stored_indexed_and_summarised(db: Session, imaging_site: ImagingSite) -> None:
    data = dicom_bytes("CT_small.dcm", accession="A123")
    stored = _ingest(db, imaging_site, data)

    assert stored.created
    instance, study = stored.instance, stored.study
    assert get_backend().read(instance.storage_key) == data
    assert instance.size_bytes == len(data) and instance.rows == 128 and instance.columns == 128
    assert instance.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert instance.received_via == "dimse" and instance.calling_ae_title == "TOWNCT1"
    summary = instance.summary
    assert summary["pixel_spacing"] == [0.661468, 0.661468]
    assert summary["rescale_slope"] == 1.0 and summary["rescale_intercept"] == -1024.0
    assert summary["photometric_interpretation"] == "MONOCHROME2"
    assert summary["image_position"] == [-158.135803, -179.035797, -75.699997]
    assert len(summary["image_orientation"]) == 6 and summary["number_of_frames"] == 1
    db.refresh(study)
    assert study.organisation_id == imaging_site.township.id and study.modality_id == imaging_site.modality.id
    assert study.accession_number == "A123" and study.modalities_in_study == "CT"
    assert (study.number_of_series, study.number_of_instances) == (1, 1)
    assert study.dicom_patient_name == "CompressedSamples^CT1"


def test_counters_follow_series_and_instances(db: Session, imaging_site: ImagingSite) -> None:
    study_uid, series_a, series_b = generate_uid(), generate_uid(), generate_uid()
    for series_uid in (series_a, series_a, series_b):
        _ingest(db, imaging_site, dicom_bytes("CT_small.dcm", study_uid=study_uid, series_uid=series_uid))
    study = db.scalar(select(ImagingStudy).where(ImagingStudy.study_instance_uid == study_uid))
    assert study is not None
    db.refresh(study)
    assert (study.number_of_series, study.number_of_instances) == (2, 3)
    counts = {s.series_instance_uid: s.number_of_instances for s in db.scalars(select(ImagingSeries))}
    assert counts == {series_a: 2, series_b: 1}
    # One audit event for the new study, not one per instance.
    events = db.scalars(select(AuditEvent).where(AuditEvent.action == "imaging.ingest")).all()
    assert len(events) == 1 and events[0].detail["study_instance_uid"] == study_uid


@pytest.mark.parametrize("sample", [
    "MR_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "JPEG-lossy.dcm", "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "image_dfl.dcm", "SC_rgb_rle_2frame.dcm",
    "examples_ybr_color.dcm", "waveform_ecg.dcm", "reportsi.dcm",
])
def test_common_samples_are_accepted(db: Session, imaging_site: ImagingSite, sample: str) -> None:
    ds = make_dataset(sample) if sample != "image_dfl.dcm" else None
    data = to_bytes(ds) if ds is not None else sample_path(sample).read_bytes()
    stored = _ingest(db, imaging_site, data)
    assert stored.created and get_backend().read(stored.instance.storage_key) == data
    original = pydicom.dcmread(sample_path(sample))
    assert stored.instance.number_of_frames == int(original.get("NumberOfFrames") or 1)


# --- bad input ---------------------------------------------------------------------------------------

def _refused(db: Session, site: ImagingSite, data: bytes, code: str) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        service.ingest(db, data=data, received_via="stow", modality=site.modality)
    db.rollback()
    assert caught.value.code == code, caught.value.message
    assert _count(db, ImagingInstance) == 0 and _count(db, ImagingStudy) == 0
    assert _stored_files() == []
    return caught.value


def test_non_dicom_bytes_are_refused(db: Session, imaging_site: ImagingSite) -> None:
    error = _refused(db, imaging_site, b"%PDF-1.4 not an image at all" * 20, "not_dicom")
    assert "not a DICOM" in error.message
    _refused(db, imaging_site, b"", "not_dicom")
    # A preamble and DICM but garbage after it.
    _refused(db, imaging_site, b"\0" * 128 + b"DICM" + b"\xff" * 64, "not_dicom")


@pytest.mark.parametrize("sample", ["CT_small.dcm", "MR_small_RLE.dcm", "examples_ybr_color.dcm", "reportsi.dcm"])
def test_truncated_files_are_refused(db: Session, imaging_site: ImagingSite, sample: str) -> None:
    data = dicom_bytes(sample)
    for cut in (len(data) // 2, len(data) - 200, 700):
        _refused(db, imaging_site, data[:cut], "truncated")


def test_truncated_sample_from_pydicom_is_refused(db: Session, imaging_site: ImagingSite) -> None:
    error = _refused(db, imaging_site, sample_path("MR_truncated.dcm").read_bytes(), "truncated")
    assert "8130 of 8192" in error.message


def test_unsupported_sop_class_is_refused_by_name(db: Session, imaging_site: ImagingSite) -> None:
    error = _refused(db, imaging_site, dicom_bytes("rtdose.dcm"), "unsupported_sop_class")
    assert "RT Dose Storage" in error.message


def test_missing_uids_are_refused(db: Session, imaging_site: ImagingSite) -> None:
    ds = make_dataset("CT_small.dcm")
    del ds.SeriesInstanceUID
    error = _refused(db, imaging_site, to_bytes(ds), "missing_uid")
    assert "Series Instance UID" in error.message


def test_duplicate_is_idempotent(db: Session, imaging_site: ImagingSite) -> None:
    data = dicom_bytes("CT_small.dcm")
    first = _ingest(db, imaging_site, data)
    again = _ingest(db, imaging_site, data)
    assert first.created and not again.created
    assert again.instance.id == first.instance.id
    assert _count(db, ImagingInstance) == 1 and len(_stored_files()) == 1
    db.refresh(first.study)
    assert first.study.number_of_instances == 1


def test_same_uid_different_content_is_a_conflict(db: Session, imaging_site: ImagingSite) -> None:
    ds = make_dataset("CT_small.dcm")
    original = to_bytes(ds)
    first = _ingest(db, imaging_site, original)
    ds.PatientName = "CHANGED^NAME"
    with pytest.raises(Conflict) as caught:
        service.ingest(db, data=to_bytes(ds), received_via="dimse", modality=imaging_site.modality)
    db.rollback()
    assert ds.SOPInstanceUID in caught.value.message
    assert _count(db, ImagingInstance) == 1 and len(_stored_files()) == 1
    assert get_backend().read(first.instance.storage_key) == original


def test_same_dataset_under_another_file_meta_is_a_duplicate(db: Session, imaging_site: ImagingSite) -> None:
    ds = make_dataset("CT_small.dcm")
    first = _ingest(db, imaging_site, to_bytes(ds))
    ds.file_meta.ImplementationVersionName = "OTHER_SENDER"
    again = _ingest(db, imaging_site, to_bytes(ds))
    assert first.created and not again.created


def test_rolled_back_transaction_leaves_no_file(db: Session, imaging_site: ImagingSite) -> None:
    stored = service.ingest(db, data=dicom_bytes("CT_small.dcm"), received_via="stow", modality=imaging_site.modality)
    assert len(_stored_files()) == 1 and stored.created
    db.rollback()
    assert _stored_files() == [] and _count(db, ImagingInstance) == 0


# --- patient matching --------------------------------------------------------------------------------

def test_unknown_patient_is_flagged(db: Session, imaging_site: ImagingSite) -> None:
    stored = _ingest(db, imaging_site, dicom_bytes("CT_small.dcm", patient_name="ZHAO^WUMING", patient_id="X1",
                                                   birth_date="19700101", sex="M"))
    study = stored.study
    assert study.patient_match == PatientMatch.UNMATCHED and study.patient_id is None
    assert "no resident" in study.match_note


def test_matched_by_resident_id(db: Session, imaging_site: ImagingSite) -> None:
    patient = f.patient(db, name="王秀英", sex=Sex.FEMALE, birth_date=date(1956, 3, 8))
    number = make_resident_id("421122", date(1956, 3, 8), 7, "F")
    db.add(PatientIdentifier(patient_id=patient.id, type=IdentifierType.RESIDENT_ID, value=number))
    db.commit()
    # The name on the device is wrong: the resident ID still finds her.
    stored = _ingest(db, imaging_site, dicom_bytes("CT_small.dcm", patient_name="ANON", patient_id=number))
    assert stored.study.patient_id == patient.id and stored.study.patient_match == PatientMatch.MATCHED
    assert "resident ID" in stored.study.match_note


def test_matched_by_the_senders_record_number(db: Session, imaging_site: ImagingSite) -> None:
    patient = f.patient(db, name="李建国", sex=Sex.MALE, birth_date=date(1960, 5, 1))
    other_org = f.organisation(db)
    db.add(PatientIdentifier(patient_id=patient.id, type=IdentifierType.MEDICAL_RECORD, value="MZ0042",
                             issuer_organisation_id=imaging_site.township.id))
    decoy = f.patient(db, name="张三", sex=Sex.MALE, birth_date=date(1970, 1, 1))
    db.add(PatientIdentifier(patient_id=decoy.id, type=IdentifierType.MEDICAL_RECORD, value="MZ0043",
                             issuer_organisation_id=other_org.id))
    db.commit()
    stored = _ingest(db, imaging_site, dicom_bytes("CT_small.dcm", patient_id="MZ0042"))
    assert stored.study.patient_id == patient.id
    # Another organisation's number is not ours to trust.
    stored = _ingest(db, imaging_site, dicom_bytes("CT_small.dcm", patient_id="MZ0043", patient_name="X"))
    assert stored.study.patient_id is None


@pytest.mark.parametrize("name,charset", [
    ("王小明", "ISO_IR 192"),
    ("王小明", "GB18030"),
    ("WANG^XIAOMING", None),
    ("Wang Xiaoming", None),
    ("WANG^XIAOMING=王^小明", "ISO 2022 IR 58"),
])
def test_matched_by_name_birth_date_and_sex(db: Session, imaging_site: ImagingSite, name: str,
                                            charset: str | None) -> None:
    patient = f.patient(db, name="王小明", sex=Sex.MALE, birth_date=date(1980, 7, 15))
    f.patient(db, name="王小明", sex=Sex.MALE, birth_date=date(1985, 2, 1))  # a namesake, other birthday
    db.commit()
    data = dicom_bytes("CT_small.dcm", patient_name=name, patient_id="NOPE", birth_date="19800715", sex="M",
                       charset=charset)
    stored = _ingest(db, imaging_site, data)
    assert stored.study.patient_id == patient.id, stored.study.match_note
    assert stored.study.patient_match == PatientMatch.MATCHED


def test_two_candidates_are_never_guessed_between(db: Session, imaging_site: ImagingSite) -> None:
    f.patient(db, name="王小明", sex=Sex.MALE, birth_date=date(1980, 7, 15))
    f.patient(db, name="王晓明", sex=Sex.MALE, birth_date=date(1980, 7, 15))  # same sound, same birthday
    db.commit()
    stored = _ingest(db, imaging_site, dicom_bytes("CT_small.dcm", patient_name="WANG^XIAOMING",
                                                   birth_date="19800715", sex="M"))
    assert stored.study.patient_id is None and stored.study.patient_match == PatientMatch.UNMATCHED
    assert "several candidates" in stored.study.match_note


def test_other_sex_is_not_a_match(db: Session, imaging_site: ImagingSite) -> None:
    f.patient(db, name="王小明", sex=Sex.FEMALE, birth_date=date(1980, 7, 15))
    db.commit()
    stored = _ingest(db, imaging_site, dicom_bytes("CT_small.dcm", patient_name="王小明", birth_date="19800715",
                                                   sex="M", charset="ISO_IR 192"))
    assert stored.study.patient_id is None


def test_patient_is_matched_once_per_study(db: Session, imaging_site: ImagingSite) -> None:
    study_uid = generate_uid()
    first = _ingest(db, imaging_site, dicom_bytes("CT_small.dcm", study_uid=study_uid, patient_name="ZHAO^WUMING"))
    patient = f.patient(db, name="赵无名", sex=Sex.MALE, birth_date=date(1970, 1, 1))
    db.commit()
    second = _ingest(db, imaging_site, dicom_bytes("CT_small.dcm", study_uid=study_uid, patient_name="赵无名",
                                                   birth_date="19700101", sex="M", charset="ISO_IR 192"))
    assert second.study.id == first.study.id
    assert second.study.patient_id is None  # a later instance does not re-match (a person links it by hand)
    assert patient.id


# --- concurrency ------------------------------------------------------------------------------------

def _ingest_in_thread(data: bytes, modality_id: int) -> dict[str, object]:
    """Another receiver thread: its own session, committed."""
    from healthrelay.core.db import get_sessionmaker
    from healthrelay.imaging.models import Modality

    outcome: dict[str, object] = {}

    def run() -> None:
        session = get_sessionmaker()()
        try:
            modality = session.get(Modality, modality_id)
            stored = service.ingest(session, data=data, received_via="dimse", modality=modality)
            session.commit()
            outcome["created"] = stored.created
        except Exception as exc:  # noqa: BLE001 - handed to the test
            session.rollback()
            outcome["error"] = exc
        finally:
            session.close()

    thread = threading.Thread(target=run)
    outcome["thread"] = thread
    return outcome


@pytest.mark.parametrize("same_bytes", [True, False])
def test_concurrent_copies_of_one_instance(db: Session, imaging_site: ImagingSite, same_bytes: bool) -> None:
    """Two associations send the same SOP instance at once: one is stored; the other is a re-send
    (same bytes: success, the shared file kept) or a conflict (other bytes: refused, its file removed)."""
    ds = make_dataset("CT_small.dcm")
    first_bytes = to_bytes(ds)
    if not same_bytes:
        ds.PatientName = "OTHER^PERSON"
    second_bytes = to_bytes(ds)
    first = service.ingest(db, data=first_bytes, received_via="dimse", modality=imaging_site.modality)
    assert first.created  # written, not committed yet: the other thread cannot see it
    other = _ingest_in_thread(second_bytes, imaging_site.modality.id)
    thread = other["thread"]
    assert isinstance(thread, threading.Thread)
    thread.start()
    time.sleep(0.5)  # the other thread reaches its insert and waits for our transaction
    db.commit()
    thread.join(timeout=60)
    assert not thread.is_alive()
    if same_bytes:
        assert other.get("created") is False, other
    else:
        assert isinstance(other.get("error"), Conflict), other
    assert _count(db, ImagingInstance) == 1
    assert [p.read_bytes() for p in _stored_files()] == [first_bytes]


# --- routing ------------------------------------------------------------------------------------------

def test_new_study_is_routed_once_to_the_reading_centre(db: Session, imaging_site: ImagingSite) -> None:
    from healthrelay.directory.models import OrgKind, OrgLevel
    from healthrelay.teleconsult.models import ConsultKind, ConsultRequest, Priority, ReadingCentre, RoutingRule

    county = f.organisation(db, name="测试县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL)
    centre = ReadingCentre(code="IMG1", name="县影像中心", kind=ConsultKind.IMAGING, organisation_id=county.id)
    db.add(centre)
    db.flush()
    db.add(RoutingRule(modality_type="CT", from_organisation_id=imaging_site.township.id, centre_id=centre.id,
                       priority=Priority.URGENT))
    db.commit()
    study_uid = generate_uid()
    first = _ingest(db, imaging_site, dicom_bytes("CT_small.dcm", study_uid=study_uid))
    _ingest(db, imaging_site, dicom_bytes("CT_small.dcm", study_uid=study_uid))
    requests = db.scalars(select(ConsultRequest)).all()
    assert len(requests) == 1
    request = requests[0]
    assert request.created_via == "dimse" and request.priority == Priority.URGENT
    assert request.centre_id == centre.id and request.inviting_organisation_id == imaging_site.township.id
    db.refresh(first.study)
    assert first.study.consult_request_id == request.id


def test_study_without_a_routing_rule_stays_in_the_archive(db: Session, imaging_site: ImagingSite) -> None:
    from healthrelay.teleconsult.models import ConsultRequest

    stored = _ingest(db, imaging_site, dicom_bytes("CT_small.dcm"))
    assert stored.study.consult_request_id is None
    assert _count(db, ConsultRequest) == 0
