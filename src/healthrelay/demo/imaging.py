"""Demo remote-diagnosis set-up: reading centres, routing rules and the DICOM modalities of the members.

Pure definitions (usable before the database exists, e.g. by `healthrelay demo-accounts --json`), then
`build_demo_imaging` writes them and sends a few synthetic studies through the real receiver code.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import User
from healthrelay.demo import county
from healthrelay.directory.models import Capability, Department, Organisation, OrgLevel
from healthrelay.imaging.models import Modality
from healthrelay.teleconsult.models import ConsultKind, Priority, ReadingCentre, RoutingRule

# Capability → (DICOM modality type, device name, AE title suffix).
_DEVICES = {Capability.CT: ("CT", "CT", "CT"), Capability.MRI: ("MR", "磁共振", "MR"),
            Capability.DR: ("DX", "DR 数字化X线摄影", "DR"), Capability.ULTRASOUND: ("US", "彩超", "US")}


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
    """One device per imaging capability at every hospital and health centre (not village clinics)."""
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
