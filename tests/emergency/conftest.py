"""A tiny county for the emergency tests: one road with known travel times, two stations, three ambulances,
a township centre (thrombolysis, no PCI) nearer the scene than the county hospital (PCI), a maternal-child
hospital, an urban 街道 and a rural village, dispatchers, a crew and the county's cardiologist.

The road (county class, 45 km/h) runs west to east; every stretch is 4.5 km, so 6 minutes:

    N0 substation (mobile ICU) — N1 township centre — N2 village (scene) — N3 city station (emergency,
    transport) — N4 街道 community — N5 county hospital (PCI) — N6 maternal-child hospital
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.accounts.service import create_user
from healthrelay.core.db import utcnow
from healthrelay.directory.models import (
    Area,
    AreaLevel,
    Capability,
    Department,
    Organisation,
    OrganisationCapability,
    OrgKind,
    OrgLevel,
    Post,
    Specialty,
    TitleGrade,
)
from healthrelay.emergency import service
from healthrelay.emergency.models import Ambulance, EmergencyCall
from healthrelay.patients.models import Patient
from tests import factories as f

LAT = 30.0
STEP_LON = 0.01
STRETCH_M = 4500.0
STRETCH_MIN = STRETCH_M / 1000 / 45 * 60  # 6 minutes on a county road


def lon(i: int) -> float:
    return round(110.0 + i * STEP_LON, 6)


@dataclass
class EmWorld:
    county_area: Area
    urban_town: Area  # 城东街道
    urban_village: Area  # a community under it (at N4)
    rural_town: Area  # 石门镇
    village: Area  # the scene (at N2)
    station: Organisation  # city station (N3)
    substation: Organisation  # sub-station (N0)
    township: Organisation  # township centre (N1): thrombolysis, CT, no PCI
    county: Organisation  # county hospital (N5): PCI, thrombolysis, CT, surgery
    mch: Organisation  # maternal-child hospital (N6)
    emergency_amb: Ambulance  # at the station
    transport_amb: Ambulance  # at the station
    icu_amb: Ambulance  # mobile ICU at the sub-station
    dispatcher: User
    dispatcher2: User
    crew: User  # a crew account at the sub-station (dispatcher role)
    cardiologist: User  # county hospital, cardiology
    county_admin: User
    township_doctor: User
    outsider: User  # a clinician elsewhere, not on the board
    patient: Patient


def _org(db: Session, name: str, i: int, kind: OrgKind, level: OrgLevel, caps: tuple[Capability, ...] = (),
         area: Area | None = None) -> Organisation:
    org = f.organisation(db, name=name, kind=kind, level=level)
    org.latitude, org.longitude = LAT, lon(i)
    org.area_id = area.id if area else None
    for cap in caps:
        db.add(OrganisationCapability(organisation_id=org.id, capability=cap))
    db.flush()
    return org


def staff(db: Session, *, organisation: Organisation, username: str, role: Role,
          department: Department | None = None) -> User:
    prac = f.practitioner(db, name=username, grade=TitleGrade.ATTENDING)
    post = Post(practitioner_id=prac.id, organisation_id=organisation.id,
                department_id=department.id if department else None)
    db.add(post)
    db.flush()
    return create_user(db, username=username, password=f.PASSWORD, display_name=username, role=role,
                       organisation_id=organisation.id, practitioner_id=prac.id, post_id=post.id)


def _area(db: Session, code: str, name: str, level: AreaLevel, parent: Area | None, i: int) -> Area:
    area = Area(code=code, name=name, level=level, parent_id=parent.id if parent else None, latitude=LAT,
                longitude=lon(i), grids=[])
    db.add(area)
    db.flush()
    return area


def save_road(db: Session) -> None:
    from healthrelay.geo.service import save_network

    nodes = [{"key": i, "latitude": LAT, "longitude": lon(i), "label": f"N{i}"} for i in range(7)]
    edges = [{"from_key": i, "to_key": i + 1, "road_class": "county", "length_m": STRETCH_M} for i in range(6)]
    save_network(db, nodes=nodes, edges=edges)
    db.flush()


def build_world(db: Session, *, roads: bool = True) -> EmWorld:
    county_area = _area(db, "990001", "测试县", AreaLevel.COUNTY, None, 4)
    urban_town = _area(db, "990001001", "城东街道", AreaLevel.TOWNSHIP, county_area, 4)
    urban_village = _area(db, "990001001201", "东门社区", AreaLevel.VILLAGE, urban_town, 4)
    rural_town = _area(db, "990001003", "石门镇", AreaLevel.TOWNSHIP, county_area, 1)
    village = _area(db, "990001003201", "柳湾村", AreaLevel.VILLAGE, rural_town, 2)
    cardio = Specialty(code="cardiology", name="心血管内科")
    db.add(cardio)
    db.flush()
    station = _org(db, "测试县急救中心城区急救站", 3, OrgKind.EMERGENCY_STATION, OrgLevel.SECONDARY,
                   (Capability.AMBULANCE,))
    substation = _org(db, "测试县急救中心石门急救分站", 0, OrgKind.EMERGENCY_SUBSTATION, OrgLevel.TOWNSHIP,
                      (Capability.AMBULANCE,))
    township = _org(db, "石门镇中心卫生院", 1, OrgKind.TOWNSHIP_CENTRE, OrgLevel.TOWNSHIP,
                    (Capability.THROMBOLYSIS, Capability.CT), rural_town)
    county = _org(db, "测试县人民医院", 5, OrgKind.GENERAL_HOSPITAL, OrgLevel.SECONDARY,
                  (Capability.PCI, Capability.THROMBOLYSIS, Capability.CT), county_area)
    mch = _org(db, "测试县妇幼保健院", 6, OrgKind.MATERNAL_CHILD, OrgLevel.SECONDARY, (), county_area)
    dept = Department(organisation_id=county.id, code="CARD", name="心血管内科", specialty_id=cardio.id)
    db.add(dept)
    db.flush()
    if roads:
        save_road(db)
    world = EmWorld(
        county_area=county_area, urban_town=urban_town, urban_village=urban_village, rural_town=rural_town,
        village=village, station=station, substation=substation, township=township, county=county, mch=mch,
        emergency_amb=service.add_ambulance(db, code="城区-01", kind="emergency", station_organisation_id=station.id,
                                            plate="湘A·12001", has_ecg_transmitter=True),
        transport_amb=service.add_ambulance(db, code="城区-02", kind="transport", station_organisation_id=station.id),
        icu_amb=service.add_ambulance(db, code="石门-01", kind="mobile_icu", station_organisation_id=substation.id),
        dispatcher=staff(db, organisation=station, username="disp_city", role=Role.DISPATCHER),
        dispatcher2=staff(db, organisation=station, username="disp_city2", role=Role.DISPATCHER),
        crew=staff(db, organisation=substation, username="crew_shimen", role=Role.DISPATCHER),
        cardiologist=staff(db, organisation=county, username="cardio", role=Role.CLINICIAN, department=dept),
        county_admin=staff(db, organisation=county, username="county_admin", role=Role.ORG_ADMIN),
        township_doctor=staff(db, organisation=township, username="town_doc", role=Role.CLINICIAN),
        outsider=staff(db, organisation=mch, username="mch_doc", role=Role.CLINICIAN),
        patient=f.patient(db, name="张大山", registered_at=township),
    )
    db.commit()
    return world


@pytest.fixture
def world(db: Session) -> EmWorld:
    from healthrelay.geo.service import forget_cached_networks

    forget_cached_networks()
    return build_world(db)


def new_call(db: Session, w: EmWorld, *, category: str = "chest_pain", priority: int = 2, area: Area | None = None,
             by: User | None = None, received_at: datetime | None = None, **extra: object) -> EmergencyCall:
    now = utcnow()
    data = service.CallInput(category=category, priority=priority, complaint="胸痛30分钟", caller_name="张家属",
                             caller_phone="13800000000", area_id=(area or w.village).id,
                             received_at=received_at or now - timedelta(seconds=20), answered_at=now, **extra)
    call = service.create_call(db, by=by or w.dispatcher, data=data)
    db.commit()
    return call
