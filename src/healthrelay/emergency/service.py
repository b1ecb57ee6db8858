"""The emergency alliance (急救联盟): 120 calls, ambulances and their one state machine.

Every ambulance move goes through `change_ambulance_state` (dispatching through `dispatch`), a conditional
UPDATE on the state the caller read, so of two dispatchers sending the same ambulance exactly one wins and
the other is told who has it. The ambulance's moves set the call's times (departed, on scene, left scene,
at hospital) and, for a call on a time-critical pathway, record the pathway's nodes. Each change is logged
(`AmbulanceStateChange` with time, position and who; `CallEvent` for the call) and audited.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import case, exists, select, update
from sqlalchemy.orm import Session

from healthrelay.access import service as access
from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.core.db import take_sqlite_write_lock, utcnow
from healthrelay.core.errors import AccessDenied, Conflict, DomainError, InvalidInput, NotFound, field_error
from healthrelay.directory.models import AllianceMembership, Area, AreaLevel, Organisation, OrgKind
from healthrelay.emergency import flows as announce
from healthrelay.emergency.models import (
    Ambulance,
    AmbulanceKind,
    AmbulanceState,
    AmbulanceStateChange,
    CallCategory,
    CallEvent,
    CallState,
    EmergencyCall,
    EmergencySetting,
    ResponseTarget,
)
from healthrelay.patients.models import Patient

_SHANGHAI = ZoneInfo("Asia/Shanghai")
STATION_KINDS = (OrgKind.EMERGENCY_STATION, OrgKind.EMERGENCY_SUBSTATION)
# Who runs the board: dispatchers (and ambulance crews, who sign in as dispatchers of their station), the
# stations' administrators and the alliance's.
BOARD_ROLES = frozenset({Role.DISPATCHER, Role.ORG_ADMIN, Role.ALLIANCE_ADMIN})
SOURCES = ("120", "ecg_centre", "transfer")
PRIORITIES = (1, 2, 3, 4)
OPEN_CALL_STATES = (CallState.RECEIVED, CallState.ANSWERED, CallState.DISPATCHED, CallState.ON_SCENE,
                    CallState.TRANSPORTING, CallState.AT_HOSPITAL)
ENDED_CALL_STATES = (CallState.CLOSED, CallState.CANCELLED)
CARE_RELATIONSHIP_DAYS_AFTER = 30
URBAN_LOOKUP_KM = 3.0
MAX_TEXT = 2000

# The five centres (五大中心) a call category belongs to.
CENTRE_OF = {CallCategory.CHEST_PAIN: "chest_pain", CallCategory.STROKE: "stroke", CallCategory.TRAUMA: "trauma",
             CallCategory.CRITICAL_MATERNAL: "maternal", CallCategory.CRITICAL_NEONATAL: "neonatal"}

CATEGORY_ZH = {CallCategory.CHEST_PAIN: "胸痛", CallCategory.STROKE: "卒中", CallCategory.TRAUMA: "创伤",
               CallCategory.CRITICAL_MATERNAL: "危重孕产妇", CallCategory.CRITICAL_NEONATAL: "危重新生儿",
               CallCategory.OTHER: "其他"}
AMB_STATE_ZH = {AmbulanceState.AVAILABLE: "待命", AmbulanceState.DISPATCHED: "已派车",
                AmbulanceState.EN_ROUTE: "出车途中",
                AmbulanceState.ON_SCENE: "到达现场", AmbulanceState.TRANSPORTING: "转运途中",
                AmbulanceState.AT_HOSPITAL: "到达医院", AmbulanceState.RETURNING: "返站途中",
                AmbulanceState.OUT_OF_SERVICE: "停用"}
CALL_STATE_ZH = {CallState.RECEIVED: "来电", CallState.ANSWERED: "已受理", CallState.DISPATCHED: "已派车",
                 CallState.ON_SCENE: "现场救治", CallState.TRANSPORTING: "转运中", CallState.AT_HOSPITAL: "已送达",
                 CallState.CLOSED: "已结束", CallState.CANCELLED: "已取消"}

A = AmbulanceState
C = CallState

# The ambulance state machine, all of it: (from, to) -> what the move does to the ambulance's call.
#   "dispatch"  only through dispatch() (it needs a call and a destination)
#   a CallState the call moves to (with its time), "depart" (sets departed_at only), "stand_down"
#   (the call goes back to the board), "close" (the call ends), None (no call involved).
# Out of service is allowed from any in-service state, but only when the ambulance is not on a call.
AMBULANCE_TRANSITIONS: dict[tuple[AmbulanceState, AmbulanceState], str | None] = {
    (A.AVAILABLE, A.DISPATCHED): "dispatch",
    (A.DISPATCHED, A.EN_ROUTE): "depart",
    (A.DISPATCHED, A.AVAILABLE): "stand_down",
    (A.EN_ROUTE, A.ON_SCENE): str(C.ON_SCENE),
    (A.EN_ROUTE, A.RETURNING): "stand_down",
    (A.ON_SCENE, A.TRANSPORTING): str(C.TRANSPORTING),
    (A.ON_SCENE, A.RETURNING): "close",  # treated on scene, or the patient refused transport
    (A.TRANSPORTING, A.AT_HOSPITAL): str(C.AT_HOSPITAL),
    (A.AT_HOSPITAL, A.RETURNING): "close",
    (A.RETURNING, A.AVAILABLE): None,
    (A.OUT_OF_SERVICE, A.AVAILABLE): None,
    **{(s, A.OUT_OF_SERVICE): None for s in AmbulanceState if s != A.OUT_OF_SERVICE},
}
# Moves that need a reason in the log (the board must know why a car stood down or went off the road).
REASON_REQUIRED = frozenset({(A.DISPATCHED, A.AVAILABLE), (A.EN_ROUTE, A.RETURNING), (A.ON_SCENE, A.RETURNING),
                             *((s, A.OUT_OF_SERVICE) for s in AmbulanceState)})

# The call's own machine; the ambulance's moves drive most of it.
CALL_TRANSITIONS: frozenset[tuple[CallState, CallState]] = frozenset({
    (C.RECEIVED, C.ANSWERED), (C.RECEIVED, C.CANCELLED),
    (C.ANSWERED, C.DISPATCHED), (C.ANSWERED, C.CANCELLED),
    (C.DISPATCHED, C.ON_SCENE), (C.DISPATCHED, C.ANSWERED), (C.DISPATCHED, C.CANCELLED),
    (C.ON_SCENE, C.TRANSPORTING), (C.ON_SCENE, C.CLOSED),
    (C.TRANSPORTING, C.AT_HOSPITAL),
    (C.AT_HOSPITAL, C.CLOSED),
})
_CALL_TIME_OF = {C.ANSWERED: "answered_at", C.DISPATCHED: "dispatched_at", C.ON_SCENE: "on_scene_at",
                 C.TRANSPORTING: "left_scene_at", C.AT_HOSPITAL: "at_hospital_at", C.CLOSED: "closed_at",
                 C.CANCELLED: "closed_at"}

DEFAULT_SETTINGS = {"mobile_icu_margin_minutes": 3.0, "thrombolysis_window_minutes": 270.0,
                    "door_to_needle_minutes": 60.0}


def _amb_text(state: AmbulanceState | str) -> str:
    return f"“{AMB_STATE_ZH.get(AmbulanceState(state), state)}”（{state}）"


def _actor(user: User | None, client_address: str = "") -> audit.Actor:
    return access.actor_of(user, client_address) if user is not None else audit.Actor(username="system")


# --- data the county tunes ------------------------------------------------------------------------

def setting(db: Session, key: str) -> float:
    row = db.get(EmergencySetting, key)
    return row.value if row is not None else DEFAULT_SETTINGS[key]


def response_targets(db: Session) -> dict[str, ResponseTarget]:
    return {t.code: t for t in db.execute(select(ResponseTarget)).scalars()}


# --- places ---------------------------------------------------------------------------------------

def station_organisations(db: Session) -> list[Organisation]:
    """The emergency stations and sub-stations of the directory (急救站、急救分站)."""
    return list(db.execute(select(Organisation).where(Organisation.kind.in_([str(k) for k in STATION_KINDS]))
                           .order_by(Organisation.kind, Organisation.id)).scalars())


def is_station(db: Session, organisation_id: int | None) -> bool:
    if organisation_id is None:
        return False
    org = db.get(Organisation, organisation_id)
    return org is not None and org.kind in STATION_KINDS


def _is_urban_township(area: Area) -> bool:
    # A 街道 (urban subdistrict) is the county seat's town by definition; towns (镇) and xiang (乡) are not.
    return area.level == AreaLevel.TOWNSHIP and area.name.endswith("街道")


def is_urban_area(db: Session, area: Area) -> bool:
    """Inside the county seat's town: the area is a 街道 or a community/village under one."""
    if _is_urban_township(area):
        return True
    parent = db.get(Area, area.parent_id) if area.parent_id is not None else None
    return parent is not None and _is_urban_township(parent)


def nearest_area(db: Session, latitude: float, longitude: float, *, within_km: float = URBAN_LOOKUP_KM) -> Area | None:
    """The village (or township) whose point is nearest, if one lies within `within_km` (a bounding box first)."""
    from healthrelay.directory.service import great_circle_km

    dlat = within_km / 111.0
    dlon = within_km / (111.0 * max(0.1, math.cos(math.radians(latitude))))
    rows = db.execute(select(Area).where(Area.level.in_([str(AreaLevel.VILLAGE), str(AreaLevel.TOWNSHIP)]),
                                         Area.latitude.between(latitude - dlat, latitude + dlat),
                                         Area.longitude.between(longitude - dlon, longitude + dlon))).scalars()
    best: tuple[float, Area] | None = None
    for area in rows:
        assert area.latitude is not None and area.longitude is not None
        d = great_circle_km(latitude, longitude, area.latitude, area.longitude)
        if d <= within_km and (best is None or d < best[0]):
            best = (d, area)
    return best[1] if best else None


# --- access ---------------------------------------------------------------------------------------

def may_use_board(db: Session, user: User) -> bool:
    """Dispatchers and crews of a station, a station's administrators, and the alliance's administrators."""
    if not user.is_active or user.role not in BOARD_ROLES:
        return False
    if user.role == Role.ALLIANCE_ADMIN:
        return True
    return is_station(db, user.organisation_id)


def require_board(db: Session, user: User) -> None:
    if not may_use_board(db, user):
        raise AccessDenied("只有急救站调度员、急救人员和管理员可以使用调度台 / only the emergency stations' "
                           "dispatchers, crews and administrators use the dispatch board", code="not_a_dispatcher")


def may_see_metrics(db: Session, user: User) -> bool:
    """Aggregates without names: the board's users and the health bureau."""
    return user.is_active and (user.role == Role.HEALTH_BUREAU or may_use_board(db, user))


def require_metrics(db: Session, user: User) -> None:
    if not may_see_metrics(db, user):
        raise AccessDenied("无权查看急救质控指标 / you may not see the emergency response metrics")


def may_crew(db: Session, user: User, ambulance: Ambulance) -> bool:
    """The crew of an ambulance are the dispatcher-role accounts of its station; dispatchers anywhere may act
    for a crew that radios in, and so may the alliance's administrators."""
    return may_use_board(db, user)


def may_view_call(db: Session, user: User, call: EmergencyCall) -> bool:
    """The board's users, and the staff of the receiving hospital and of the member that asked for a transfer."""
    if may_use_board(db, user):
        return True
    return user.organisation_id is not None and user.role != Role.PATIENT and user.organisation_id in (
        call.destination_organisation_id, call.from_organisation_id)


@access.care_relationship_check
def _party_to_emergency_call(db: Session, user: User, patient_id: int) -> str | None:
    """Dispatchers and crews of the stations, and the receiving hospital's staff, care for the patient of a
    call while it is open and for 30 days after it ends."""
    if user.organisation_id is None:
        return None
    since = utcnow() - timedelta(days=CARE_RELATIONSHIP_DAYS_AFTER)
    recent = EmergencyCall.closed_at.is_(None) | (EmergencyCall.closed_at >= since)
    if user.role == Role.DISPATCHER and is_station(db, user.organisation_id):
        found = db.execute(select(exists().where(EmergencyCall.patient_id == patient_id, recent))).scalar()
    else:
        org = user.organisation_id
        found = db.execute(select(exists().where(
            EmergencyCall.patient_id == patient_id, recent,
            (EmergencyCall.destination_organisation_id == org) | (EmergencyCall.from_organisation_id == org)))).scalar()
    return "emergency_call" if found else None


# --- loading --------------------------------------------------------------------------------------

def get_call(db: Session, call_id: int) -> EmergencyCall:
    call = db.get(EmergencyCall, call_id)
    if call is None:
        raise NotFound(f"没有编号为 {call_id} 的急救呼叫 / no emergency call {call_id}")
    return call


def get_ambulance(db: Session, ambulance_id: int) -> Ambulance:
    amb = db.get(Ambulance, ambulance_id)
    if amb is None:
        raise NotFound(f"没有编号为 {ambulance_id} 的救护车 / no ambulance {ambulance_id}")
    return amb


def get_call_for(db: Session, *, user: User, call_id: int, client_address: str = "") -> EmergencyCall:
    """The call, if the user may see it; the read is audited (it names the caller and may name a patient)."""
    call = get_call(db, call_id)
    if not may_view_call(db, user, call):
        raise AccessDenied("无权查看该急救呼叫 / you may not see this emergency call")
    audit.record(db, actor=_actor(user, client_address), action="emergency.call.read", patient_id=call.patient_id,
                 resource=f"call:{call.id}", purpose="emergency")
    return call


def open_calls(db: Session, *, limit: int = 200) -> list[EmergencyCall]:
    """The board's calls: open ones, most urgent first (an ECG centre's STEMI transfer tops its priority), then
    longest waiting (read off the partial index)."""
    transfer_first = case((EmergencyCall.source == "ecg_centre", 0), else_=1)
    return list(db.execute(select(EmergencyCall).where(EmergencyCall.state.in_([str(s) for s in OPEN_CALL_STATES]))
                           .order_by(EmergencyCall.priority, transfer_first, EmergencyCall.received_at)
                           .limit(limit)).scalars())


def ambulances(db: Session) -> list[Ambulance]:
    return list(db.execute(select(Ambulance).order_by(Ambulance.station_organisation_id, Ambulance.code)).scalars())


def ambulance_log(db: Session, *, ambulance_id: int | None = None, call_id: int | None = None,
                  limit: int = 200) -> list[AmbulanceStateChange]:
    q = select(AmbulanceStateChange)
    if ambulance_id is not None:
        q = q.where(AmbulanceStateChange.ambulance_id == ambulance_id)
    if call_id is not None:
        q = q.where(AmbulanceStateChange.call_id == call_id)
    return list(db.execute(q.order_by(AmbulanceStateChange.at.desc(), AmbulanceStateChange.id.desc())
                           .limit(limit)).scalars())


def call_events(db: Session, call_id: int) -> list[CallEvent]:
    return list(db.execute(select(CallEvent).where(CallEvent.call_id == call_id).order_by(CallEvent.id)).scalars())


def allowed_next_states(ambulance: Ambulance) -> list[AmbulanceState]:
    """What the crew page offers: the table's next states, except dispatching (the board does that) and going
    out of service while on a call."""
    current = AmbulanceState(ambulance.state)
    out = []
    for (src, dst), effect in AMBULANCE_TRANSITIONS.items():
        if src != current or effect == "dispatch":
            continue
        if dst == A.OUT_OF_SERVICE and ambulance.current_call_id is not None:
            continue
        out.append(dst)
    return out


# --- creating calls -------------------------------------------------------------------------------

@dataclass
class CallInput:
    """What the dispatcher takes down on the phone."""

    category: CallCategory | str
    priority: int
    complaint: str = ""
    caller_name: str = ""
    caller_phone: str = ""
    area_id: int | None = None
    latitude: float | None = None
    longitude: float | None = None
    address: str = ""
    patient_id: int | None = None
    received_at: datetime | None = None  # when the form opened (the phone rang); default now
    answered_at: datetime | None = None  # when it was saved; default now
    onset_at: datetime | None = None
    urban: bool | None = None  # None: decided from the place


@dataclass
class _Place:
    area: Area | None
    latitude: float
    longitude: float
    urban: bool


def _resolve_place(db: Session, data: CallInput, errors: list[dict[str, Any]]) -> _Place | None:
    from healthrelay.directory.service import check_coordinates

    area = None
    if data.area_id is not None:
        area = db.get(Area, data.area_id)
        if area is None:
            errors.append(field_error("area_id", f"没有编号为 {data.area_id} 的村镇 / unknown area {data.area_id}"))
            return None
    lat, lon = data.latitude, data.longitude
    if lat is not None or lon is not None:
        try:
            check_coordinates(lat, lon)
        except InvalidInput as exc:
            errors.extend(field_error(e["field"], f"坐标超出范围或不完整 / {e['message']}") for e in exc.field_errors)
            return None
    elif area is not None:
        if area.latitude is None or area.longitude is None:
            errors.append(field_error("area_id", f"{area.name} 没有坐标，请填写经纬度 / {area.name} has no "
                                                 "coordinates; give latitude and longitude"))
            return None
        lat, lon = area.latitude, area.longitude
    else:
        errors.append(field_error("area_id", "请选择村镇或填写经纬度 / choose a village or town, or give coordinates"))
        return None
    assert lat is not None and lon is not None
    if data.urban is not None:
        urban = data.urban
    else:
        place = area if area is not None else nearest_area(db, lat, lon)
        urban = place is not None and is_urban_area(db, place)
    return _Place(area=area, latitude=lat, longitude=lon, urban=urban)


def _check_times(data: CallInput, now: datetime, errors: list[dict[str, Any]]) -> tuple[datetime, datetime]:
    received = data.received_at or now
    answered = data.answered_at or now
    for name, value in (("received_at", data.received_at), ("answered_at", data.answered_at),
                        ("onset_at", data.onset_at)):
        if value is not None and value.tzinfo is None:
            errors.append(field_error(name, "须带时区 / must carry a time zone"))
            return now, now
        if value is not None and value > now + timedelta(minutes=2):
            errors.append(field_error(name, "不能晚于现在 / cannot be in the future"))
    if received > answered:
        errors.append(field_error("answered_at", "接听时间早于来电时间 / answered before the call was received"))
    if received < now - timedelta(days=2):
        errors.append(field_error("received_at", "来电时间须在两天之内 / the call must be from the last two days"))
    if data.onset_at is not None and data.onset_at > received:
        errors.append(field_error("onset_at", "发病时间晚于来电 / onset after the call"))
    return received, answered


def validate_call(db: Session, data: CallInput, *, now: datetime | None = None) -> tuple[_Place, datetime, datetime]:
    """Every problem of the intake at once, field by field."""
    now = now or utcnow()
    errors: list[dict[str, Any]] = []
    try:
        CallCategory(data.category)
    except ValueError:
        errors.append(field_error("category", f"未知的呼叫类别 {data.category} / unknown category"))
    if data.priority not in PRIORITIES:
        errors.append(field_error("priority", "优先级须为 1（危重）到 4 / priority must be 1 (critical) to 4"))
    for name, value, limit in (("complaint", data.complaint, MAX_TEXT), ("caller_name", data.caller_name, 100),
                               ("caller_phone", data.caller_phone, 40), ("address", data.address, 300)):
        if len(value) > limit:
            errors.append(field_error(name, f"最多 {limit} 字 / at most {limit} characters"))
    if not data.complaint.strip():
        errors.append(field_error("complaint", "请填写主诉 / the complaint is required"))
    phone = data.caller_phone.strip()
    if phone and not all(ch.isdigit() or ch in "+- " for ch in phone):
        errors.append(field_error("caller_phone", "电话号码只能含数字 / the phone number may hold digits only"))
    place = _resolve_place(db, data, errors)
    received, answered = _check_times(data, now, errors)
    if data.patient_id is not None and db.get(Patient, data.patient_id) is None:
        errors.append(field_error("patient_id", f"没有编号为 {data.patient_id} 的居民 / unknown patient"))
    if errors:
        raise InvalidInput("急救呼叫信息有误，请检查标红的栏目 / the call has problems; see the marked fields",
                           field_errors=errors)
    assert place is not None
    return place, received, answered


def _new_number(call: EmergencyCall) -> str:
    day = call.received_at.astimezone(_SHANGHAI).strftime("%Y%m%d")
    return f"JJ{day}-{call.id:04d}"


def _event(db: Session, call: EmergencyCall, *, action: str, from_state: str, to_state: str, by: User | None,
           at: datetime, reason: str = "", detail: dict[str, Any] | None = None) -> CallEvent:
    row = CallEvent(call_id=call.id, action=action, from_state=from_state, to_state=to_state, at=at,
                    by_user_id=by.id if by else None, reason=reason, detail=detail or {})
    db.add(row)
    return row


def create_call(db: Session, *, by: User | None, data: CallInput, source: str = "120",
                from_organisation_id: int | None = None,
                pathway_case_id: int | None = None, ecg_request_id: int | None = None,
                client_address: str = "", check_board: bool = True) -> EmergencyCall:
    """Take a call down (answered on save). The board of every station hears of it at once."""
    if check_board:
        if by is None:
            raise AccessDenied("请先登录 / sign in first")
        require_board(db, by)
    if source not in SOURCES:
        raise InvalidInput(f"未知的来源 {source} / unknown source", field_errors=[field_error("source", source)])
    now = utcnow()
    place, received, answered = validate_call(db, data, now=now)
    patient_id = access.resolve_patient(db, data.patient_id).id if data.patient_id is not None else None
    call = EmergencyCall(
        number=f"tmp-{uuid.uuid4().hex}", category=CallCategory(data.category),
        priority=data.priority, caller_name=data.caller_name.strip(), caller_phone=data.caller_phone.strip(),
        complaint=data.complaint.strip(), area_id=place.area.id if place.area else None,
        latitude=place.latitude, longitude=place.longitude, address=data.address.strip(), urban=place.urban,
        patient_id=patient_id, onset_at=data.onset_at, state=CallState.ANSWERED, received_at=received,
        answered_at=answered, source=source, from_organisation_id=from_organisation_id,
        pathway_case_id=pathway_case_id, ecg_request_id=ecg_request_id, created_by_user_id=by.id if by else None,
        recommendation={}, created_at=now, updated_at=now)
    db.add(call)
    db.flush()
    call.number = _new_number(call)
    _event(db, call, action="receive", from_state="", to_state=str(CallState.RECEIVED), by=by, at=received)
    _event(db, call, action="answer", from_state=str(CallState.RECEIVED), to_state=str(CallState.ANSWERED), by=by,
           at=answered, detail={"source": source})
    db.flush()
    audit.record(db, actor=_actor(by, client_address), action="emergency.call.create", patient_id=patient_id,
                 resource=f"call:{call.id}", detail={"number": call.number, "category": str(call.category),
                                                     "priority": call.priority, "source": source})
    announce.call_changed(db, call=call, action="create")
    return call


def open_transfer_call(db: Session, *, patient_id: int | None, from_organisation_id: int, category: str,
                       complaint: str, pathway_case_id: int | None, ecg_request_id: int | None,
                       by: User | None) -> EmergencyCall:
    """A transfer the ECG centre raises for a STEMI found at a village or township: priority 1, at the member's
    coordinates; the stations' dispatchers are told at once (urgent) and it tops the board."""
    org = db.get(Organisation, from_organisation_id)
    if org is None:
        raise InvalidInput(f"没有编号为 {from_organisation_id} 的机构 / unknown organisation",
                           field_errors=[field_error("from_organisation_id", "unknown organisation")])
    if org.latitude is None or org.longitude is None:
        raise InvalidInput(f"{org.name} 没有坐标，无法派车 / {org.name} has no coordinates to send an ambulance to",
                           field_errors=[field_error("from_organisation_id", "no coordinates")])
    area = db.get(Area, org.area_id) if org.area_id is not None else None
    try:
        label = CATEGORY_ZH[CallCategory(category)]
    except ValueError:
        label = ""
    data = CallInput(category=category, priority=1, complaint=complaint or f"{label}转运 / transfer",
                     caller_name=org.name, caller_phone=org.phone, area_id=area.id if area else None,
                     latitude=org.latitude, longitude=org.longitude, address=org.address or org.name,
                     patient_id=patient_id, urban=is_urban_area(db, area) if area is not None else None)
    call = create_call(db, by=by, data=data, source="ecg_centre", from_organisation_id=org.id,
                       pathway_case_id=pathway_case_id, ecg_request_id=ecg_request_id, check_board=False)
    if pathway_case_id is not None:
        _pathways().link(db, case_id=pathway_case_id, call_id=call.id)
    announce.transfer_requested(db, call=call, from_org=org)
    return call


# --- moving calls ---------------------------------------------------------------------------------

def _move_call(db: Session, call: EmergencyCall, *, to_state: CallState, by: User | None, action: str,
               at: datetime, values: dict[str, Any] | None = None, reason: str = "",
               detail: dict[str, Any] | None = None) -> None:
    """Move the call if it is still where the caller saw it (a conditional UPDATE), record the event."""
    current = CallState(call.state)
    if (current, to_state) not in CALL_TRANSITIONS:
        raise Conflict(f"呼叫 {call.number} 处于“{CALL_STATE_ZH[current]}”，不能变为“{CALL_STATE_ZH[to_state]}” / the "
                       f"call is {current}; it cannot become {to_state}", code="invalid_transition",
                       field_errors=[field_error("state", f"{current} -> {to_state}")])
    changes: dict[str, Any] = {"state": to_state, "updated_at": utcnow(), **(values or {})}
    stamp = _CALL_TIME_OF.get(to_state)
    if stamp and stamp not in changes:
        changes[stamp] = at
    result = db.execute(update(EmergencyCall).where(EmergencyCall.id == call.id, EmergencyCall.state == current)
                        .values(**changes).execution_options(synchronize_session=False))
    if result.rowcount != 1:
        db.refresh(call)
        raise Conflict(f"呼叫 {call.number} 已被他人处理（现为“{CALL_STATE_ZH[CallState(call.state)]}”）/ someone else "
                       f"moved the call first (now {call.state})", code="invalid_transition")
    db.refresh(call)
    _event(db, call, action=action, from_state=str(current), to_state=str(to_state), by=by, at=at, reason=reason,
           detail=detail)


def cancel_call(db: Session, *, call_id: int, by: User, reason: str, client_address: str = "") -> EmergencyCall:
    """The caller rang off, a duplicate, no patient found: the call ends and any ambulance on it stands down."""
    require_board(db, by)
    take_sqlite_write_lock(db)
    call = get_call(db, call_id)
    reason = reason.strip()
    if not reason:
        raise InvalidInput("请说明取消原因 / give the reason for cancelling",
                           field_errors=[field_error("reason", "required")])
    if call.state in ENDED_CALL_STATES:
        raise Conflict(f"呼叫 {call.number} 已结束 / the call has already ended", code="call_closed")
    if call.state not in (C.RECEIVED, C.ANSWERED, C.DISPATCHED):
        raise Conflict("救护车已到达现场，不能取消，请由急救人员结束 / the ambulance is on scene; "
                       "the crew ends the call",
                       code="invalid_transition")
    now = utcnow()
    amb = db.get(Ambulance, call.ambulance_id) if call.ambulance_id else None
    _move_call(db, call, to_state=C.CANCELLED, by=by, action="cancel", at=now, reason=reason[:MAX_TEXT],
               values={"close_reason": reason[:MAX_TEXT]})
    if amb is not None and amb.current_call_id == call.id:
        target = A.AVAILABLE if amb.state == A.DISPATCHED else A.RETURNING
        _move_ambulance(db, amb, to_state=target, by=by, reason=f"呼叫已取消 / call cancelled: {reason}"[:MAX_TEXT],
                        at=now, latitude=None, longitude=None, call=None, clear_call=True)
    audit.record(db, actor=_actor(by, client_address), action="emergency.call.cancel", patient_id=call.patient_id,
                 resource=f"call:{call.id}", detail={"reason": reason[:200]})
    announce.call_changed(db, call=call, action="cancel")
    return call


def link_patient(db: Session, *, call_id: int, patient_id: int, by: User, client_address: str = "") -> EmergencyCall:
    """Name the patient once the crew knows who it is (and the pathway case, when there is one)."""
    require_board(db, by)
    call = get_call(db, call_id)
    patient = access.resolve_patient(db, patient_id)
    call.patient_id = patient.id
    call.updated_at = utcnow()
    _event(db, call, action="link_patient", from_state=str(call.state), to_state=str(call.state), by=by,
           at=utcnow(), detail={"patient_id": patient.id})
    audit.record(db, actor=_actor(by, client_address), action="emergency.call.link_patient", patient_id=patient.id,
                 resource=f"call:{call.id}")
    db.flush()
    return call


# --- dispatching ----------------------------------------------------------------------------------

def _holder_text(db: Session, amb: Ambulance) -> str:
    """Who has the ambulance: the call it is on and the dispatcher who sent it."""
    if amb.current_call_id is None:
        return ""
    other = db.get(EmergencyCall, amb.current_call_id)
    if other is None:
        return ""
    who = db.get(User, other.dispatched_by_user_id) if other.dispatched_by_user_id else None
    name = who.display_name if who else "系统"
    return f"，已由 {name} 派往 {other.number} / sent by {name} to {other.number}"


def dispatch(db: Session, *, call_id: int, ambulance_id: int, destination_organisation_id: int | None, by: User,
             client_address: str = "", network: Any = None) -> EmergencyCall:
    """Send an available ambulance to an open call. Of two dispatchers sending the same ambulance, one wins;
    the other gets a Conflict naming the call it went to and who sent it. Chest-pain and stroke destinations are
    pre-alerted with the ETA (and the pre-hospital ECG); calls of the five centres join their pathway case."""
    from healthrelay.emergency import dispatch as ranking

    require_board(db, by)
    take_sqlite_write_lock(db)  # SQLite: serialise the read-decide-write; PostgreSQL: the conditional UPDATE
    call = get_call(db, call_id)
    amb = get_ambulance(db, ambulance_id)
    if call.state in ENDED_CALL_STATES:
        raise Conflict(f"呼叫 {call.number} 已结束，不能派车 / the call has ended ({call.state}); nothing to dispatch",
                       code="call_closed", field_errors=[field_error("call_id", str(call.state))])
    if call.state != C.ANSWERED and call.state != C.RECEIVED:
        raise Conflict(f"呼叫 {call.number} 已派车 / the call already has an ambulance ({call.state})",
                       code="already_dispatched", field_errors=[field_error("call_id", str(call.state))])
    if amb.state != A.AVAILABLE:
        raise Conflict(f"救护车 {amb.code} 不可用：{_amb_text(amb.state)}{_holder_text(db, amb)} / the ambulance "
                       f"is not available ({amb.state})", code="ambulance_not_available",
                       field_errors=[field_error("ambulance_id", str(amb.state))])
    dest = None
    if destination_organisation_id is not None:
        dest = db.get(Organisation, destination_organisation_id)
        if dest is None:
            raise InvalidInput(f"没有编号为 {destination_organisation_id} 的医院 / unknown destination",
                               field_errors=[field_error("destination_organisation_id", "unknown organisation")])
    now = utcnow()
    rec = ranking.recommend(db, call_id=call.id, network=network)
    # The ambulance first: the conditional UPDATE decides who wins.
    result = db.execute(update(Ambulance).where(Ambulance.id == amb.id, Ambulance.state == A.AVAILABLE)
                        .values(state=A.DISPATCHED, current_call_id=call.id, state_changed_at=now)
                        .execution_options(synchronize_session=False))
    if result.rowcount != 1:
        db.refresh(amb)
        raise Conflict(f"救护车 {amb.code} 刚被派出：{_amb_text(amb.state)}{_holder_text(db, amb)} / the ambulance was "
                       f"just sent elsewhere ({amb.state})", code="ambulance_not_available",
                       field_errors=[field_error("ambulance_id", str(amb.state))])
    db.refresh(amb)
    db.add(AmbulanceStateChange(ambulance_id=amb.id, call_id=call.id, from_state=str(A.AVAILABLE),
                                to_state=str(A.DISPATCHED), at=now, latitude=amb.latitude, longitude=amb.longitude,
                                position_source="station", by_user_id=by.id, reason=""))
    shown = rec.to_dict()
    shown["chosen"] = {"ambulance_id": amb.id, "destination_organisation_id": dest.id if dest else None,
                       "followed_ambulance": rec.best_ambulance_id == amb.id,
                       "followed_destination": (rec.destination.organisation_id if rec.destination else None)
                       == (dest.id if dest else None)}
    _move_call(db, call, to_state=C.DISPATCHED, by=by, action="dispatch", at=now, values={
        "ambulance_id": amb.id, "station_organisation_id": amb.station_organisation_id,
        "destination_organisation_id": dest.id if dest else None, "dispatched_by_user_id": by.id,
        "recommendation": shown}, detail={"ambulance": amb.code, "destination": dest.name if dest else ""})
    _join_pathway(db, call=call, by=by)
    audit.record(db, actor=_actor(by, client_address), action="emergency.call.dispatch", patient_id=call.patient_id,
                 resource=f"call:{call.id}", detail={"ambulance_id": amb.id, "destination": dest.id if dest else None})
    eta = rec.eta_minutes(amb.id, dest.id if dest else None)
    if dest is not None and call.category in (CallCategory.CHEST_PAIN, CallCategory.STROKE):
        announce.pre_alert(db, call=call, destination=dest, ambulance=amb, eta_minutes=eta)
    announce.call_changed(db, call=call, action="dispatch")
    announce.ambulance_changed(db, ambulance=amb, call=call)
    return call


def _pathways() -> Any:
    """The pathways service (helper domain), imported when first needed."""
    from healthrelay.pathways import service as pathways

    return pathways


def _join_pathway(db: Session, *, call: EmergencyCall, by: User | None) -> None:
    """A call of one of the five centres belongs to a pathway case: open one (source "call") or link it."""
    centre = CENTRE_OF.get(CallCategory(call.category))
    if centre is None:
        return
    pathways = _pathways()
    if call.pathway_case_id is None:
        opened = pathways.open_case(db, centre=centre, patient_id=call.patient_id, by=by, source="call",
                                    call_id=call.id, hospital_organisation_id=call.destination_organisation_id)
        call.pathway_case_id = opened.id
        db.flush()
    else:
        pathways.link(db, case_id=call.pathway_case_id, call_id=call.id,
                      hospital_organisation_id=call.destination_organisation_id)


# --- the ambulance state machine ------------------------------------------------------------------

def _position_for(db: Session, amb: Ambulance, to_state: AmbulanceState,
                  call: EmergencyCall | None) -> tuple[float, float, str]:
    """Where the ambulance is when the crew's browser gives no position: the scene, the hospital or home."""
    if to_state in (A.ON_SCENE, A.TRANSPORTING) and call is not None:
        return call.latitude, call.longitude, "scene"
    if to_state in (A.AT_HOSPITAL, A.RETURNING) and call is not None and call.destination_organisation_id:
        dest = db.get(Organisation, call.destination_organisation_id)
        if dest is not None and dest.latitude is not None and dest.longitude is not None:
            return dest.latitude, dest.longitude, "destination"
    if to_state == A.AVAILABLE:
        station = db.get(Organisation, amb.station_organisation_id)
        if station is not None and station.latitude is not None and station.longitude is not None:
            return station.latitude, station.longitude, "station"
    return amb.latitude, amb.longitude, "last_known"


def _move_ambulance(db: Session, amb: Ambulance, *, to_state: AmbulanceState, by: User | None, reason: str,
                    at: datetime, latitude: float | None, longitude: float | None, call: EmergencyCall | None,
                    clear_call: bool) -> AmbulanceStateChange:
    current = AmbulanceState(amb.state)
    if latitude is not None and longitude is not None:
        lat, lon, source = latitude, longitude, "gps"
    else:
        lat, lon, source = _position_for(db, amb, to_state, call)
    values: dict[str, Any] = {"state": to_state, "state_changed_at": at, "latitude": lat, "longitude": lon}
    if clear_call:
        values["current_call_id"] = None
    result = db.execute(update(Ambulance).where(Ambulance.id == amb.id, Ambulance.state == current)
                        .values(**values).execution_options(synchronize_session=False))
    if result.rowcount != 1:
        db.refresh(amb)
        raise Conflict(f"救护车 {amb.code} 的状态已被他人改为{_amb_text(amb.state)} / someone else changed the "
                       f"ambulance first (now {amb.state})", code="invalid_transition")
    call_id = call.id if call is not None else amb.current_call_id
    db.refresh(amb)
    row = AmbulanceStateChange(ambulance_id=amb.id, call_id=call_id, from_state=str(current), to_state=str(to_state),
                               at=at, latitude=lat, longitude=lon, position_source=source,
                               by_user_id=getattr(by, "id", None), reason=reason)
    db.add(row)
    db.flush()
    return row


def change_ambulance_state(db: Session, *, ambulance_id: int, to_state: AmbulanceState | str, by: User,
                           latitude: float | None = None, longitude: float | None = None, reason: str = "",
                           expected_state: AmbulanceState | str | None = None,
                           client_address: str = "") -> Ambulance:
    """One move of the state machine (the crew's buttons), logged with time, position and who; the call's times
    and pathway nodes follow. `expected_state` is the state the crew's page showed: a stale page is refused."""
    from healthrelay.directory.service import check_coordinates

    take_sqlite_write_lock(db)
    amb = get_ambulance(db, ambulance_id)
    if not may_crew(db, by, amb):
        raise AccessDenied("只有急救站的调度员和急救人员可以改变救护车状态 / only the stations' dispatchers and crews "
                           "change an ambulance's state", code="not_a_dispatcher")
    try:
        target = AmbulanceState(to_state)
    except ValueError:
        raise InvalidInput(f"未知的救护车状态 {to_state} / unknown ambulance state",
                           field_errors=[field_error("to_state", str(to_state))]) from None
    if (latitude is None) != (longitude is None) or latitude is not None:
        check_coordinates(latitude, longitude)
    current = AmbulanceState(amb.state)
    if expected_state is not None and str(expected_state) != str(current):
        raise Conflict(f"救护车 {amb.code} 现为{_amb_text(current)}，页面已过期 / the ambulance is now {current}; "
                       "reload the page", code="stale_state", field_errors=[field_error("to_state", str(current))])
    effect = AMBULANCE_TRANSITIONS.get((current, target), "refused")
    if effect == "refused":
        raise Conflict(f"救护车 {amb.code} 处于{_amb_text(current)}，不能变为{_amb_text(target)} / the ambulance is "
                       f"{current}; it cannot go {target}", code="invalid_transition",
                       field_errors=[field_error("to_state", f"{current} -> {target}")])
    if effect == "dispatch":
        raise InvalidInput("派车请在调度台选择呼叫 / dispatch from the board, choosing the call",
                           field_errors=[field_error("to_state", "use dispatch")])
    reason = reason.strip()[:MAX_TEXT]
    if target == A.OUT_OF_SERVICE and amb.current_call_id is not None:
        call = db.get(EmergencyCall, amb.current_call_id)
        raise Conflict(f"救护车 {amb.code} 正在执行任务 {call.number if call else amb.current_call_id}，不能停用 / the "
                       "ambulance is on a call; it cannot go out of service", code="on_a_call",
                       field_errors=[field_error("to_state", "on a call")])
    if (current, target) in REASON_REQUIRED and not reason:
        raise InvalidInput("请说明原因 / give the reason for this change",
                           field_errors=[field_error("reason", "required")])
    call = db.get(EmergencyCall, amb.current_call_id) if amb.current_call_id is not None else None
    now = utcnow()
    clear = target in (A.RETURNING, A.AVAILABLE, A.OUT_OF_SERVICE)
    row = _move_ambulance(db, amb, to_state=target, by=by, reason=reason, at=now, latitude=latitude,
                          longitude=longitude, call=call, clear_call=clear)
    pathway_note = ""
    if call is not None and effect is not None:
        pathway_note = _call_follows(db, call=call, effect=effect, by=by, at=now, reason=reason)
    audit.record(db, actor=_actor(by, client_address), action="emergency.ambulance.state",
                 patient_id=call.patient_id if call else None, resource=f"ambulance:{amb.id}",
                 detail={"from": str(current), "to": str(target), "call_id": call.id if call else None,
                         "position": [row.latitude, row.longitude], **({"pathway": pathway_note} if pathway_note
                                                                        else {})})
    if call is not None:
        announce.call_changed(db, call=call, action=f"ambulance.{target}")
    announce.ambulance_changed(db, ambulance=amb, call=call)
    return amb


def _call_follows(db: Session, *, call: EmergencyCall, effect: str, by: User, at: datetime, reason: str) -> str:
    """What an ambulance move does to its call; returns a note when a pathway node could not be recorded."""
    if effect == "depart":
        if call.departed_at is None:
            call.departed_at = at
            call.updated_at = at
            _event(db, call, action="depart", from_state=str(call.state), to_state=str(call.state), by=by, at=at)
            db.flush()
        return ""
    if effect == "stand_down":
        if call.state == C.DISPATCHED:
            _move_call(db, call, to_state=C.ANSWERED, by=by, action="stand_down", at=at, reason=reason,
                       values={"ambulance_id": None, "station_organisation_id": None, "dispatched_at": None,
                               "departed_at": None, "dispatched_by_user_id": None})
        return ""
    if effect == "close":
        if call.state in (C.ON_SCENE, C.AT_HOSPITAL):
            _move_call(db, call, to_state=C.CLOSED, by=by, action="close", at=at, reason=reason,
                       values={"close_reason": reason})
        return ""
    target = CallState(effect)
    _move_call(db, call, to_state=target, by=by, action=str(target), at=at)
    if call.pathway_case_id is None:
        return ""
    if target == C.ON_SCENE:
        return _record_node_once(db, call=call, node="first_medical_contact", at=at, by=by)
    if target == C.AT_HOSPITAL:
        note = _record_node_once(db, call=call, node="arrival", at=at, by=by)
        try:
            with db.begin_nested():
                _pathways().link(db, case_id=call.pathway_case_id, arrival_mode="ambulance",
                                 hospital_organisation_id=call.destination_organisation_id)
        except DomainError as exc:
            note = note or exc.message
        return note
    return ""


def _record_node_once(db: Session, *, call: EmergencyCall, node: str, at: datetime, by: User) -> str:
    """Record the pathway node unless it is there already. A refusal (a timeline out of order) must not stop the
    crew: it is kept in the call's log instead, for the pathway's staff to put right."""
    from healthrelay.pathways.models import PathwayNode

    assert call.pathway_case_id is not None
    done = db.execute(select(exists().where(PathwayNode.case_id == call.pathway_case_id,
                                            PathwayNode.node == node))).scalar()
    if done:
        return ""
    pathways = _pathways()
    # The node comes from the ambulance log, which names the crew; a crew the pathway does not count as a
    # party (a sub-station's car on a city call) still moves the timeline, recorded as the system's.
    pathway_case = pathways.load(db, call.pathway_case_id)
    recorder = by if pathways.may_record(db, user=by, case=pathway_case) else None
    try:
        with db.begin_nested():
            pathways.record_node(db, case_id=call.pathway_case_id, node=node, at=at, by=recorder,
                                 note=f"急救呼叫 {call.number}（{by.display_name}）", source="call")
    except DomainError as exc:
        _event(db, call, action="pathway_node_refused", from_state=str(call.state), to_state=str(call.state), by=by,
               at=at, reason=exc.message[:MAX_TEXT], detail={"node": node})
        db.flush()
        return exc.message
    return ""


# --- ambulances -----------------------------------------------------------------------------------

def add_ambulance(db: Session, *, code: str, kind: str, station_organisation_id: int, plate: str = "",
                  has_ecg_transmitter: bool = False, by: User | None = None) -> Ambulance:
    """Register an ambulance at a station, parked there and available."""
    errors = []
    station = db.get(Organisation, station_organisation_id)
    if station is None or station.kind not in STATION_KINDS:
        errors.append(field_error("station_organisation_id", "不是急救站或分站 / not an emergency station"))
    try:
        AmbulanceKind(kind)
    except ValueError:
        errors.append(field_error("kind", f"未知的车型 {kind} / unknown kind"))
    if not code.strip() or len(code) > 40:
        errors.append(field_error("code", "1-40 个字符 / 1-40 characters"))
    elif db.execute(select(exists().where(Ambulance.code == code.strip()))).scalar():
        errors.append(field_error("code", f"车号 {code} 已存在 / code already used"))
    if errors:
        raise InvalidInput("救护车信息有误 / the ambulance has problems", field_errors=errors)
    assert station is not None
    if station.latitude is None or station.longitude is None:
        raise InvalidInput(f"{station.name} 没有坐标 / the station has no coordinates",
                           field_errors=[field_error("station_organisation_id", "no coordinates")])
    amb = Ambulance(code=code.strip(), plate=plate.strip(), kind=AmbulanceKind(kind),
                    station_organisation_id=station.id, state=A.AVAILABLE, latitude=station.latitude,
                    longitude=station.longitude, state_changed_at=utcnow(), has_ecg_transmitter=has_ecg_transmitter)
    db.add(amb)
    db.flush()
    return amb


def dispatcher_user_ids(db: Session, *, near_organisation_id: int | None = None) -> list[int]:
    """The dispatchers of the stations (those sharing an alliance with the given member, when any do)."""
    stations = select(Organisation.id).where(Organisation.kind.in_([str(k) for k in STATION_KINDS]))
    if near_organisation_id is not None:
        allied = select(AllianceMembership.organisation_id).where(AllianceMembership.alliance_id.in_(
            select(AllianceMembership.alliance_id).where(AllianceMembership.organisation_id == near_organisation_id)))
        narrowed = stations.where(Organisation.id.in_(allied))
        if db.execute(select(exists(narrowed))).scalar():
            stations = narrowed
    return list(db.execute(select(User.id).where(User.organisation_id.in_(stations), User.role == Role.DISPATCHER,
                                                 User.is_active.is_(True)).order_by(User.id).limit(100)).scalars())


def organisation_names(db: Session, ids: Iterable[int | None]) -> dict[int, str]:
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    return dict(db.execute(select(Organisation.id, Organisation.name).where(Organisation.id.in_(wanted))).all())


def user_names(db: Session, ids: Iterable[int | None]) -> dict[int, str]:
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    return dict(db.execute(select(User.id, User.display_name).where(User.id.in_(wanted))).all())


# --- the village/town picker ----------------------------------------------------------------------

def _pinyin_keys(name: str) -> tuple[str, str]:
    from pypinyin import Style, lazy_pinyin

    return "".join(lazy_pinyin(name)).lower(), "".join(lazy_pinyin(name, style=Style.FIRST_LETTER)).lower()


_pinyin_cache: dict[str, tuple[str, str]] = {}


def search_areas(db: Session, *, q: str, limit: int = 20) -> list[tuple[Area, Area | None, bool]]:
    """Villages and towns by Chinese name, full pinyin or initials ("lw" finds 柳湾村): (area, parent, urban).

    A county has a few hundred villages, so the names are matched in memory; their pinyin is cached.
    """
    q = q.strip().lower()
    if not q:
        return []
    if len(q) > 40:
        raise InvalidInput("搜索词过长 / the search is too long", field_errors=[field_error("q", "at most 40")])
    rows = db.execute(select(Area).where(Area.level.in_([str(AreaLevel.VILLAGE), str(AreaLevel.TOWNSHIP)]))
                      .order_by(Area.code)).scalars().all()
    parents = {a.id: a for a in db.execute(select(Area).where(
        Area.id.in_({a.parent_id for a in rows if a.parent_id is not None}))).scalars()}
    scored: list[tuple[int, str, Area]] = []
    for area in rows:
        keys = _pinyin_cache.get(area.name)
        if keys is None:
            keys = _pinyin_cache.setdefault(area.name, _pinyin_keys(area.name))
        full, initials = keys
        if area.name.startswith(q) or full.startswith(q) or initials.startswith(q):
            rank = 0
        elif q in area.name or q in full or q in initials:
            rank = 1
        else:
            continue
        scored.append((rank, area.code, area))
    scored.sort(key=lambda t: (t[0], t[1]))
    out = []
    for _, _, area in scored[:limit]:
        parent = parents.get(area.parent_id) if area.parent_id is not None else None
        urban = _is_urban_township(area) or (parent is not None and _is_urban_township(parent))
        out.append((area, parent, urban))
    return out
