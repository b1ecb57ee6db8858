"""A constructed county for the coverage page and study, with travel times known by hand.

    S (county seat, station) ──national 20 km (17.1 min)── T1 (镇) ──county 35 km (46.7 min)── T2 (乡)
    └─urban 0.5 km (1 min)── U1 (社区, 城关街道)     T1 ─village 1 km (2.4 min)─ V1     T2 ─village 5 km (12 min)─ V2

Today the station at S reaches U1 (1 min ≤ 10), V1 (19.5 ≤ 30), not V2 (75.8). A sub-station at T2's health
centre would reach V2 in 12 minutes.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role
from healthrelay.directory.models import (
    Alliance,
    AllianceKind,
    AllianceMembership,
    Area,
    AreaLevel,
    Capability,
    MembershipRole,
    Organisation,
    OrganisationCapability,
    OrgKind,
    OrgLevel,
)
from healthrelay.geo.service import save_network
from tests import factories as f

S, U1, T1, V1, T2, V2 = (30.0, 110.0), (30.0, 110.005), (30.0, 110.2), (30.0, 110.21), (30.0, 110.55), (30.0, 110.6)


@dataclass
class CoverageWorld:
    alliance: Alliance
    villages: dict[str, Area]
    station: Organisation
    t1_centre: Organisation
    t2_centre: Organisation


def _area(db: Session, code: str, name: str, level: AreaLevel, point: tuple[float, float],
          parent: Area | None = None) -> Area:
    area = Area(code=code, name=name, level=level, parent_id=parent.id if parent else None, latitude=point[0],
                longitude=point[1])
    db.add(area)
    db.flush()
    return area


def _org(db: Session, code: str, name: str, kind: OrgKind, level: OrgLevel, point: tuple[float, float],
         area: Area, alliance: Alliance, *caps: Capability) -> Organisation:
    org = Organisation(code=code, name=name, kind=kind, level=level, latitude=point[0], longitude=point[1],
                       area_id=area.id)
    db.add(org)
    db.flush()
    db.add(AllianceMembership(alliance_id=alliance.id, organisation_id=org.id, role=MembershipRole.MEMBER))
    for c in caps:
        db.add(OrganisationCapability(organisation_id=org.id, capability=c))
    return org


def build(db: Session) -> CoverageWorld:
    alliance = Alliance(code="COV", name="测试县医共体", kind=AllianceKind.COUNTY_COMMUNITY)
    db.add(alliance)
    db.flush()
    county = _area(db, "9", "测试县", AreaLevel.COUNTY, S)
    street = _area(db, "91", "城关街道", AreaLevel.TOWNSHIP, S, county)
    town1 = _area(db, "92", "东镇", AreaLevel.TOWNSHIP, T1, county)
    town2 = _area(db, "93", "远山乡", AreaLevel.TOWNSHIP, T2, county)
    villages = {"U1": _area(db, "911", "南街社区", AreaLevel.VILLAGE, U1, street),
                "V1": _area(db, "921", "柳湾村", AreaLevel.VILLAGE, V1, town1),
                "V2": _area(db, "931", "高山村", AreaLevel.VILLAGE, V2, town2)}
    station = _org(db, "EMS", "测试县急救站", OrgKind.EMERGENCY_STATION, OrgLevel.SECONDARY, S, county, alliance,
                   Capability.AMBULANCE)
    t1c = _org(db, "C1", "东镇卫生院", OrgKind.TOWNSHIP_CENTRE, OrgLevel.TOWNSHIP, T1, town1, alliance)
    t2c = _org(db, "C2", "远山乡卫生院", OrgKind.TOWNSHIP_CENTRE, OrgLevel.TOWNSHIP, T2, town2, alliance)
    points = {"S": S, "U1": U1, "T1": T1, "V1": V1, "T2": T2, "V2": V2}
    save_network(db, nodes=[{"key": k, "latitude": p[0], "longitude": p[1]} for k, p in points.items()],
                 edges=[{"from_key": a, "to_key": b, "road_class": c, "length_m": m} for a, b, c, m in (
                     ("S", "T1", "national", 20000), ("S", "U1", "urban", 500), ("T1", "T2", "county", 35000),
                     ("T1", "V1", "village", 1000), ("T2", "V2", "village", 5000))])
    f.user(db, role=Role.DISPATCHER, username="cov_disp", organisation=station)
    f.user(db, role=Role.HEALTH_BUREAU, username="cov_bureau")
    f.user(db, role=Role.CLINICIAN, username="cov_doc", organisation=t1c)
    db.commit()
    return CoverageWorld(alliance=alliance, villages=villages, station=station, t1_centre=t1c, t2_centre=t2c)
