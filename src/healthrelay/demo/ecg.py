"""Demo tele-ECG: a few synthetic 12-lead ECGs sent by members the way their devices would send them.

Every tracing goes through the real `ecg.service.ingest` (files in the device's format, the patient matched
on what the device recorded): a normal ECG from 白沙镇 already reported, a village clinic's ECG waiting on
the ECG centre's worklist, one flagged for a flat lead, and an inferior STEMI sent by 石门镇's ECG cart over
DICOM, waiting, urgent.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import User
from healthrelay.demo import county
from healthrelay.ecg import formats
from healthrelay.ecg import service as ecg
from healthrelay.ecg.formats import Demographics, Tracing
from healthrelay.ecg.models import EcgRecording
from healthrelay.ecg.synthetic import INFERIOR_STEMI, synthetic_12_lead
from healthrelay.imaging.service import ingest_ecg
from healthrelay.patients.models import IdentifierType, Patient, PatientIdentifier, PatientRegistration
from healthrelay.teleconsult import reports
from healthrelay.teleconsult import service as consult

ECG_CART_AE = "QXC03ECG"


def _patient(db: Session, organisation_id: int, *, skip: int = 0) -> Patient:
    """A resident registered at the organisation (or its township) who has a resident ID."""
    found = db.execute(select(Patient).join(PatientRegistration, PatientRegistration.patient_id == Patient.id)
                       .join(PatientIdentifier, PatientIdentifier.patient_id == Patient.id)
                       .where(PatientRegistration.organisation_id == organisation_id,
                              PatientIdentifier.type == IdentifierType.RESIDENT_ID, Patient.merged_into_id.is_(None))
                       .order_by(Patient.id).offset(skip).limit(1)).scalar()
    assert found is not None, f"no resident with an ID registered at organisation {organisation_id}"
    return found


def _demographics(db: Session, patient: Patient) -> Demographics:
    resident_id = db.execute(select(PatientIdentifier.value).where(
        PatientIdentifier.patient_id == patient.id, PatientIdentifier.type == IdentifierType.RESIDENT_ID)).scalar()
    return Demographics(name=patient.name, resident_id=resident_id or "", birth_date=patient.birth_date,
                        sex=str(patient.sex)[:1].upper())


def _tracing(db: Session, patient: Patient, *, seed: int, heart_rate: float, when: datetime,
             stemi: bool = False) -> Tracing:
    return synthetic_12_lead(heart_rate=heart_rate, seed=seed, noise_mv=0.012,
                             st_elevation_mv=INFERIOR_STEMI if stemi else None,
                             demographics=_demographics(db, patient), acquired_at=when.replace(microsecond=0))


def build_demo_ecgs(db: Session, *, now: datetime) -> dict[str, int]:
    """Four ECGs on the county ECG centre (needs the demo centres, logins and residents)."""
    from healthrelay.directory.models import Organisation

    org_ids = dict(db.execute(select(Organisation.code, Organisation.id)).all())
    users = {u.username: u for u in db.execute(select(User).where(User.username.in_(
        ("doc.shimen", "doc.baisha", "doc.qingshan", "reader.ecg")))).scalars()}
    shimen, baisha, qingshan = (county.centre_code(county.TOWNSHIPS[n - 1]) for n in (3, 4, 9))
    village = county.geography().villages_by_township[3][0]
    village_doctor = db.execute(select(User).where(User.organisation_id == org_ids[village.clinic_code])
                                .order_by(User.id).limit(1)).scalar()

    # 白沙镇: a resting ECG exported as CSV, read and signed as normal this morning.
    p_normal = _patient(db, org_ids[baisha])
    normal = ecg.ingest(db, files={"baisha-ecg.csv": formats.to_csv(_tracing(
        db, p_normal, seed=11, heart_rate=68, when=now - timedelta(hours=3)))}, organisation_id=org_ids[baisha],
        by=users["doc.baisha"], patient_id=p_normal.id, priority="routine", clinical_question="体检心电图",
        via="web")
    reader = users["reader.ecg"]
    consult.claim(db, by=reader, request_id=normal.consult_request_id)
    reports.sign(db, request_id=normal.consult_request_id, by=reader, data=reports.ReportInput(structured={
        "codes": ["sinus_rhythm", "normal_conduction", "normal_st_t", "normal"],
        "measurements": {k: normal.measurements[k] for k in ("heart_rate_bpm", "pr_ms", "qrs_ms", "qtc_ms")
                         if normal.measurements.get(k) is not None}}))

    # A village clinic of 石门镇: an aECG from its portable cart, waiting on the worklist (matched by resident ID).
    p_village = _patient(db, org_ids[shimen], skip=3)
    sender = village_doctor or users["doc.shimen"]
    ecg.ingest(db, files={"village.xml": formats.to_aecg(_tracing(
        db, p_village, seed=12, heart_rate=96, when=now - timedelta(minutes=40)))},
        organisation_id=sender.organisation_id or org_ids[shimen], by=sender, priority="urgent",
        clinical_question="心悸半天", via="web")

    # 青山乡: a tracing with the V4 electrode off (a flat line): kept, flagged, not measured.
    p_flat = _patient(db, org_ids[qingshan])
    tr = _tracing(db, p_flat, seed=13, heart_rate=80, when=now - timedelta(minutes=25))
    tr.leads["V4"] = tr.leads["V4"] * 0.0
    ecg.ingest(db, files={"qingshan.csv": formats.to_csv(tr)}, organisation_id=org_ids[qingshan],
               by=users["doc.qingshan"], patient_id=p_flat.id, priority="routine", clinical_question="胸闷",
               via="web")

    # 石门镇's ECG cart sends an inferior STEMI over DICOM: urgent by the routing rule, waiting for a reader.
    p_stemi = _patient(db, org_ids[shimen], skip=1)
    ingest_ecg(db, data=formats.to_dicom(_tracing(db, p_stemi, seed=14, heart_rate=88, stemi=True,
                                                  when=now - timedelta(minutes=12))),
               received_via="dimse", organisation_id=org_ids[shimen], calling_ae_title=ECG_CART_AE)
    db.flush()
    return {"ecgs": db.execute(select(func.count()).select_from(EcgRecording)).scalar_one()}
