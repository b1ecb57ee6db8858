"""The demo county's emergency network: ambulances at every station and a year of 120 calls.

Shaped like a hill county (domain.md: 2 stations + 6 sub-stations, the "1030" standard): about 3,000 calls
a year, more in town than per village, more by day than by night, a winter bump of chest pain and stroke.
Travel times come from the county road network (helper C's `demo/roads.py` runs first; without roads the
straight line with a detour factor stands in). Answering and departure times are drawn so that roughly 95 %
meet the national 10 s / 3 min targets; arrival on scene follows from the roads, so remote villages miss
the 30 minutes as they would. Every call is closed (a few cancelled or treated on scene), every ambulance
is back at its station and available. Bulk inserts; the same seed gives the same calls.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from healthrelay.directory.models import Area, AreaLevel, Organisation, OrgKind
from healthrelay.emergency import dispatch as ranking
from healthrelay.emergency.models import (
    Ambulance,
    AmbulanceKind,
    AmbulanceState,
    AmbulanceStateChange,
    CallCategory,
    CallEvent,
    CallState,
    EmergencyCall,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
CALLS_PER_YEAR = 3000
# Category shares of a county 120 centre (other = falls, fevers, abdominal pain, drunkenness, transfers ...).
CATEGORY_SHARES = ((CallCategory.OTHER, 0.52), (CallCategory.TRAUMA, 0.24), (CallCategory.STROKE, 0.11),
                   (CallCategory.CHEST_PAIN, 0.08), (CallCategory.CRITICAL_MATERNAL, 0.035),
                   (CallCategory.CRITICAL_NEONATAL, 0.015))
PRIORITY = {CallCategory.CHEST_PAIN: (1, 2), CallCategory.STROKE: (1, 2), CallCategory.TRAUMA: (1, 2, 2, 3),
            CallCategory.CRITICAL_MATERNAL: (1, 2), CallCategory.CRITICAL_NEONATAL: (1,),
            CallCategory.OTHER: (2, 3, 3, 4)}
COMPLAINTS = {
    CallCategory.CHEST_PAIN: ("胸痛伴大汗1小时", "胸闷气短，左肩放射痛", "突发胸口压榨样疼痛"),
    CallCategory.STROKE: ("突发右侧肢体无力，口角歪斜", "言语不清半小时", "晨起左侧偏瘫"),
    CallCategory.TRAUMA: ("摩托车摔伤，左腿畸形", "高处坠落", "农机致手外伤", "交通事故，头部出血"),
    CallCategory.CRITICAL_MATERNAL: ("孕38周，阴道大出血", "产后出血不止", "孕晚期抽搐"),
    CallCategory.CRITICAL_NEONATAL: ("新生儿呼吸困难，发绀", "早产儿，体温低"),
    CallCategory.OTHER: ("腹痛呕吐", "高热不退", "老人跌倒", "醉酒昏睡", "呼吸困难", "农药误服", "晕厥"),
}
CALLERS = "王李张刘陈杨黄周吴何罗谭向田彭胡邓唐龚万"
# Ambulances per station kind: (kind, ECG transmitter).
STATION_FLEET = ((AmbulanceKind.MOBILE_ICU, True), (AmbulanceKind.EMERGENCY, True), (AmbulanceKind.EMERGENCY, False),
                 (AmbulanceKind.TRANSPORT, False))
# A township seat (集镇) calls as often as this many average villages.
TOWN_SEAT_WEIGHT = 4.0
# Ambulances under lights drive faster than the planning speeds of the road classes.
SIREN_FACTOR = 1.25
SUBSTATION_FLEET = ((AmbulanceKind.EMERGENCY, True), (AmbulanceKind.TRANSPORT, False))


@dataclass
class _Village:
    area_id: int
    name: str
    lat: float
    lon: float
    urban: bool
    weight: float


def _reserve(db: Session, table: str, model: Any, n: int) -> list[int]:
    if n == 0:
        return []
    if db.get_bind().dialect.name == "postgresql":
        return list(db.execute(text(f"SELECT nextval(pg_get_serial_sequence('{table}', 'id')) "
                                    "FROM generate_series(1, :n)"), {"n": n}).scalars())
    start = db.execute(select(func.coalesce(func.max(model.id), 0))).scalar_one() + 1
    return list(range(start, start + n))


def _stations(db: Session) -> list[Organisation]:
    return list(db.execute(select(Organisation).where(
        Organisation.kind.in_([str(OrgKind.EMERGENCY_STATION), str(OrgKind.EMERGENCY_SUBSTATION)]),
        Organisation.latitude.is_not(None)).order_by(Organisation.code)).scalars())


def _villages(db: Session) -> list[_Village]:
    """Where calls come from: villages and communities (weighted by the demo plan's population when the
    area is the demo county's) and the township seats themselves (集镇, where many people live)."""
    from healthrelay.demo import county

    planned = {v.code: v.weight for vs in county.geography().villages_by_township.values() for v in vs}
    towns = {a.id: a for a in db.execute(select(Area).where(Area.level == str(AreaLevel.TOWNSHIP))).scalars()}
    out = []
    for a in db.execute(select(Area).where(Area.level == str(AreaLevel.VILLAGE), Area.latitude.is_not(None))
                        .order_by(Area.code)).scalars():
        parent = towns.get(a.parent_id) if a.parent_id is not None else None
        urban = parent is not None and parent.name.endswith("街道")
        out.append(_Village(a.id, a.name, a.latitude, a.longitude, urban, planned.get(a.code, 1.0)))  # type: ignore[arg-type]
    for t in towns.values():
        if t.latitude is not None and t.longitude is not None and not t.name.endswith("街道"):
            out.append(_Village(t.id, t.name, t.latitude, t.longitude, False, TOWN_SEAT_WEIGHT))
    return out


def build_ambulances(db: Session, *, now: datetime) -> int:
    """2–4 ambulances at every station and sub-station, parked there and available (skipped if present)."""
    existing = db.execute(select(func.count()).select_from(Ambulance)).scalar_one()
    if existing:
        return 0
    rows = []
    plates = iter(range(1201, 9999))
    for s in _stations(db):
        fleet = STATION_FLEET if s.kind == OrgKind.EMERGENCY_STATION else SUBSTATION_FLEET
        # "青溪县急救中心石门镇急救分站" -> "石门镇"; the code when the name has another shape.
        short = s.name.split("急救中心")[-1].replace("急救分站", "").replace("急救站", "") or s.code
        for n, (kind, ecg) in enumerate(fleet, start=1):
            rows.append({"code": f"{short}-{n:02d}", "plate": f"湘N·{next(plates)}", "kind": kind,
                         "station_organisation_id": s.id, "state": AmbulanceState.AVAILABLE,
                         "latitude": s.latitude, "longitude": s.longitude, "state_changed_at": now,
                         "current_call_id": None, "has_ecg_transmitter": ecg, "created_at": now})
    if rows:
        db.execute(insert(Ambulance), rows)
        db.flush()
    return len(rows)


def _travel(db: Session, stations: list[Organisation], villages: list[_Village]) -> dict[int, list[float | None]]:
    """Minutes from each station to every village: one shortest-path run per station on the roads."""
    net = ranking._network(db, None)
    points = [(v.lat, v.lon) for v in villages]
    return {s.id: ranking.minutes_from_scene(net, (s.latitude, s.longitude), points)  # type: ignore[arg-type]
            for s in stations}


def _hospitals(db: Session) -> dict[CallCategory, list[Organisation]]:
    from healthrelay.directory.models import Capability

    return {CallCategory.CHEST_PAIN: ranking._hospitals_with(db, Capability.PCI),
            CallCategory.STROKE: ranking._hospitals_with(db, Capability.THROMBOLYSIS),
            CallCategory.TRAUMA: ranking._trauma_hospitals(db),
            CallCategory.CRITICAL_MATERNAL: ranking._maternal_child(db),
            CallCategory.CRITICAL_NEONATAL: ranking._maternal_child(db),
            CallCategory.OTHER: ranking._general_hospitals(db)}


def _nearest(orgs: list[Organisation], lat: float, lon: float) -> Organisation | None:
    best = None
    for o in orgs:
        d = (o.latitude - lat) ** 2 + ((o.longitude - lon) * math.cos(math.radians(lat))) ** 2  # type: ignore[operator]
        if best is None or d < best[0]:
            best = (d, o)
    return best[1] if best else None


def _received_times(rng: random.Random, now: datetime, n: int) -> list[datetime]:
    """Calls over the last year: busier by day, a winter bump; sorted."""
    out = []
    while len(out) < n:
        at = now - timedelta(days=365) + timedelta(seconds=rng.uniform(0, 365 * 86400 - 3600 * 6))
        local = at.astimezone(SHANGHAI)
        day_weight = 1.0 if 7 <= local.hour < 22 else 0.45
        winter = 1.25 if local.month in (12, 1, 2) else 1.0
        if rng.random() < day_weight * winter / 1.25:
            out.append(at)
    return sorted(out)


def build_demo_emergency(db: Session, *, seed: int, now: datetime,
                         calls_per_year: int = CALLS_PER_YEAR) -> dict[str, int]:
    """Ambulances and a year of closed calls ending before `now`; returns counts (does nothing twice)."""
    rng = random.Random(f"emergency-{seed}")
    made = build_ambulances(db, now=now)
    if db.execute(select(func.count()).select_from(EmergencyCall)).scalar_one():
        return {"ambulances": made, "calls": 0}
    stations = _stations(db)
    villages = _villages(db)
    if not stations or not villages:
        return {"ambulances": made, "calls": 0}
    fleet: dict[int, list[Ambulance]] = {}
    for a in db.execute(select(Ambulance).order_by(Ambulance.id)).scalars():
        fleet.setdefault(a.station_organisation_id, []).append(a)
    travel = _travel(db, stations, villages)
    hospitals = _hospitals(db)
    # Each village's station: the one with the shortest road time.
    home: list[tuple[Organisation, float]] = []
    for i in range(len(villages)):
        options = [(s, travel[s.id][i]) for s in stations if travel[s.id][i] is not None and fleet.get(s.id)]
        s, minutes = min(options, key=lambda o: o[1]) if options else (stations[0], 30.0)  # type: ignore[arg-type,return-value]
        home.append((s, float(minutes)))  # type: ignore[arg-type]
    weights = [v.weight for v in villages]
    times = _received_times(rng, now, calls_per_year)
    ids = _reserve(db, "emergency_calls", EmergencyCall, len(times))
    cats, shares = zip(*CATEGORY_SHARES, strict=True)
    calls: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    log: list[dict[str, Any]] = []
    busy_until: dict[int, datetime] = {}
    for call_id, received in zip(ids, times, strict=True):
        i = rng.choices(range(len(villages)), weights=weights)[0]
        v = villages[i]
        station, minutes = home[i]
        category = rng.choices(cats, weights=shares)[0]
        answer_s = rng.uniform(2, 9.5) if rng.random() < 0.96 else rng.uniform(10.5, 45)
        answered = received + timedelta(seconds=answer_s)
        number = f"JJ{received.astimezone(SHANGHAI):%Y%m%d}-{call_id:04d}"
        lat, lon = v.lat + rng.uniform(-0.004, 0.004), v.lon + rng.uniform(-0.004, 0.004)
        row: dict[str, Any] = {
            "id": call_id, "number": number, "category": category, "priority": rng.choice(PRIORITY[category]),
            "caller_name": f"{rng.choice(CALLERS)}先生" if rng.random() < 0.5 else f"{rng.choice(CALLERS)}女士",
            "caller_phone": f"1{rng.choice('3589')}{rng.randrange(10**8, 10**9)}",
            "complaint": rng.choice(COMPLAINTS[category]), "area_id": v.area_id, "latitude": lat, "longitude": lon,
            "address": v.name, "urban": v.urban, "patient_id": None, "onset_at": None, "received_at": received,
            "answered_at": answered, "dispatched_at": None, "departed_at": None, "on_scene_at": None,
            "left_scene_at": None, "at_hospital_at": None, "closed_at": None, "ambulance_id": None,
            "station_organisation_id": None, "destination_organisation_id": None, "recommendation": {},
            "pathway_case_id": None, "ecg_request_id": None, "source": "120", "from_organisation_id": None,
            "created_by_user_id": None, "dispatched_by_user_id": None, "close_reason": "", "created_at": received,
            "updated_at": received, "state": CallState.CLOSED}
        events.append({"call_id": call_id, "action": "answer", "from_state": "received", "to_state": "answered",
                       "at": answered, "by_user_id": None, "reason": "", "detail": {"source": "120"}})
        if rng.random() < 0.03:  # the caller rang off, a duplicate, went by car
            row.update(state=CallState.CANCELLED, closed_at=answered + timedelta(minutes=rng.uniform(1, 5)),
                       close_reason="来电者称已自行就医 / went by their own means", updated_at=answered)
            events.append({"call_id": call_id, "action": "cancel", "from_state": "answered", "to_state": "cancelled",
                           "at": row["closed_at"], "by_user_id": None, "reason": row["close_reason"], "detail": {}})
            calls.append(row)
            continue
        dispatched = answered + timedelta(seconds=rng.uniform(15, 50))
        free = [a for a in fleet[station.id] if busy_until.get(a.id, received) <= dispatched]
        amb = (free or fleet[station.id])[0]
        depart_s = rng.uniform(35, 150) if rng.random() < 0.955 else rng.uniform(185, 480)
        departed = dispatched + timedelta(seconds=depart_s)
        drive = minutes / SIREN_FACTOR * rng.uniform(0.85, 1.15)
        on_scene = departed + timedelta(minutes=drive)
        dest = _nearest(hospitals[category] or hospitals[CallCategory.OTHER], lat, lon)
        row.update(dispatched_at=dispatched, departed_at=departed, on_scene_at=on_scene, ambulance_id=amb.id,
                   station_organisation_id=station.id, destination_organisation_id=dest.id if dest else None)
        steps = [("available", "dispatched", dispatched, amb.latitude, amb.longitude, "station"),
                 ("dispatched", "en_route", departed, amb.latitude, amb.longitude, "station"),
                 ("en_route", "on_scene", on_scene, lat, lon, "scene")]
        if rng.random() < 0.08 or dest is None:  # treated on scene, or the patient refused transport
            closed = on_scene + timedelta(minutes=rng.uniform(10, 30))
            row.update(closed_at=closed, close_reason="现场处置，拒绝转运 / treated on scene")
            steps.append(("on_scene", "returning", closed, lat, lon, "scene"))
        else:
            left = on_scene + timedelta(minutes=rng.uniform(8, 25))
            km = math.hypot(dest.latitude - lat, (dest.longitude - lon) * math.cos(math.radians(lat))) * 111  # type: ignore[operator]
            arrive = left + timedelta(minutes=km * 1.3 / 45 * 60 + rng.uniform(1, 4))
            closed = arrive + timedelta(minutes=rng.uniform(10, 25))
            row.update(left_scene_at=left, at_hospital_at=arrive, closed_at=closed)
            steps += [("on_scene", "transporting", left, lat, lon, "scene"),
                      ("transporting", "at_hospital", arrive, dest.latitude, dest.longitude, "destination"),
                      ("at_hospital", "returning", closed, dest.latitude, dest.longitude, "destination")]
        back = closed + timedelta(minutes=minutes * rng.uniform(0.9, 1.3))
        steps.append(("returning", "available", back, station.latitude, station.longitude, "station"))
        busy_until[amb.id] = back
        row["updated_at"] = closed
        for a, b, at, plat, plon, src in steps:
            log.append({"ambulance_id": amb.id, "call_id": call_id, "from_state": a, "to_state": b, "at": at,
                        "latitude": plat, "longitude": plon, "position_source": src, "by_user_id": None,
                        "reason": ""})
        events.append({"call_id": call_id, "action": "dispatch", "from_state": "answered", "to_state": "dispatched",
                       "at": dispatched, "by_user_id": None, "reason": "", "detail": {"ambulance": amb.code}})
        events.append({"call_id": call_id, "action": "close", "from_state": "at_hospital" if row["at_hospital_at"]
                       else "on_scene", "to_state": "closed", "at": closed, "by_user_id": None,
                       "reason": row["close_reason"], "detail": {}})
        calls.append(row)
    db.execute(insert(EmergencyCall), calls)
    db.execute(insert(CallEvent), events)
    db.execute(insert(AmbulanceStateChange), log)
    db.flush()
    return {"ambulances": made, "calls": len(calls), "call_events": len(events),
            "ambulance_log": len(log)}
