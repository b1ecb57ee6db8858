"""The demo county's road network, generated from the directory's places (areas and regional centres)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.directory.models import Area, AreaLevel, Organisation
from healthrelay.geo.models import RoadEdge, RoadNode
from healthrelay.geo.roadgen import Place, county_roads
from healthrelay.geo.service import save_network

_KIND = {AreaLevel.COUNTY: "seat", AreaLevel.TOWNSHIP: "town", AreaLevel.VILLAGE: "village"}


def build_demo_roads(db: Session, *, seed: int) -> dict[str, int]:
    """Generate and store roads joining every area with coordinates; does nothing if roads exist."""
    existing = db.scalar(select(func.count(RoadNode.id))) or 0
    if existing:
        return {"nodes": existing, "edges": db.scalar(select(func.count(RoadEdge.id))) or 0, "created": 0}
    regional = set(db.scalars(select(Organisation.area_id).where(Organisation.is_regional_centre.is_(True))))
    places = [Place(key=a.code, lat=a.latitude, lon=a.longitude, kind=_KIND[a.level], area_id=a.id,  # type: ignore[arg-type]
                    major=a.id in regional)
              for a in db.scalars(select(Area).order_by(Area.code))
              if a.latitude is not None and a.longitude is not None]
    nodes, edges = county_roads(places, seed=seed)
    save_network(db, nodes=nodes, edges=edges)
    return {"nodes": len(nodes), "edges": len(edges), "created": 1}
