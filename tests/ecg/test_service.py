"""Ingest to the worklist, quality flags, patient matching, the coded report and the STEMI pathway (service level)."""

from __future__ import annotations

import re
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.audit.models import AuditEvent
from healthrelay.core.db import utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput
from healthrelay.directory.models import Capability, OrganisationCapability
from healthrelay.ecg import formats, service
from healthrelay.ecg.formats import Tracing
from healthrelay.ecg.models import EcgRecording
from healthrelay.emergency.models import EmergencyCall
from healthrelay.pathways.models import PathwayCase, PathwayNode
from healthrelay.teleconsult import reports
from healthrelay.teleconsult import service as consult
from healthrelay.teleconsult.models import (
    ConsultKind,
    ConsultRequest,
    ConsultState,
    ConsultTransition,
    CriticalResult,
    Priority,
    ReportState,
)
from tests import factories as f
from tests.ecg.conftest import NAME_ONLY, aecg, csv, dicom, flat, tracing, without
from tests.teleconsult.conftest import TeleWorld, make_request


def _count(db: Session, model: type) -> int:
    return db.execute(select(func.count()).select_from(model)).scalar_one()


def _ingest(db: Session, w: TeleWorld, files: dict[str, bytes], **kw: object) -> EcgRecording:
    rec = service.ingest(db, files=files, organisation_id=w.town.id, by=w.requester, **kw)  # type: ignore[arg-type]
    db.commit()
    return rec


# --- ingest ------------------------------------------------------------------------------------------

def test_a_dicom_ecg_reaches_the_ecg_centre_worklist_matched_and_measured(db: Session, tele: TeleWorld) -> None:
    rec = _ingest(db, tele, dicom(tracing(heart_rate=75)), clinical_question="胸痛 1 小时")
    assert rec.patient_id == tele.patient.id and rec.patient_match == "matched"
    assert rec.source_format == "dicom" and rec.number_of_leads == 12 and rec.lead_names[:3] == ["I", "II", "III"]
    assert rec.quality_flags == [] and rec.measurable
    assert abs(rec.measurements["heart_rate_bpm"] - 75) <= 3
    assert "sinus_rhythm" in rec.suggested_codes
    request = db.get(ConsultRequest, rec.consult_request_id)
    assert request is not None and request.kind == ConsultKind.ECG and request.centre_id == tele.ecg_centre.id
    assert request.inviting_organisation_id == tele.town.id and request.patient_id == tele.patient.id
    assert request.priority == Priority.URGENT and request.state == ConsultState.REQUESTED
    assert request.clinical_question == "胸痛 1 小时"
    rows = consult.worklist(db, user=tele.senior, kind=ConsultKind.ECG)
    assert [r.id for r in rows] == [request.id]
    # The samples come back as stored: 1 µV steps.
    back = service.unpack(rec)
    original = formats.read_ecg(dicom(tracing(heart_rate=75)))
    assert np.max(np.abs(back["V2"] - original.leads["V2"])) <= 0.001
    event = db.execute(select(AuditEvent).where(AuditEvent.action == "ecg.ingest")).scalar_one()
    assert event.patient_id == tele.patient.id and event.user_id == tele.requester.id


def test_a_csv_without_a_chosen_patient_is_matched_on_name_birth_date_and_sex(db: Session, tele: TeleWorld) -> None:
    rec = _ingest(db, tele, csv(tracing(demographics=NAME_ONLY)))
    assert rec.patient_id == tele.patient.id and rec.patient_match == "matched"
    assert "出生日期" in rec.match_note


def test_the_same_tracing_twice_is_one_recording_and_one_request(db: Session, tele: TeleWorld) -> None:
    files = aecg(tracing())
    first = _ingest(db, tele, files)
    again = _ingest(db, tele, files)
    assert again.id == first.id
    assert _count(db, EcgRecording) == 1 and _count(db, ConsultRequest) == 1


def test_the_same_tracing_from_another_organisation_is_refused(db: Session, tele: TeleWorld) -> None:
    files = aecg(tracing())
    _ingest(db, tele, files)
    with pytest.raises(Conflict):
        service.ingest(db, files=files, organisation_id=tele.town_b.id, by=tele.town_b_doctor)


def test_a_flat_lead_is_flagged_kept_on_the_worklist_and_not_measured(db: Session, tele: TeleWorld) -> None:
    rec = _ingest(db, tele, csv(flat(tracing(), "V3")), patient_id=tele.patient.id)
    assert [(fl["code"], fl["lead"]) for fl in rec.quality_flags if fl["blocking"]] == [("flat_line", "V3")]
    assert not rec.measurable and rec.measurements == {} and rec.suggested_codes == []
    assert "V3" in rec.measure_note
    assert [r.id for r in consult.worklist(db, user=tele.senior, kind=ConsultKind.ECG)] == [rec.consult_request_id]


def test_missing_leads_are_flagged_by_name(db: Session, tele: TeleWorld) -> None:
    rec = _ingest(db, tele, csv(without(tracing(), "V4", "V5", "V6")), patient_id=tele.patient.id)
    missing = sorted(fl["lead"] for fl in rec.quality_flags if fl["code"] == "missing_lead")
    assert missing == ["V4", "V5", "V6"] and not rec.measurable and rec.number_of_leads == 9


def test_a_100_hz_recording_is_flagged_for_its_sampling_rate(db: Session, tele: TeleWorld) -> None:
    tr = tracing()
    slow = Tracing(leads={k: v[::5] for k, v in tr.leads.items()}, sample_rate=100, source_format="csv",
                   demographics=tr.demographics, acquired_at=tr.acquired_at)
    rec = _ingest(db, tele, csv(slow), patient_id=tele.patient.id)
    assert [fl["code"] for fl in rec.quality_flags if fl["blocking"]] == ["sample_rate"]
    assert "100" in rec.quality_flags[0]["message"] and not rec.measurable


@pytest.mark.parametrize(("files", "named"), [
    ({"ecg.bin": b"\x00\x01garbage" * 50}, "ecg.bin"),
    ({"ecg.dcm": b"\x00" * 128 + b"DICM" + b"\x02\x00garbage"}, "DICOM"),
    ({"rec.hea": b"rec 12 500 5000\n"}, ".dat"),
    ({}, "files"),
])
def test_unreadable_uploads_are_refused_naming_the_problem_and_nothing_is_written(
        db: Session, tele: TeleWorld, files: dict[str, bytes], named: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        service.ingest(db, files=files, organisation_id=tele.town.id, by=tele.requester)
    text = caught.value.message + str(caught.value.field_errors)
    assert named in text
    db.rollback()
    assert _count(db, EcgRecording) == 0 and _count(db, ConsultRequest) == 0


def test_another_organisations_patient_cannot_be_chosen(db: Session, tele: TeleWorld) -> None:
    stranger = f.patient(db, name="李四", registered_at=tele.town_b)
    db.commit()
    with pytest.raises(AccessDenied):
        service.ingest(db, files=csv(tracing(demographics=NAME_ONLY)), organisation_id=tele.town.id,
                       by=tele.requester, patient_id=stranger.id)
    db.rollback()
    assert _count(db, EcgRecording) == 0 and _count(db, ConsultRequest) == 0


def test_a_file_naming_someone_else_is_refused_for_the_chosen_patient(db: Session, tele: TeleWorld) -> None:
    from healthrelay.ecg.formats import Demographics
    from healthrelay.patients.identity import make_resident_id

    other = Demographics(name="张三", resident_id=make_resident_id("330100", NAME_ONLY.birth_date, 40, "M"))
    with pytest.raises(InvalidInput) as caught:
        service.ingest(db, files=csv(tracing(demographics=other)), organisation_id=tele.town.id, by=tele.requester,
                       patient_id=tele.patient.id)
    assert caught.value.code == "patient_mismatch"
    db.rollback()
    assert _count(db, EcgRecording) == 0


def test_an_uploader_may_only_send_for_their_own_organisation(db: Session, tele: TeleWorld) -> None:
    with pytest.raises(AccessDenied):
        service.ingest(db, files=csv(tracing()), organisation_id=tele.town_b.id, by=tele.requester)


def test_a_member_without_an_ecg_centre_is_told_so(db: Session, tele: TeleWorld) -> None:
    with pytest.raises(InvalidInput) as caught:
        service.ingest(db, files=csv(tracing(demographics=NAME_ONLY)), organisation_id=tele.outsider.id,
                       by=tele.outsider_doctor)
    assert caught.value.code == "no_ecg_centre"
    db.rollback()
    assert _count(db, EcgRecording) == 0 and _count(db, ConsultRequest) == 0


def test_an_unmatched_tracing_is_flagged_and_linked_by_hand(db: Session, tele: TeleWorld) -> None:
    from healthrelay.ecg.formats import Demographics

    rec = _ingest(db, tele, csv(tracing(demographics=Demographics(name="无名氏"))))
    assert rec.patient_id is None and rec.patient_match == "unmatched" and rec.match_note
    request = db.get(ConsultRequest, rec.consult_request_id)
    assert request is not None and request.patient_id is None
    service.link_patient(db, recording_id=rec.id, patient_id=tele.patient.id, by=tele.requester, reason="床旁核对")
    db.commit()
    db.refresh(request)
    assert rec.patient_id == tele.patient.id and rec.patient_match == "manual"
    assert request.patient_id == tele.patient.id
    move = db.execute(select(ConsultTransition).where(ConsultTransition.action == "link_patient")).scalar_one()
    assert move.by_user_id == tele.requester.id and move.reason == "床旁核对"
    with pytest.raises(Conflict):
        service.link_patient(db, recording_id=rec.id, patient_id=tele.patient.id, by=tele.requester)


def test_a_tracing_joins_the_open_ecg_request_made_for_the_patient(db: Session, tele: TeleWorld) -> None:
    asked = make_request(db, tele, centre_id=tele.ecg_centre.id, kind=ConsultKind.ECG, clinical_question="心悸")
    rec = _ingest(db, tele, csv(tracing()), patient_id=tele.patient.id)
    assert rec.consult_request_id == asked.id and _count(db, ConsultRequest) == 1
    # A second tracing for the same patient gets a request of its own.
    second = _ingest(db, tele, csv(tracing(seed=7)), patient_id=tele.patient.id)
    assert second.consult_request_id != asked.id


def test_a_bad_priority_and_question_are_named(db: Session, tele: TeleWorld) -> None:
    with pytest.raises(InvalidInput) as caught:
        service.ingest(db, files=csv(tracing()), organisation_id=tele.town.id, by=tele.requester,
                       priority="soon", clinical_question="x" * 2001)
    assert {e["field"] for e in caught.value.field_errors} == {"priority", "clinical_question"}


# --- the coded report ------------------------------------------------------------------------------------

def _claimed(db: Session, w: TeleWorld, *, stemi: bool = False, reader: object = None) -> EcgRecording:
    rec = _ingest(db, w, dicom(tracing(stemi=stemi)), patient_id=w.patient.id)
    consult.claim(db, by=reader or w.senior, request_id=rec.consult_request_id)  # type: ignore[arg-type]
    db.commit()
    return rec


def _coded(*codes: str, **measurements: object) -> reports.ReportInput:
    return reports.ReportInput(structured={"codes": list(codes), "measurements": measurements})


def test_a_coded_report_writes_its_text_and_its_hash_covers_the_codes(db: Session, tele: TeleWorld) -> None:
    rec = _claimed(db, tele)
    report = reports.sign(db, request_id=rec.consult_request_id, by=tele.senior,
                          data=_coded("sinus_rhythm", "normal_conduction", "normal_st_t", "normal",
                                      heart_rate_bpm="74", qtc_ms=421))
    db.commit()
    assert report.state == ReportState.SIGNED and not report.critical
    assert report.structured["codes"] == ["sinus_rhythm", "normal_conduction", "normal_st_t", "normal"]
    assert report.structured["measurements"] == {"heart_rate_bpm": 74.0, "qtc_ms": 421.0}
    assert "心率 74 bpm" in report.findings and "窦性心律" in report.findings
    assert report.impression == "正常心电图 / normal ECG"
    assert reports.verify(db, report)
    assert b'"structured"' in reports.canonical_content(report, request_number="x")
    report.structured = {**report.structured, "codes": ["sinus_rhythm", "abnormal"]}
    assert not reports.verify(db, report)


def test_a_report_without_codes_keeps_the_old_canonical_form(db: Session, tele: TeleWorld) -> None:
    request = make_request(db, tele, centre_id=tele.ecg_centre.id, kind=ConsultKind.ECG)
    consult.claim(db, by=tele.senior, request_id=request.id)
    report = reports.sign(db, request_id=request.id, by=tele.senior,
                          data=reports.ReportInput(findings="窦性心律", impression="正常心电图"))
    assert report.structured == {}
    assert b"structured" not in reports.canonical_content(report, request_number=request.number)


def test_unknown_codes_and_bad_measurements_are_named_and_nothing_is_saved(db: Session, tele: TeleWorld) -> None:
    rec = _claimed(db, tele)
    with pytest.raises(InvalidInput) as caught:
        reports.save_draft(db, request_id=rec.consult_request_id, by=tele.senior,
                           data=_coded("sinus_rhythm", "stemi_septal", qrs_ms="wide", pr_ms=5000))
    fields = {e["field"]: e["message"] for e in caught.value.field_errors}
    assert "stemi_septal" in fields["codes"]
    assert set(fields) == {"codes", "measurements.qrs_ms", "measurements.pr_ms"}
    db.rollback()
    assert reports.report_of(db, rec.consult_request_id) is None


def test_an_ecg_with_a_tracing_is_not_signed_without_a_conclusion(db: Session, tele: TeleWorld) -> None:
    rec = _claimed(db, tele)
    with pytest.raises(InvalidInput) as caught:
        reports.sign(db, request_id=rec.consult_request_id, by=tele.senior, data=_coded("sinus_rhythm"))
    assert "codes" in {e["field"] for e in caught.value.field_errors}
    db.rollback()
    assert reports.report_of(db, rec.consult_request_id) is None
    request = db.get(ConsultRequest, rec.consult_request_id)
    assert request is not None and request.state == ConsultState.ACCEPTED


def test_structured_content_is_refused_on_an_imaging_report(db: Session, tele: TeleWorld) -> None:
    request = make_request(db, tele)
    consult.claim(db, by=tele.senior, request_id=request.id)
    with pytest.raises(InvalidInput) as caught:
        reports.save_draft(db, request_id=request.id, by=tele.senior, data=_coded("normal"))
    assert caught.value.field_errors[0]["field"] == "structured"


def test_a_signed_stemi_is_critical_and_opens_the_chest_pain_pathway_and_a_transfer(
        db: Session, tele: TeleWorld) -> None:
    rec = _claimed(db, tele, stemi=True)
    assert "stemi_inferior" in rec.suggested_codes
    report = reports.sign(db, request_id=rec.consult_request_id, by=tele.senior,
                          data=_coded("sinus_rhythm", "st_elevation", "stemi_inferior"))
    db.commit()
    assert report.critical and report.critical_finding == "急性下壁ST段抬高型心肌梗死 / acute inferior STEMI"
    crit = db.execute(select(CriticalResult).where(CriticalResult.request_id == rec.consult_request_id)).scalar_one()
    assert crit.patient_id == tele.patient.id and "STEMI" in crit.finding
    case = db.execute(select(PathwayCase).where(PathwayCase.ecg_request_id == rec.consult_request_id)).scalar_one()
    assert case.patient_id == tele.patient.id and str(case.centre) == "chest_pain" and case.source == "ecg"
    nodes = {n.node: n.at for n in db.execute(select(PathwayNode).where(PathwayNode.case_id == case.id)).scalars()}
    assert nodes["first_ecg"] == rec.acquired_at and nodes["ecg_transmitted"] == rec.received_at
    assert nodes["ecg_read"] == report.signed_at == nodes["diagnosis"]
    call = db.execute(select(EmergencyCall).where(EmergencyCall.ecg_request_id == rec.consult_request_id)).scalar_one()
    assert call.pathway_case_id == case.id and call.patient_id == tele.patient.id
    assert str(call.category) == "chest_pain"


def test_the_clinics_first_contact_time_becomes_the_pathways_first_medical_contact(
        db: Session, tele: TeleWorld) -> None:
    """The village saw the patient before the tracing: that is where the chest-pain clock starts."""
    tr = tracing(stemi=True)
    seen = tr.acquired_at - timedelta(minutes=7)
    rec = _ingest(db, tele, dicom(tr), patient_id=tele.patient.id, first_contact_at=seen)
    assert rec.first_contact_at == seen
    consult.claim(db, by=tele.senior, request_id=rec.consult_request_id)
    reports.sign(db, request_id=rec.consult_request_id, by=tele.senior, data=_coded("stemi_inferior"))
    db.commit()
    case = db.execute(select(PathwayCase).where(PathwayCase.ecg_request_id == rec.consult_request_id)).scalar_one()
    nodes = {n.node: n.at for n in db.execute(select(PathwayNode).where(PathwayNode.case_id == case.id)).scalars()}
    assert nodes["first_medical_contact"] == seen and nodes["first_ecg"] == tr.acquired_at


def test_a_first_contact_after_the_tracing_or_in_the_future_is_refused_and_nothing_is_written(
        db: Session, tele: TeleWorld) -> None:
    tr = tracing(seed=21)
    for when, words in ((tr.acquired_at + timedelta(minutes=3), "after the ECG"),
                        (utcnow() + timedelta(hours=1), "in the future")):
        with pytest.raises(InvalidInput, match="first") as caught:
            service.ingest(db, files=dicom(tr), organisation_id=tele.town.id, by=tele.requester,
                           patient_id=tele.patient.id, first_contact_at=when)
        db.rollback()
        assert caught.value.field_errors == [{"field": "first_contact_at", "message": words}]
    assert _count(db, EcgRecording) == 0 and _count(db, ConsultRequest) == 0


def test_a_trainees_preliminary_stemi_opens_the_pathway_without_waiting(db: Session, tele: TeleWorld) -> None:
    rec = _claimed(db, tele, stemi=True, reader=tele.trainee)
    report = reports.sign(db, request_id=rec.consult_request_id, by=tele.trainee,
                          data=_coded("stemi_inferior"))
    db.commit()
    assert report.state == ReportState.AWAITING_COSIGN and report.critical
    assert _count(db, PathwayCase) == 1 and _count(db, CriticalResult) == 1


def test_a_pci_capable_sender_gets_the_pathway_but_no_transfer_call(db: Session, tele: TeleWorld) -> None:
    db.add(OrganisationCapability(organisation_id=tele.town.id, capability=Capability.PCI))
    db.commit()
    rec = _claimed(db, tele, stemi=True)
    reports.sign(db, request_id=rec.consult_request_id, by=tele.senior, data=_coded("stemi_inferior"))
    db.commit()
    assert _count(db, PathwayCase) == 1 and _count(db, EmergencyCall) == 0


def test_a_normal_ecg_opens_no_pathway(db: Session, tele: TeleWorld) -> None:
    rec = _claimed(db, tele)
    reports.sign(db, request_id=rec.consult_request_id, by=tele.senior, data=_coded("normal"))
    db.commit()
    assert _count(db, PathwayCase) == 0 and _count(db, EmergencyCall) == 0 and _count(db, CriticalResult) == 0


# --- the demo --------------------------------------------------------------------------------------------

def test_the_demo_ecgs_arrive_as_devices_send_them(built: list[str], db: Session) -> None:
    assert any(re.match(r"\[\d+/\d+\] ecg: 4 ECGs", line) for line in built)
    rows = {r.source_format: r for r in db.execute(select(EcgRecording)).scalars()}
    assert set(rows) == {"csv", "aecg", "dicom"}
    stemi = rows["dicom"]
    assert stemi.received_via == "dicom" and stemi.patient_match == "matched"
    assert "stemi_inferior" in stemi.suggested_codes
    request = db.get(ConsultRequest, stemi.consult_request_id)
    assert request is not None and request.priority == Priority.URGENT and request.state == ConsultState.REQUESTED
    states = sorted(str(db.get(ConsultRequest, r.consult_request_id).state)  # type: ignore[union-attr]
                    for r in db.execute(select(EcgRecording)).scalars())
    assert states == ["reported", "requested", "requested", "requested"]
    flagged = [r for r in db.execute(select(EcgRecording)).scalars() if not r.measurable]
    assert len(flagged) == 1 and flagged[0].quality_flags[0]["lead"] == "V4"
