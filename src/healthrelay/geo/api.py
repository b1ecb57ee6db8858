"""The road network as JSON for maps, and travel times between two points.

Staff only (roads hold no patient data); the network is served from the in-process snapshot, so a
map or a dispatcher's "how far" question costs no table scan.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import select

from healthrelay.accounts.models import Role, User
from healthrelay.core.deps import DbSession, require_roles
from healthrelay.geo.models import RoadEdge, RoadNode, RoadSpeed
from healthrelay.geo.service import network_for

router = APIRouter(tags=["geo"])

Staff = Annotated[User, require_roles(*(r for r in Role if r != Role.PATIENT))]
Lat = Annotated[float, Query(ge=-90, le=90)]
Lon = Annotated[float, Query(ge=-180, le=180)]


class SpeedOut(BaseModel):
    road_class: str
    kmh: float
    description: str


class TravelOut(BaseModel):
    minutes: float | None
    reachable: bool
    path: list[tuple[float, float]] | None = None  # (latitude, longitude) points


@router.get("/geo/speeds", response_model=list[SpeedOut])
def road_speeds(db: DbSession, _user: Staff) -> list[SpeedOut]:
    return [SpeedOut(road_class=s.road_class, kmh=s.kmh, description=s.description)
            for s in db.scalars(select(RoadSpeed).order_by(RoadSpeed.kmh.desc()))]


@router.get("/geo/network")
def road_network(db: DbSession, _user: Staff,
                 road_class: Annotated[list[str] | None, Query()] = None,
                 min_lat: Lat | None = None, max_lat: Lat | None = None,
                 min_lon: Lon | None = None, max_lon: Lon | None = None) -> dict[str, Any]:
    """GeoJSON FeatureCollection of road segments ([lon, lat] order), optionally by class and box."""
    start, end = RoadNode.__table__.alias("a"), RoadNode.__table__.alias("b")
    query = (select(RoadEdge.id, RoadEdge.road_class, RoadEdge.one_way, RoadEdge.length_m,
                    start.c.latitude, start.c.longitude, end.c.latitude, end.c.longitude)
             .join(start, start.c.id == RoadEdge.from_node_id).join(end, end.c.id == RoadEdge.to_node_id)
             .order_by(RoadEdge.id))
    if road_class:
        query = query.where(RoadEdge.road_class.in_(road_class))
    if min_lat is not None:
        query = query.where(start.c.latitude >= min_lat)
    if max_lat is not None:
        query = query.where(start.c.latitude <= max_lat)
    if min_lon is not None:
        query = query.where(start.c.longitude >= min_lon)
    if max_lon is not None:
        query = query.where(start.c.longitude <= max_lon)
    features = [{"type": "Feature", "id": eid,
                 "geometry": {"type": "LineString", "coordinates": [[lo1, la1], [lo2, la2]]},
                 "properties": {"road_class": cls, "one_way": ow, "length_m": round(length, 1)}}
                for eid, cls, ow, length, la1, lo1, la2, lo2 in db.execute(query)]
    network = network_for(db)
    return {"type": "FeatureCollection", "features": features,
            "node_count": network.node_count, "edge_count": network.edge_count}


@router.get("/geo/travel-time", response_model=TravelOut)
def travel_time(db: DbSession, _user: Staff, from_lat: Lat, from_lon: Lon, to_lat: Lat, to_lon: Lon,
                with_path: bool = False) -> TravelOut:
    """Ambulance minutes from one point to another on the roads (off-road access included)."""
    network = network_for(db)
    minutes = network.minutes_between((from_lat, from_lon), (to_lat, to_lon))
    path = network.path((from_lat, from_lon), (to_lat, to_lon)) if with_path and minutes is not None else None
    return TravelOut(minutes=None if minutes is None else round(minutes, 2), reachable=minutes is not None,
                     path=path)
