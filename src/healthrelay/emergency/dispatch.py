"""The dispatch recommendation: which ambulance, and which hospital, with the reasons shown to the dispatcher.

Ambulances are ranked by estimated minutes on the county road network (ONE shortest-path run from the
scene over the reversed graph, for all available ambulances at once); a priority-1 call prefers a mobile ICU
when it is within a few minutes (data: `mobile_icu_margin_minutes`) of the fastest. The destination follows
the condition: chest pain → the nearest PCI-capable hospital, stroke → the nearest thrombolysis centre while
onset + travel + door-to-needle fits the 4.5 h window (else the nearest PCI-level centre for thrombectomy),
trauma → the nearest hospital with CT and surgery, maternal/neonatal → the maternal-child hospital (else a
county general hospital), other → the nearest hospital. Without a road network the estimate falls back to
the straight line with a detour factor, and says so.

`dispatch()` itself (the state change) lives in service.py and is re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from healthrelay.core.db import utcnow
from healthrelay.core.errors import Conflict
from healthrelay.directory.models import (
    Capability,
    Department,
    Organisation,
    OrganisationCapability,
    OrgKind,
    OrgLevel,
    Specialty,
)
from healthrelay.directory.service import great_circle_km
from healthrelay.emergency import service
from healthrelay.emergency.models import Ambulance, AmbulanceKind, AmbulanceState, CallCategory, EmergencyCall
from healthrelay.emergency.service import dispatch  # noqa: F401  (the state change, re-exported)

# Straight-line fallback: road distance ≈ 1.3 × the straight line, at an average 40 km/h.
DETOUR_FACTOR = 1.3
FALLBACK_KMH = 40.0
HOSPITAL_KINDS = (OrgKind.GENERAL_HOSPITAL, OrgKind.TCM_HOSPITAL, OrgKind.MATERNAL_CHILD)
SURGERY_SPECIALTIES = ("general_surgery", "orthopedics", "neurosurgery")
KIND_ZH = {AmbulanceKind.TRANSPORT: "转运型", AmbulanceKind.EMERGENCY: "急救型", AmbulanceKind.MOBILE_ICU: "监护型"}


@dataclass
class AmbulanceOption:
    ambulance_id: int
    code: str
    kind: str
    station_organisation_id: int
    minutes: float | None
    has_ecg_transmitter: bool
    reasons: list[str] = field(default_factory=list)


@dataclass
class DestinationOption:
    organisation_id: int
    name: str
    minutes: float | None
    reasons: list[str] = field(default_factory=list)


@dataclass
class Recommendation:
    call_id: int
    ambulances: list[AmbulanceOption]  # ranked, best first
    best_ambulance_id: int | None
    destination: DestinationOption | None
    alternatives: list[DestinationOption]  # other destinations of the same kind, nearest first
    reasons: list[str]  # the whole recommendation, as the dispatcher reads it
    estimate: str  # "road_network" | "straight_line"
    computed_at: datetime
    geo_ms: float
    total_ms: float

    def minutes_of(self, ambulance_id: int) -> float | None:
        return next((a.minutes for a in self.ambulances if a.ambulance_id == ambulance_id), None)

    def eta_minutes(self, ambulance_id: int, destination_id: int | None) -> float | None:
        """Minutes until the ambulance reaches the destination: to the scene, then on to the hospital."""
        to_scene = self.minutes_of(ambulance_id)
        options = ([self.destination] if self.destination else []) + self.alternatives
        onward = next((d.minutes for d in options if d.organisation_id == destination_id), None)
        if to_scene is None or onward is None:
            return None
        return round(to_scene + onward, 1)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["computed_at"] = self.computed_at.isoformat()
        return out


def _fmt(minutes: float | None) -> str:
    return "—" if minutes is None else f"{round(minutes)}"


# --- travel times ---------------------------------------------------------------------------------

def _network(db: Session, network: Any) -> Any:
    """The county road network (geo domain), or None when the county has no roads loaded yet."""
    if network is not None:
        return network
    try:
        from healthrelay.geo.service import network_for
    except ImportError:
        return None
    net = network_for(db)
    return net if getattr(net, "node_count", 0) else None


def _straight(a: tuple[float, float], b: tuple[float, float]) -> float:
    return great_circle_km(a[0], a[1], b[0], b[1]) * DETOUR_FACTOR / FALLBACK_KMH * 60


def minutes_to_scene(net: Any, scene: tuple[float, float],
                     sources: Sequence[tuple[float, float]]) -> list[float | None]:
    if not sources:
        return []
    if net is None:
        return [_straight(s, scene) for s in sources]
    return list(net.minutes_to(scene, list(sources)))


def minutes_from_scene(net: Any, scene: tuple[float, float],
                       targets: Sequence[tuple[float, float]]) -> list[float | None]:
    if not targets:
        return []
    if net is None:
        return [_straight(scene, t) for t in targets]
    return list(net.minutes_from(scene, list(targets)))


# --- candidate hospitals --------------------------------------------------------------------------

def _with_capability(capability: Capability) -> Any:
    return exists().where(OrganisationCapability.organisation_id == Organisation.id,
                          OrganisationCapability.capability == str(capability))


def _candidates(db: Session, *where: Any) -> list[Organisation]:
    q = select(Organisation).where(Organisation.latitude.is_not(None), Organisation.longitude.is_not(None),
                                   Organisation.level != str(OrgLevel.PROVINCIAL), *where)
    return list(db.execute(q.order_by(Organisation.id)).scalars())


def _hospitals_with(db: Session, capability: Capability) -> list[Organisation]:
    return _candidates(db, _with_capability(capability))


def _trauma_hospitals(db: Session) -> list[Organisation]:
    surgery = exists().where(Department.organisation_id == Organisation.id, Department.specialty_id == Specialty.id,
                             Specialty.code.in_(SURGERY_SPECIALTIES))
    return _candidates(db, _with_capability(Capability.CT),
                       Organisation.kind.in_([str(k) for k in HOSPITAL_KINDS]) | surgery)


def _general_hospitals(db: Session) -> list[Organisation]:
    return _candidates(db, Organisation.kind.in_([str(OrgKind.GENERAL_HOSPITAL), str(OrgKind.TCM_HOSPITAL)]))


def _maternal_child(db: Session) -> list[Organisation]:
    return _candidates(db, Organisation.kind == str(OrgKind.MATERNAL_CHILD))


def _ranked(orgs: list[Organisation], minutes: list[float | None]) -> list[tuple[Organisation, float]]:
    pairs = [(o, m) for o, m in zip(orgs, minutes, strict=True) if m is not None]
    return sorted(pairs, key=lambda p: (p[1], p[0].id))


def _option(org: Organisation, minutes: float, reason: str) -> DestinationOption:
    return DestinationOption(organisation_id=org.id, name=org.name, minutes=round(minutes, 1), reasons=[reason])


def _destination(db: Session, call: EmergencyCall, net: Any,
                 now: datetime) -> tuple[DestinationOption | None, list[DestinationOption]]:
    scene = (call.latitude, call.longitude)
    category = CallCategory(call.category)
    # ONE shortest-path run from the scene to every place that could receive the patient; each rule below
    # then only filters by capability (SQL) and reads the minutes.
    pool = _candidates(db)
    minutes = dict(zip((o.id for o in pool), minutes_from_scene(net, scene, [(o.latitude, o.longitude)
                                                                              for o in pool]), strict=True))

    def nearest(orgs: list[Organisation], text: str) -> list[DestinationOption]:
        ranked = _ranked(orgs, [minutes.get(o.id) for o in orgs])
        return [_option(o, m, text.format(m=_fmt(m))) for o, m in ranked]

    if category == CallCategory.CHEST_PAIN:
        found = nearest(_hospitals_with(db, Capability.PCI),
                        "最近的可行PCI医院，预计 {m} 分钟 / nearest PCI-capable hospital, {m} min")
        if not found:
            found = nearest(_hospitals_with(db, Capability.THROMBOLYSIS),
                            "路网内无可达的PCI医院，送最近的溶栓医院，预计 {m} 分钟 / no PCI hospital reachable: "
                            "nearest thrombolysis centre, {m} min")
    elif category == CallCategory.STROKE:
        found = _stroke_destination(db, call, net, now, nearest)
    elif category == CallCategory.TRAUMA:
        found = nearest(_trauma_hospitals(db), "最近的有CT和外科的医院，预计 {m} 分钟 / nearest hospital with CT and "
                                               "surgery, {m} min")
    elif category in (CallCategory.CRITICAL_MATERNAL, CallCategory.CRITICAL_NEONATAL):
        found = nearest(_maternal_child(db), "县妇幼保健院（危重孕产妇/新生儿救治中心），预计 {m} 分钟 / county "
                                             "maternal-child hospital, {m} min")
        if not found:
            found = nearest(_candidates(db, Organisation.kind == str(OrgKind.GENERAL_HOSPITAL),
                                        Organisation.level == str(OrgLevel.SECONDARY)),
                            "无妇幼保健院可达，送县级综合医院，预计 {m} 分钟 / no maternal-child hospital reachable: "
                            "county general hospital, {m} min")
    else:
        found = nearest(_general_hospitals(db), "最近的医院，预计 {m} 分钟 / nearest hospital, {m} min")
    return (found[0] if found else None), found[1:6]


def _stroke_destination(db: Session, call: EmergencyCall, net: Any, now: datetime,
                        nearest: Any) -> list[DestinationOption]:
    window = service.setting(db, "thrombolysis_window_minutes")
    dnt = service.setting(db, "door_to_needle_minutes")
    lytic = nearest(_hospitals_with(db, Capability.THROMBOLYSIS),
                    "最近的溶栓中心，预计 {m} 分钟 / nearest thrombolysis centre, {m} min")
    pci_level = nearest(_hospitals_with(db, Capability.PCI),
                        "超出溶栓时间窗：送最近的可取栓（PCI级）医院，预计 {m} 分钟 / outside the thrombolysis window: "
                        "nearest thrombectomy (PCI-level) centre, {m} min")
    if call.onset_at is None:
        for option in lytic:
            option.reasons.append("发病时间不详，按时间窗内处理 / onset unknown: treated as within the window")
        return lytic or pci_level
    elapsed = (now - call.onset_at).total_seconds() / 60
    inside = []
    for option in lytic:
        total = elapsed + (option.minutes or 0) + dnt
        if total <= window:
            option.reasons.append(f"发病至溶栓预计 {round(total)} 分钟，在 {round(window)} 分钟时间窗内 / onset to "
                                  f"needle about {round(total)} min, within the {round(window)} min window")
            inside.append(option)
    if inside:
        return inside
    for option in pci_level:
        option.reasons.append(f"发病已 {round(elapsed)} 分钟 / onset {round(elapsed)} min ago")
    return pci_level or lytic


# --- ambulances -----------------------------------------------------------------------------------

def _rank_ambulances(db: Session, call: EmergencyCall, net: Any) -> tuple[list[AmbulanceOption], float]:
    rows = list(db.execute(select(Ambulance).where(Ambulance.state == str(AmbulanceState.AVAILABLE))
                           .order_by(Ambulance.id)).scalars())
    started = time.perf_counter()
    minutes = minutes_to_scene(net, (call.latitude, call.longitude), [(a.latitude, a.longitude) for a in rows])
    geo_ms = (time.perf_counter() - started) * 1000
    options = [AmbulanceOption(ambulance_id=a.id, code=a.code, kind=str(a.kind),
                               station_organisation_id=a.station_organisation_id,
                               minutes=None if m is None else round(m, 1), has_ecg_transmitter=a.has_ecg_transmitter)
               for a, m in zip(rows, minutes, strict=True)]
    options.sort(key=lambda o: (o.minutes is None, o.minutes if o.minutes is not None else 0, o.ambulance_id))
    return options, geo_ms


def _choose(db: Session, call: EmergencyCall, options: list[AmbulanceOption]) -> AmbulanceOption | None:
    reachable = [o for o in options if o.minutes is not None]
    if not reachable:
        return None
    fastest = reachable[0]
    fastest.reasons.append(f"最快到达现场，预计 {_fmt(fastest.minutes)} 分钟 / fastest to the scene, "
                           f"{_fmt(fastest.minutes)} min")
    chosen = fastest
    if call.priority == 1 and fastest.kind != AmbulanceKind.MOBILE_ICU:
        margin = service.setting(db, "mobile_icu_margin_minutes")
        icu = next((o for o in reachable if o.kind == AmbulanceKind.MOBILE_ICU
                    and (o.minutes or 0) - (fastest.minutes or 0) <= margin), None)
        if icu is not None:
            slower = round((icu.minutes or 0) - (fastest.minutes or 0), 1)
            icu.reasons.append(f"一级呼叫优先监护型救护车，仅比最快车慢 {slower:g} 分钟（{_fmt(icu.minutes)} 分钟）/ "
                               f"priority 1: mobile ICU only {slower:g} min slower than the fastest")
            chosen = icu
    if call.category == CallCategory.CHEST_PAIN and chosen.has_ecg_transmitter:
        chosen.reasons.append("车载心电图可传输 / carries an ECG transmitter")
    return chosen


def recommend(db: Session, *, call_id: int, network: Any = None) -> Recommendation:
    """Rank the available ambulances and choose the destination for an open call, with the reasons."""
    started = time.perf_counter()
    call = service.get_call(db, call_id)
    if call.state in service.ENDED_CALL_STATES:
        raise Conflict(f"呼叫 {call.number} 已结束 / the call has ended ({call.state})", code="call_closed")
    net = _network(db, network)
    now = utcnow()
    options, geo_ms = _rank_ambulances(db, call, net)
    chosen = _choose(db, call, options)
    if chosen is not None and options and options[0] is not chosen:
        options.remove(chosen)
        options.insert(0, chosen)
    destination, alternatives = _destination(db, call, net, now)
    reasons = []
    if chosen is not None:
        kind = KIND_ZH.get(AmbulanceKind(chosen.kind), chosen.kind)
        reasons.append(f"{chosen.code}（{kind}）：" + "；".join(chosen.reasons))
    else:
        reasons.append("没有可用且可到达的救护车 / no available ambulance can reach the scene")
    if destination is not None:
        reasons.append(f"{destination.name}：" + "；".join(destination.reasons))
    else:
        reasons.append("没有符合条件且可到达的医院 / no suitable hospital is reachable")
    if net is None:
        reasons.append("未加载路网，按直线距离估算 / no road network loaded: straight-line estimate")
    return Recommendation(call_id=call.id, ambulances=options,
                          best_ambulance_id=chosen.ambulance_id if chosen else None,
                          destination=destination, alternatives=alternatives, reasons=reasons,
                          estimate="straight_line" if net is None else "road_network", computed_at=now,
                          geo_ms=round(geo_ms, 2), total_ms=round((time.perf_counter() - started) * 1000, 2))
