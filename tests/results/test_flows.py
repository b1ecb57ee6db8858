"""A signed remote-diagnosis report becomes the patient's examination result (results/flows.py)."""

from __future__ import annotations

from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.imaging.models import ImagingSeries, ImagingStudy
from healthrelay.results import flows, service
from healthrelay.results.models import ExamResult
from healthrelay.teleconsult import reports
from healthrelay.teleconsult.models import ConsultRequest
from healthrelay.teleconsult.reports import ReportInput
from tests.results.conftest import count_exams
from tests.teleconsult.conftest import Requests, TeleWorld

REPORT = ReportInput(technique="胸部 CT 平扫", findings="右上肺见一 8 mm 实性结节，边缘光整。",
                     impression="右上肺小结节，建议 6 个月复查。")


def attach_study(db: Session, w: TeleWorld, request: ConsultRequest, *, modality: str = "CT",
                 body_part: str = "CHEST") -> ImagingStudy:
    """The study the township sent for this request, as the DICOM receiver indexes it."""
    study = ImagingStudy(study_instance_uid=generate_uid(), patient_id=w.patient.id, organisation_id=w.town.id,
                         consult_request_id=request.id, modalities_in_study=f"{modality}\\SR",
                         accession_number=request.number[:16], description="CHEST")
    db.add(study)
    db.flush()
    db.add(ImagingSeries(study_id=study.id, series_instance_uid=generate_uid(), modality="SR"))
    db.add(ImagingSeries(study_id=study.id, series_instance_uid=generate_uid(), modality=modality,
                         body_part=body_part))
    db.commit()
    return study


def test_a_seniors_signature_writes_the_examination_result_with_its_images(db: Session, tele: TeleWorld,
                                                                           requests: Requests) -> None:
    request = requests.claimed_senior
    study = attach_study(db, tele, request)
    reports.sign(db, request_id=request.id, by=tele.senior, data=REPORT)
    db.commit()
    row = db.execute(select(ExamResult).where(ExamResult.consult_request_id == request.id)).scalar_one()
    assert (row.patient_id, row.organisation_id, row.ordering_organisation_id) == (
        tele.patient.id, tele.town.id, tele.town.id)
    assert (row.exam_code, row.modality, row.body_part, row.category) == ("CT_CHEST", "CT", "CHEST", "imaging")
    assert row.study_instance_uid == study.study_instance_uid and row.source == "centre"
    assert row.impression == REPORT.impression and row.order_number == request.number


def test_a_trainees_preliminary_signature_writes_nothing(db: Session, tele: TeleWorld, requests: Requests) -> None:
    request = requests.claimed_trainee
    attach_study(db, tele, request)
    reports.sign(db, request_id=request.id, by=tele.trainee, data=REPORT)
    db.commit()
    assert count_exams(db) == 0


def test_the_readers_recognition_scope_is_kept_and_a_second_run_writes_nothing(db: Session, tele: TeleWorld,
                                                                              requests: Requests) -> None:
    request = requests.claimed_senior
    attach_study(db, tele, request, modality="MR", body_part="BRAIN")
    scoped = ReportInput(**{**REPORT.__dict__, "technique": "头颅 MRI 平扫", "recognition_scope": "province"})
    report = reports.sign(db, request_id=request.id, by=tele.senior, data=scoped)
    db.commit()
    row = db.execute(select(ExamResult).where(ExamResult.consult_request_id == request.id)).scalar_one()
    assert (row.exam_code, row.recognition_scope) == ("MR_HEAD", "province")
    again = flows.result_from_report(db, request, report, tele.senior)
    db.commit()
    assert again is not None and again.id == row.id and count_exams(db) == 1


def test_a_cosigned_report_becomes_a_result(db: Session, tele: TeleWorld, requests: Requests) -> None:
    request = requests.claimed_trainee
    attach_study(db, tele, request)
    reports.sign(db, request_id=request.id, by=tele.trainee, data=REPORT)
    db.commit()
    reports.cosign(db, request_id=request.id, by=tele.senior)
    db.commit()
    row = db.execute(select(ExamResult).where(ExamResult.consult_request_id == request.id)).scalar_one_or_none()
    assert row is not None and row.exam_code == "CT_CHEST"


def test_a_signed_ecg_report_becomes_a_result_linking_its_tracing(db: Session, tele: TeleWorld) -> None:
    from healthrelay.ecg import service as ecg
    from healthrelay.teleconsult import service as consult
    from tests.ecg.conftest import csv, tracing

    rec = ecg.ingest(db, files=csv(tracing(demographics=None)), organisation_id=tele.town.id, by=tele.requester,
                     patient_id=tele.patient.id)
    db.commit()
    consult.claim(db, by=tele.senior, request_id=rec.consult_request_id)
    reports.sign(db, request_id=rec.consult_request_id, by=tele.senior,
                 data=ReportInput(structured={"codes": ["sinus_rhythm", "normal"], "measurements": {}}))
    db.commit()
    row = db.execute(select(ExamResult).where(ExamResult.consult_request_id == rec.consult_request_id)).scalar_one()
    assert (row.exam_code, row.modality, row.category, row.organisation_id) == ("ECG_12", "ECG", "ecg", tele.town.id)
    assert row.performed_at <= row.reported_at and "正常心电图" in row.impression
    assert service.exam_links(db, row)["ecg"] == f"/ecg/recordings/{rec.id}"
