"""Generated networks are connected, reach every place, and bend (roads are longer than straight lines)."""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.demo.roads import build_demo_roads
from healthrelay.directory.models import Area, AreaLevel, Organisation, OrgKind, OrgLevel
from healthrelay.geo.roadgen import Place, county_roads, synthetic_region
from healthrelay.geo.service import haversine_m, network_for

PLACES = [
    Place("seat", 29.72, 111.47, "seat"),
    Place("north", 29.90, 111.45, "town", major=True),
    Place("east", 29.70, 111.70, "town"),
    Place("south", 29.55, 111.40, "town"),
    Place("suburb", 29.725, 111.475, "village"),  # inside the seat's streets
    *[Place(f"v{i}", 29.90 + 0.02 * np.cos(i), 111.45 + 0.03 * np.sin(i), "village") for i in range(6)],
    Place("far", 29.45, 111.80, "village"),
]


def _components(nodes: list[dict], edges: list[dict]) -> int:
    n = len(nodes)
    rows = [e["from_key"] for e in edges]
    cols = [e["to_key"] for e in edges]
    graph = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[0]


def test_county_roads_reach_every_place_on_bending_roads() -> None:
    nodes, edges = county_roads(PLACES, seed=7)
    assert _components(nodes, edges) == 1
    labelled = {n["label"]: n for n in nodes if n["label"]}
    assert set(labelled) == {p.key for p in PLACES}
    assert {e["road_class"] for e in edges} >= {"urban", "national", "provincial", "county"}
    # The trunk road to "north" is a chain of short segments (a bend every 300-500 m)...
    national = [e for e in edges if e["road_class"] == "national"]
    assert len(national) > 20 and max(e["length_m"] for e in national) < 700
    # ... and the deterministic output depends on the seed only.
    assert county_roads(PLACES, seed=7) == (nodes, edges)
    assert county_roads(PLACES, seed=8) != (nodes, edges)


def test_synthetic_region_has_exactly_the_nodes_asked_and_is_connected() -> None:
    nodes, edges = synthetic_region(n_nodes=10_007, seed=3)
    assert len(nodes) == 10_007
    assert _components(nodes, edges) == 1
    assert {"national", "provincial", "village"} <= {e["road_class"] for e in edges}


def test_demo_roads_join_the_directory_places_and_travel_times_exceed_straight_lines(db: Session) -> None:
    county = Area(code="1", name="测试县", level=AreaLevel.COUNTY, latitude=29.72, longitude=111.47)
    db.add(county)
    db.flush()
    town = Area(code="11", name="北镇", level=AreaLevel.TOWNSHIP, parent_id=county.id, latitude=29.9,
                longitude=111.45)
    db.add(town)
    db.flush()
    villages = [Area(code=f"11{i}", name=f"村{i}", level=AreaLevel.VILLAGE, parent_id=town.id,
                     latitude=29.9 + 0.02 * i, longitude=111.45 + 0.01 * i) for i in range(1, 4)]
    db.add_all(villages)
    db.add(Organisation(code="T1", name="北镇中心卫生院", level=OrgLevel.TOWNSHIP, kind=OrgKind.TOWNSHIP_CENTRE,
                        area_id=town.id, is_regional_centre=True))
    db.flush()
    made = build_demo_roads(db, seed=1)
    assert made["created"] == 1 and made["nodes"] > 40
    net = network_for(db)
    seat = (county.latitude, county.longitude)
    for v in villages:
        minutes = net.minutes_between(seat, (v.latitude, v.longitude))
        assert minutes is not None
        straight = haversine_m(*seat, v.latitude, v.longitude) / 1000 / 70 * 60
        assert minutes > straight
    # Place nodes carry their area, so a village's node can be found from the directory.
    assert {v.id for v in villages} | {town.id, county.id} <= _node_areas(db)
    again = build_demo_roads(db, seed=1)
    assert again["created"] == 0 and again["nodes"] == made["nodes"]


def _node_areas(db: Session) -> set[int]:
    from healthrelay.geo.models import RoadNode

    return {a for a in db.scalars(select(RoadNode.area_id)) if a is not None}
