"""Demo remote-diagnosis set-up: reading centres, routing rules and the DICOM modalities of the members.

Pure definitions (usable before the database exists, e.g. by `healthrelay demo-accounts --json`), then
`build_demo_imaging` writes them and sends a few synthetic studies through the real receiver code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import User
from healthrelay.demo import county
from healthrelay.demo.phantom import PatientModule, ct_series, dx_image
from healthrelay.directory.models import Capability, Department, Organisation, OrgLevel
from healthrelay.imaging import service as imaging
from healthrelay.imaging.models import ImagingInstance, ImagingStudy, Modality
from healthrelay.patients.models import IdentifierType, Patient, PatientIdentifier, PatientRegistration
from healthrelay.teleconsult import reports
from healthrelay.teleconsult import service as consult
from healthrelay.teleconsult.models import ConsultKind, ConsultRequest, Priority, ReadingCentre, RoutingRule

# Capability → (DICOM modality type, device name, AE title suffix).
_DEVICES = {Capability.CT: ("CT", "CT", "CT"), Capability.MRI: ("MR", "磁共振", "MR"),
            Capability.DR: ("DX", "DR 数字化X线摄影", "DR"), Capability.ULTRASOUND: ("US", "彩超", "US"),
            Capability.ECG: ("ECG", "12 导联心电图机", "ECG")}


@dataclass(frozen=True)
class CentreDef:
    code: str
    name: str
    kind: str  # a teleconsult ConsultKind
    org_code: str
    dept_code: str


@dataclass(frozen=True)
class ModalityDef:
    ae_title: str
    org_code: str
    modality_type: str
    name: str
    contact_login: str | None  # the demo login told about this device's studies


CENTRES = (
    CentreDef("QX-RC-IMAGING", "青溪县医学影像中心", "imaging", county.COUNTY_HOSPITAL, "RADI"),
    CentreDef("QX-RC-ECG", "青溪县心电诊断中心", "ecg", county.COUNTY_HOSPITAL, "ECG"),
    CentreDef("QX-RC-PATH", "青溪县病理诊断中心", "pathology", county.COUNTY_HOSPITAL, "PATH"),
)

# Studies nobody asked for are routed: images to the imaging centre, ECGs to the ECG centre.
# (modality type or "" for any, centre code, priority)
ROUTING = (("CT", "QX-RC-IMAGING", "urgent"), ("MR", "QX-RC-IMAGING", "routine"),
           ("DX", "QX-RC-IMAGING", "routine"), ("CR", "QX-RC-IMAGING", "routine"),
           ("US", "QX-RC-IMAGING", "routine"), ("ECG", "QX-RC-ECG", "urgent"))

_CONTACTS = {"QX-C03": "doc.shimen", "QX-C04": "doc.baisha", "QX-C09": "doc.qingshan", "QX-C01": "doc.chengdong"}


def modalities() -> tuple[ModalityDef, ...]:
    """One device per imaging capability at every hospital, health centre and ambulance station (not village
    clinics): CT, MR, DR, ultrasound, and the ECG carts whose waveforms go to the ECG centre."""
    out = []
    for org in county.organisations():
        if org.level in (OrgLevel.VILLAGE, OrgLevel.PROVINCIAL) or not org.code.startswith("QX-"):
            continue
        for capability in org.capabilities:
            if capability not in _DEVICES:
                continue
            modality_type, device, suffix = _DEVICES[capability]
            ae_title = (org.code.replace("-", "") + suffix)[:16]
            out.append(ModalityDef(ae_title, org.code, modality_type, f"{org.name} {device}",
                                   _CONTACTS.get(org.code)))
    return tuple(out)


def build_demo_centres(db: Session) -> dict[str, int]:
    """Reading centres, routing rules and registered modalities, written once."""
    org_ids = dict(db.execute(select(Organisation.code, Organisation.id)).all())
    users = dict(db.execute(select(User.username, User.id)).all())
    centre_ids: dict[str, int] = {}
    for centre in CENTRES:
        dept_id = db.execute(select(Department.id).where(Department.organisation_id == org_ids[centre.org_code],
                                                         Department.code == centre.dept_code)).scalar()
        row = ReadingCentre(code=centre.code, name=centre.name, kind=ConsultKind(centre.kind),
                            organisation_id=org_ids[centre.org_code], department_id=dept_id)
        db.add(row)
        db.flush()
        centre_ids[centre.code] = row.id
    for position, (modality_type, centre_code, priority) in enumerate(ROUTING, start=1):
        db.add(RoutingRule(modality_type=modality_type, centre_id=centre_ids[centre_code],
                           priority=Priority(priority), position=position))
    devices = modalities()
    db.add_all(Modality(ae_title=m.ae_title, organisation_id=org_ids[m.org_code], modality_type=m.modality_type,
                        name=m.name, contact_user_id=users.get(m.contact_login) if m.contact_login else None)
               for m in devices)
    db.flush()
    return {"centres": len(CENTRES), "routing_rules": len(ROUTING), "modalities": len(devices)}


def _patient_module(db: Session, patient_id: int) -> PatientModule:
    """What the township's device would have been told: the resident ID as Patient ID, name in pinyin=汉字."""
    patient = db.get(Patient, patient_id)
    assert patient is not None
    resident_id = db.execute(select(PatientIdentifier.value).where(
        PatientIdentifier.patient_id == patient_id, PatientIdentifier.type == IdentifierType.RESIDENT_ID)).scalar()
    family, given = patient.pinyin.split(" ", 1) if " " in patient.pinyin else (patient.pinyin, "")
    dicom_name = f"{family.title()}^{given.replace(' ', '').title()}={patient.name[0]}^{patient.name[1:]}"
    return PatientModule(name=dicom_name, patient_id=resident_id or f"MRN{patient_id}",
                         birth_date=patient.birth_date.strftime("%Y%m%d"), sex=str(patient.sex)[:1].upper())


def _registered_adult(db: Session, organisation_id: int, *, skip: int = 0) -> int:
    """A resident registered at the organisation who has a resident ID (so the device's Patient ID matches)."""
    return db.execute(select(PatientRegistration.patient_id)
                      .join(PatientIdentifier, PatientIdentifier.patient_id == PatientRegistration.patient_id)
                      .where(PatientRegistration.organisation_id == organisation_id,
                             PatientIdentifier.type == IdentifierType.RESIDENT_ID)
                      .order_by(PatientRegistration.patient_id).offset(skip).limit(1)).scalar_one()


def _send(db: Session, files: Iterable[bytes], ae_title: str) -> ImagingStudy:
    """Through the receiver's own code path, as if the device had sent them by C-STORE."""
    device = db.execute(select(Modality).where(Modality.ae_title == ae_title)).scalar_one()
    study = None
    for data in files:
        study = imaging.ingest(db, data=data, received_via="dimse", calling_ae_title=ae_title, modality=device).study
    assert study is not None
    return study


def build_demo_studies(db: Session, *, now: datetime) -> dict[str, int]:
    """A few studies to read: one waiting on the worklist (a head CT with a bleed, sent by 石门镇), one
    reported, one waiting for a co-signature, one flagged because nobody matches its patient, and a prior
    from the county hospital to compare with."""
    org_ids = dict(db.execute(select(Organisation.code, Organisation.id)).all())
    users = {u.username: u for u in db.execute(select(User).where(User.username.in_(
        ("doc.shimen", "doc.baisha", "reader.imaging", "reader.trainee")))).scalars()}
    shimen_patient = _registered_adult(db, org_ids["QX-C03"])
    baisha_patient = _registered_adult(db, org_ids["QX-C04"])
    shimen = _patient_module(db, shimen_patient)
    made = {"studies": 0}

    # A prior from the county hospital, half a year ago: the viewer shows it beside today's study.
    prior = _send(db, ct_series(patient=shimen, slices=20, body="head", when=now - timedelta(days=183),
                                institution="青溪县人民医院"), "QXPHCT")
    assert prior.consult_request_id is not None
    consult.claim(db, by=users["reader.imaging"], request_id=prior.consult_request_id)
    reports.sign(db, request_id=prior.consult_request_id, by=users["reader.imaging"], data=reports.ReportInput(
        technique="头颅 CT 平扫，层厚 5 mm。",
        findings="脑实质密度均匀，未见异常密度影。脑室系统无扩大，中线结构居中。",
        impression="头颅 CT 平扫未见明显异常。", recommendation="", recognition_scope="county"))
    # Today: 石门镇's CT sends a head CT nobody asked for; the routing rule puts it on the worklist (urgent).
    _send(db, ct_series(patient=shimen, slices=24, body="head", bleed=True, when=now - timedelta(minutes=20),
                        institution="石门镇中心卫生院"), "QXC03CT")
    # 白沙镇 asked for a chest film, sent it with the request number as accession number; a senior reported it.
    request = consult.create_request(db, by=users["doc.baisha"], data=consult.RequestInput(
        patient_id=baisha_patient, centre_id=db.execute(select(ReadingCentre.id).where(
            ReadingCentre.code == "QX-RC-IMAGING")).scalar_one(), kind="imaging", priority="routine",
        clinical_question="咳嗽两周，排除肺炎", case_summary="男，咳嗽咳痰两周，无发热。", consent_kind="written"),
        created_via="web")
    _send(db, [dx_image(patient=_patient_module(db, baisha_patient), accession=request.number,
                        when=now - timedelta(hours=3), institution="白沙镇中心卫生院")], "QXC04DR")
    consult.claim(db, by=users["reader.imaging"], request_id=request.id)
    reports.sign(db, request_id=request.id, by=users["reader.imaging"], data=reports.ReportInput(
        technique="胸部正位 DR 摄影。", findings="两肺纹理稍增多，未见明确实变影。心影大小形态正常。双膈面光整。",
        impression="两肺纹理增多，考虑支气管炎；未见肺炎征象。", recommendation="结合临床，必要时复查。",
        recognition_scope="county"))
    # A trainee's report on another 白沙镇 film, waiting for a senior's co-signature.
    second = _registered_adult(db, org_ids["QX-C04"], skip=1)
    study = _send(db, [dx_image(patient=_patient_module(db, second), when=now - timedelta(hours=1),
                                institution="白沙镇中心卫生院")], "QXC04DR")
    trainee_request = db.get(ConsultRequest, study.consult_request_id)
    assert trainee_request is not None
    consult.claim(db, by=users["reader.trainee"], request_id=trainee_request.id)
    reports.sign(db, request_id=trainee_request.id, by=users["reader.trainee"], data=reports.ReportInput(
        technique="胸部正位 DR 摄影。", findings="右下肺野见斑片状密度增高影，边缘模糊。",
        impression="右下肺炎可能。", recommendation="抗感染治疗后两周复查。"))
    # A film from 青山乡 whose Patient ID and name match nobody: flagged for someone to link by hand.
    stranger = PatientModule(name="Zhao^Weiming=赵^未明", patient_id="QS-000123", birth_date="19580101", sex="M")
    _send(db, [dx_image(patient=stranger, when=now - timedelta(hours=2), institution="青山乡卫生院")], "QXC09DR")
    made["studies"] = db.execute(select(func.count()).select_from(ImagingStudy)).scalar_one()
    made["instances"] = db.execute(select(func.count()).select_from(ImagingInstance)).scalar_one()
    return made
