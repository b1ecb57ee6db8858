"""The "1030" coverage of a set of ambulance stations: which villages an ambulance reaches in time.

1030 is the county standard: on scene within 10 minutes in town and 30 minutes in the countryside.
Here "reach" is road travel time from the station (off-road access included), the part a county can
change by where it puts stations; answering and leaving (the other national targets) come on top.
`reach` and `travel_matrix` are pure functions over a `RoadNetwork`, so the page, the placement study
and the bench share them; `county_sites` and `call_demand` read the directory and last year's calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from scipy.spatial import cKDTree
from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.core.db import utcnow
from healthrelay.directory.models import (
    AllianceMembership,
    Area,
    AreaLevel,
    Capability,
    Organisation,
    OrganisationCapability,
    OrgKind,
    OrgLevel,
)
from healthrelay.geo.service import RoadNetwork

URBAN_MINUTES = 10
RURAL_MINUTES = 30


@dataclass(frozen=True)
class Site:
    """A point that matters for coverage: a station, a candidate site, a village or a demand point."""

    key: str
    name: str
    lat: float
    lon: float
    urban: bool = False


@dataclass(frozen=True)
class VillageReach:
    key: str
    name: str
    urban: bool
    limit_minutes: float
    best_minutes: float | None  # None: no station reaches it by road at all
    best_station: str | None
    covered: bool


@dataclass(frozen=True)
class CoverageSummary:
    urban_total: int
    urban_covered: int
    rural_total: int
    rural_covered: int

    @property
    def total(self) -> int:
        return self.urban_total + self.rural_total

    @property
    def covered(self) -> int:
        return self.urban_covered + self.rural_covered

    @property
    def share(self) -> float:
        return self.covered / self.total if self.total else 0.0


def travel_matrix(network: RoadNetwork, candidates: Sequence[Site], demand_points: Sequence[Site]) -> np.ndarray:
    """Minutes from each candidate (rows) to each demand point (columns); `inf` where no road leads."""
    return network.minutes_matrix([(c.lat, c.lon) for c in candidates], [(d.lat, d.lon) for d in demand_points])


def reach(network: RoadNetwork, stations: Sequence[Site], villages: Sequence[Site], *,
          urban_minutes: float = URBAN_MINUTES, rural_minutes: float = RURAL_MINUTES) -> list[VillageReach]:
    """For each village, the fastest station and whether it meets the 10/30-minute limit."""
    if not villages:
        return []
    if stations:
        matrix = travel_matrix(network, stations, villages)
        best_row = np.argmin(matrix, axis=0)
        best = matrix[best_row, np.arange(len(villages))]
    else:
        best_row = np.zeros(len(villages), dtype=int)
        best = np.full(len(villages), np.inf)
    out: list[VillageReach] = []
    for i, v in enumerate(villages):
        limit = urban_minutes if v.urban else rural_minutes
        minutes = float(best[i]) if np.isfinite(best[i]) else None
        out.append(VillageReach(key=v.key, name=v.name, urban=v.urban, limit_minutes=limit,
                                best_minutes=minutes,
                                best_station=stations[int(best_row[i])].key if minutes is not None else None,
                                covered=minutes is not None and minutes <= limit))
    return out


def summarise(reaches: Sequence[VillageReach]) -> CoverageSummary:
    return CoverageSummary(urban_total=sum(r.urban for r in reaches),
                           urban_covered=sum(r.urban and r.covered for r in reaches),
                           rural_total=sum(not r.urban for r in reaches),
                           rural_covered=sum(not r.urban and r.covered for r in reaches))


# ------------------------------------------------------------------------------------------------
# Loading the county from the directory (the page and the bench share these)

def is_urban_township_name(name: str) -> bool:
    """A 街道 (urban subdistrict) is the county seat's town; the same rule as emergency.service."""
    return name.endswith("街道")


@dataclass(frozen=True)
class CountySites:
    stations: list[Site]  # organisations with AMBULANCE: emergency stations and sub-stations
    villages: list[Site]  # village-level areas; `urban` under a 街道
    candidates: list[Site]  # where a station could stand: today's stations, health centres, hospitals
    village_township: dict[str, str]  # village key -> township name
    org_names: dict[str, str]  # site key -> display name (stations and candidates)


def county_sites(db: Session, *, alliance_id: int) -> CountySites:
    """Stations, villages and candidate sites of one alliance's county (or counties)."""
    members = db.execute(select(Organisation).join(AllianceMembership).where(
        AllianceMembership.alliance_id == alliance_id).order_by(Organisation.code)).scalars().all()
    ambulance = set(db.scalars(select(OrganisationCapability.organisation_id).where(
        OrganisationCapability.capability == Capability.AMBULANCE,
        OrganisationCapability.organisation_id.in_([m.id for m in members])))) if members else set()
    placed = [m for m in members if m.latitude is not None and m.longitude is not None]
    station_kinds = (OrgKind.EMERGENCY_STATION, OrgKind.EMERGENCY_SUBSTATION)
    stations = [Site(key=f"org:{m.id}", name=m.name, lat=m.latitude, lon=m.longitude)  # type: ignore[arg-type]
                for m in placed if m.id in ambulance and m.kind in station_kinds]
    candidate_kinds = (*station_kinds, OrgKind.TOWNSHIP_CENTRE, OrgKind.COMMUNITY_CENTRE, OrgKind.GENERAL_HOSPITAL,
                       OrgKind.TCM_HOSPITAL, OrgKind.MATERNAL_CHILD)
    local = [m for m in placed if m.level not in (OrgLevel.PROVINCIAL, OrgLevel.TERTIARY)]
    candidates = [Site(key=f"org:{m.id}", name=m.name, lat=m.latitude, lon=m.longitude)  # type: ignore[arg-type]
                  for m in local if m.kind in candidate_kinds]
    # The counties the members sit in: walk up from each member's area (village → township → county).
    counties: set[int] = set()
    frontier = {m.area_id for m in local if m.area_id is not None}
    for _ in range(3):
        if not frontier:
            break
        rows = db.execute(select(Area.id, Area.level, Area.parent_id).where(Area.id.in_(frontier))).all()
        counties |= {r.id for r in rows if r.level == AreaLevel.COUNTY}
        frontier = {r.parent_id for r in rows if r.parent_id is not None and r.level != AreaLevel.COUNTY}
    villages: list[Site] = []
    township_of: dict[str, str] = {}
    if counties:
        township = Area.__table__.alias("township")
        rows = db.execute(select(Area.id, Area.name, Area.latitude, Area.longitude, township.c.name)
                          .join(township, township.c.id == Area.parent_id)
                          .where(Area.level == AreaLevel.VILLAGE, township.c.parent_id.in_(counties),
                                 Area.latitude.is_not(None), Area.longitude.is_not(None))
                          .order_by(Area.code)).all()
        for area_id, name, lat, lon, township_name in rows:
            key = f"area:{area_id}"
            villages.append(Site(key=key, name=name, lat=lat, lon=lon, urban=is_urban_township_name(township_name)))
            township_of[key] = township_name
    names = {s.key: s.name for s in (*stations, *candidates)}
    return CountySites(stations=stations, villages=villages, candidates=candidates, village_township=township_of,
                       org_names=names)


@dataclass(frozen=True)
class Demand:
    points: list[tuple[Site, float]]  # villages with their weights
    basis: str  # "calls" (last year's calls, each counted at its nearest village) or "villages" (1 each)
    calls: int
    since: datetime


def call_demand(db: Session, villages: Sequence[Site], *, days: int = 365, now: datetime | None = None) -> Demand:
    """Last year's calls, each counted at its nearest village; villages weigh 1 each when there are none.

    Calls further than `_CALL_SNAP_KM` from every village belong to another county and are left out.
    """
    since = (now or utcnow()) - timedelta(days=days)
    if not villages:
        return Demand(points=[], basis="villages", calls=0, since=since)
    from healthrelay.emergency.models import EmergencyCall  # helper D's model; imported when needed

    rows = db.execute(select(EmergencyCall.latitude, EmergencyCall.longitude)
                      .where(EmergencyCall.received_at >= since)).all()
    counts = np.zeros(len(villages))
    if rows:
        lat0 = float(np.mean([v.lat for v in villages]))
        kx = 111.195 * math.cos(math.radians(lat0))
        tree = cKDTree([(v.lon * kx, v.lat * 111.195) for v in villages])
        pts = np.array([(lon * kx, lat * 111.195) for lat, lon in rows if lat is not None and lon is not None])
        if len(pts):
            dist, idx = tree.query(pts)
            np.add.at(counts, idx[dist <= _CALL_SNAP_KM], 1)
    total = int(counts.sum())
    if total == 0:
        return Demand(points=[(v, 1.0) for v in villages], basis="villages", calls=0, since=since)
    return Demand(points=[(v, float(c)) for v, c in zip(villages, counts, strict=True) if c > 0], basis="calls",
                  calls=total, since=since)


_CALL_SNAP_KM = 15.0
