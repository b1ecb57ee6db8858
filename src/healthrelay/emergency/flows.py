"""Who hears about a call or an ambulance, and when: live board updates, urgent messages, pre-alerts.

Called inside the service's transaction; the notifications domain holds everything back until it commits,
so a rolled-back dispatch alerts nobody. Messages carry the call number, the place and the ETA, never the
patient's name: they may leave the platform by SMS.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.directory.models import Department, Organisation, OrgKind, Post, Specialty
from healthrelay.emergency.models import Ambulance, CallCategory, EmergencyCall
from healthrelay.notifications import service as notifications

EVENT = "emergency.changed"
_STATION_KINDS = (OrgKind.EMERGENCY_STATION, OrgKind.EMERGENCY_SUBSTATION)
_CATEGORY_ZH = {"chest_pain": "胸痛", "stroke": "卒中", "trauma": "创伤", "critical_maternal": "危重孕产妇",
                "critical_neonatal": "危重新生儿", "other": "其他"}
# Whom a receiving hospital's pre-alert reaches: the department of the condition and the emergency department.
PRE_ALERT_SPECIALTIES = {CallCategory.CHEST_PAIN: ("cardiology", "emergency"),
                         CallCategory.STROKE: ("neurology", "emergency")}
_MAX_RECIPIENTS = 50


def _station_ids(db: Session) -> list[int]:
    return list(db.execute(select(Organisation.id).where(
        Organisation.kind.in_([str(k) for k in _STATION_KINDS]))).scalars())


def _publish(db: Session, org_ids: set[int | None], event: dict[str, Any]) -> None:
    for org_id in sorted(i for i in org_ids if i is not None):
        notifications.publish(db, topic=notifications.org_topic(org_id), event=event)


def call_changed(db: Session, *, call: EmergencyCall, action: str) -> None:
    """Every board (all stations), the receiving hospital and the asking member see the call move."""
    _publish(db, {*_station_ids(db), call.destination_organisation_id, call.from_organisation_id}, {
        "type": EVENT, "call_id": call.id, "state": str(call.state), "priority": call.priority, "action": action})


def ambulance_changed(db: Session, *, ambulance: Ambulance, call: EmergencyCall | None) -> None:
    _publish(db, {*_station_ids(db), call.destination_organisation_id if call else None}, {
        "type": EVENT, "ambulance_id": ambulance.id, "ambulance_state": str(ambulance.state),
        "call_id": call.id if call else None})


def transfer_requested(db: Session, *, call: EmergencyCall, from_org: Organisation) -> None:
    """A STEMI at a member without PCI: the dispatchers hear it at once, on every channel."""
    from healthrelay.emergency.service import dispatcher_user_ids

    users = dispatcher_user_ids(db, near_organisation_id=from_org.id)
    if users:
        label = _CATEGORY_ZH.get(str(call.category), "")
        notifications.send(db, user_ids=users, kind="emergency.transfer",
                           title=f"【一级】{label}转运请求 {call.number}：{from_org.name}",
                           body=f"心电诊断中心请求转运，请立即派车 / the ECG centre asks for a priority-1 transfer "
                                f"from {from_org.name_en or from_org.name}; dispatch now",
                           link=f"/emergency/calls/{call.id}", resource=f"call:{call.id}", urgent=True)


def pre_alert_user_ids(db: Session, *, destination: Organisation, category: CallCategory) -> list[int]:
    """The receiving hospital's clinicians of the condition's departments; its administrators when none."""
    specialties = PRE_ALERT_SPECIALTIES.get(category, ("emergency",))
    in_dept = exists().where(Post.practitioner_id == User.practitioner_id, Post.organisation_id == destination.id,
                             Post.department_id == Department.id, Department.specialty_id == Specialty.id,
                             Specialty.code.in_(specialties))
    ids = list(db.execute(select(User.id).where(User.organisation_id == destination.id, User.is_active.is_(True),
                                                User.role == Role.CLINICIAN, in_dept)
                          .order_by(User.id).limit(_MAX_RECIPIENTS)).scalars())
    if ids:
        return ids
    return list(db.execute(select(User.id).where(User.organisation_id == destination.id, User.is_active.is_(True),
                                                 User.role == Role.ORG_ADMIN).order_by(User.id)).scalars())


def ecg_link(db: Session, call: EmergencyCall) -> str:
    """Where the receiving team reads the pre-hospital ECG: the recording's viewer, else the ECG request."""
    if call.ecg_request_id is None:
        return ""
    try:
        from healthrelay.ecg.models import EcgRecording  # the ECG domain (optional here)
    except ImportError:
        EcgRecording = None  # noqa: N806
    column = None
    if EcgRecording is not None:
        column = getattr(EcgRecording, "consult_request_id", None) or getattr(EcgRecording, "request_id", None)
    if column is not None:
        rec_id = db.execute(select(EcgRecording.id).where(column == call.ecg_request_id)
                            .order_by(EcgRecording.id.desc()).limit(1)).scalar()
        if rec_id is not None:
            return f"/ecg/recordings/{rec_id}"
    return f"/teleconsult/{call.ecg_request_id}"


def pre_alert(db: Session, *, call: EmergencyCall, destination: Organisation, ambulance: Ambulance,
              eta_minutes: float | None) -> list[int]:
    """Tell the receiving hospital a chest-pain or stroke patient is coming, with the ETA and the ECG."""
    users = pre_alert_user_ids(db, destination=destination, category=CallCategory(call.category))
    if not users:
        return []
    label = _CATEGORY_ZH.get(str(call.category), "")
    eta = f"约 {round(eta_minutes)} 分钟后到达 / ETA about {round(eta_minutes)} min" if eta_minutes is not None else \
        "到达时间待定 / ETA unknown"
    ecg = ecg_link(db, call)
    body = f"{ambulance.code}（{call.address or '现场'}）{eta}"
    if ecg:
        body += "；院前心电图已传输，请查看 / pre-hospital ECG attached"
    notifications.send(db, user_ids=users, kind="emergency.pre_alert",
                       title=f"【预警】{label}患者转运中 {call.number} → {destination.name}", body=body,
                       link=ecg or f"/emergency/calls/{call.id}", resource=f"call:{call.id}", urgent=True)
    return users
