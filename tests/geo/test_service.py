"""Travel times on a constructed network with known answers; snapping; unreachable places; the cache
following edits; bad road data refused whole."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from healthrelay.core.errors import InvalidInput, NotFound
from healthrelay.geo.models import RoadEdge, RoadNode, RoadSpeed
from healthrelay.geo.service import network_for, save_network
from tests.geo.conftest import A, B, C, D, E, F, Tiny

KM_NORTH = 1000 / 111_195  # degrees of latitude in one kilometre


def test_fastest_times_take_the_quicker_roads(db: Session, tiny: Tiny) -> None:
    net = network_for(db)
    assert (net.node_count, net.edge_count) == (6, 5)
    # A→C: national + village (6 + 6) beats the direct county road (16).
    assert net.minutes_between(A, C) == pytest.approx(12.0)
    assert net.minutes_between(C, A) == pytest.approx(12.0)
    assert net.minutes_between(A, B) == pytest.approx(6.0)
    assert net.minutes_between(A, F) == pytest.approx(14.0)
    to_c = net.minutes_to(C, [A, B, C, F, D])
    assert to_c[:3] == pytest.approx([12.0, 6.0, 0.0])
    assert to_c[3] is None and to_c[4] is None  # F has no road out; D is on an island
    assert net.minutes_from(A, [C, F, E]) == [pytest.approx(12.0), pytest.approx(14.0), None]
    # The same network as a networkx graph, for analysis: the one-way street has one direction only.
    import networkx as nx

    g = net.graph
    ids = {lbl: nid for lbl, nid in ((n.label, n.id) for n in db.scalars(select(RoadNode)))}
    assert g.number_of_nodes() == 6 and g.number_of_edges() == 9
    assert nx.shortest_path_length(g, ids["A"], ids["C"], weight="minutes") == pytest.approx(12.0)
    assert not g.has_edge(ids["F"], ids["C"])


def test_the_route_to_draw_passes_through_the_fast_roads(db: Session, tiny: Tiny) -> None:
    route = network_for(db).path(A, C)
    assert route[0] == A and route[-1] == C
    assert B in route
    assert network_for(db).path(A, D) == []


def test_a_point_off_the_road_snaps_to_the_nearest_node_with_walking_time(db: Session, tiny: Tiny) -> None:
    net = network_for(db)
    node_id, minutes = net.nearest_node(A[0] + KM_NORTH, A[1])
    assert net.node_position(node_id) == A
    assert minutes == pytest.approx(4.0, rel=0.01)  # 1 km at 15 km/h
    # The access time counts at both ends of a trip.
    assert net.minutes_between((A[0] + KM_NORTH, A[1]), (C[0] - KM_NORTH, C[1])) == pytest.approx(20.0, rel=0.01)


def test_one_way_roads_and_islands_are_unreachable(db: Session, tiny: Tiny) -> None:
    net = network_for(db)
    assert net.minutes_between(C, F) == pytest.approx(2.0)
    assert net.minutes_between(F, C) is None
    assert net.minutes_between(A, D) is None
    assert net.minutes_between(D, E) == pytest.approx(2.4)


def test_the_cached_network_follows_every_kind_of_edit(db: Session, tiny: Tiny) -> None:
    first = network_for(db)
    assert network_for(db) is first  # unchanged tables: the same snapshot, no rebuild
    # A county makes its village roads faster: 2.5 km at 50 km/h = 3 min, so A→C = 9.
    db.execute(update(RoadSpeed).where(RoadSpeed.road_class == "village").values(kmh=50))
    assert network_for(db).minutes_between(A, C) == pytest.approx(9.0)
    # A new road joins the island.
    ids = {n.label: n.id for n in db.scalars(select(RoadNode))}
    db.add(RoadEdge(from_node_id=ids["C"], to_node_id=ids["D"], road_class="national", length_m=35000))
    db.flush()
    assert network_for(db).minutes_between(A, D) == pytest.approx(9.0 + 30.0)
    # A road closed (deleted).
    db.execute(delete(RoadEdge).where(RoadEdge.from_node_id == ids["C"], RoadEdge.to_node_id == ids["D"]))
    assert network_for(db).minutes_between(A, D) is None


def test_a_network_reloaded_with_the_same_size_is_noticed_at_once(db: Session, tiny: Tiny) -> None:
    from tests.geo.conftest import tiny_edges, tiny_nodes

    assert network_for(db).minutes_between(A, B) == pytest.approx(6.0)
    db.execute(delete(RoadEdge))
    db.execute(delete(RoadNode))
    edges = tiny_edges()
    edges[0]["length_m"] = 14000  # the corrected survey: same nodes and edges, one length changed
    save_network(db, nodes=tiny_nodes(), edges=edges)
    assert network_for(db).minutes_between(A, B) == pytest.approx(12.0)


def test_edits_in_place_are_noticed_by_the_periodic_deep_check(db: Session, tiny: Tiny) -> None:
    network_for(db)
    # A survey corrects the national road's length: no row added or removed.
    db.execute(update(RoadEdge).where(RoadEdge.road_class == "national").values(length_m=14000))
    assert network_for(db, deep_check_seconds=0).minutes_between(A, B) == pytest.approx(12.0)  # 14 km at 70
    # A node moved (the village's point was misplaced by a kilometre).
    ids = {n.label: n.id for n in db.scalars(select(RoadNode))}
    db.execute(update(RoadNode).where(RoadNode.id == ids["A"]).values(latitude=A[0] + KM_NORTH))
    assert network_for(db, deep_check_seconds=0).nearest_node(*A)[1] == pytest.approx(4.0, rel=0.01)


def test_parallel_roads_use_the_faster_one(db: Session) -> None:
    save_network(db, nodes=[{"key": 1, "latitude": 30.0, "longitude": 110.0},
                            {"key": 2, "latitude": 30.0, "longitude": 110.1}],
                 edges=[{"from_key": 1, "to_key": 2, "road_class": "village", "length_m": 10000},
                        {"from_key": 1, "to_key": 2, "road_class": "expressway", "length_m": 15000},
                        {"from_key": 2, "to_key": 1, "road_class": "county", "length_m": 9000}])
    net = network_for(db)
    assert net.minutes_between((30.0, 110.0), (30.0, 110.1)) == pytest.approx(10.0)  # 15 km at 90 km/h
    assert net.minutes_between((30.0, 110.1), (30.0, 110.0)) == pytest.approx(10.0)
    # Length defaults to the straight line between the ends.
    save_network(db, nodes=[{"key": "x", "latitude": 31.0, "longitude": 110.0},
                            {"key": "y", "latitude": 31.0 + 3 * KM_NORTH, "longitude": 110.0}],
                 edges=[{"from_key": "x", "to_key": "y", "road_class": "national"}])
    assert network_for(db).minutes_between((31.0, 110.0), (31.0 + 3 * KM_NORTH, 110.0)) == \
        pytest.approx(3 / 70 * 60, rel=0.01)


@pytest.mark.parametrize(("nodes", "edges", "field"), [
    ([{"key": 1, "latitude": 30, "longitude": 110}, {"key": 2, "latitude": 95, "longitude": 110}], [], "nodes[1]"),
    ([{"key": 1, "latitude": 30, "longitude": 110}, {"key": 1, "latitude": 31, "longitude": 110}], [], "nodes[1].key"),
    ([{"key": 1, "latitude": 30, "longitude": 110}, {"key": 2, "latitude": 31, "longitude": 110}],
     [{"from_key": 1, "to_key": 2, "road_class": "horse_track"}], "edges[0].road_class"),
    ([{"key": 1, "latitude": 30, "longitude": 110}, {"key": 2, "latitude": 31, "longitude": 110}],
     [{"from_key": 1, "to_key": 3, "road_class": "county"}], "edges[0]"),
    ([{"key": 1, "latitude": 30, "longitude": 110}, {"key": 2, "latitude": 31, "longitude": 110}],
     [{"from_key": 1, "to_key": 2, "road_class": "county", "length_m": -5}], "edges[0].length_m"),
    ([{"key": 1, "latitude": 30, "longitude": 110}, {"key": 2, "latitude": 31, "longitude": 110}],
     [{"from_key": 1, "to_key": 2, "road_class": "county", "length_m": "far"}], "edges[0].length_m"),
    ([{"key": 1, "latitude": 30, "longitude": 110}], [{"from_key": 1, "to_key": 1, "road_class": "county"}],
     "edges[0]"),
])
def test_bad_road_data_is_refused_whole(db: Session, nodes: list, edges: list, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        save_network(db, nodes=nodes, edges=edges)
    assert field in [e["field"] for e in err.value.field_errors]
    assert db.scalar(select(func.count(RoadNode.id))) == 0
    assert db.scalar(select(func.count(RoadEdge.id))) == 0


def test_an_empty_network_says_so(db: Session) -> None:
    net = network_for(db)
    assert net.node_count == 0
    with pytest.raises(NotFound):
        net.nearest_node(30.0, 110.0)
    with pytest.raises(NotFound):
        net.minutes_to((30.0, 110.0), [(30.1, 110.0)])


def test_bad_points_are_refused(db: Session, tiny: Tiny) -> None:
    net = network_for(db)
    with pytest.raises(InvalidInput):
        net.minutes_between((91.0, 110.0), C)
    with pytest.raises(InvalidInput):
        net.minutes_to(C, [(float("nan"), 110.0)])


def test_a_county_keeps_its_own_node_ids_and_adds_roads_to_stored_nodes(db: Session) -> None:
    save_network(db, nodes=[{"id": 101, "latitude": 30.0, "longitude": 110.0, "label": "镇"},
                            {"id": 102, "latitude": 30.0, "longitude": 110.05}],
                 edges=[{"from_node_id": 101, "to_node_id": 102, "road_class": "county", "length_m": 4500}])
    assert db.get(RoadNode, 101).label == "镇"
    # Later: a new village joined to stored node 102 (new nodes get fresh ids past the county's own).
    save_network(db, nodes=[{"key": "v", "latitude": 30.0, "longitude": 110.06}],
                 edges=[{"from_node_id": 102, "to_key": "v", "road_class": "village", "length_m": 1250}])
    assert max(db.scalars(select(RoadNode.id))) > 102
    assert network_for(db).minutes_between((30.0, 110.0), (30.0, 110.06)) == pytest.approx(6.0 + 3.0)
    with pytest.raises(InvalidInput) as err:
        save_network(db, nodes=[{"id": 102, "latitude": 30.1, "longitude": 110.0}], edges=[])
    assert err.value.field_errors[0]["field"] == "nodes[0].id"
    with pytest.raises(InvalidInput):
        save_network(db, nodes=[], edges=[{"from_node_id": 101, "to_node_id": 999, "road_class": "county"}])
    assert db.scalar(select(func.count(RoadEdge.id))) == 2


def test_a_network_straight_from_generator_records_gives_the_same_times() -> None:
    from healthrelay.geo.service import RoadNetwork
    from tests.geo.conftest import tiny_edges, tiny_nodes

    net = RoadNetwork.from_records(tiny_nodes(), tiny_edges())
    assert (net.node_count, net.edge_count) == (6, 5)
    assert net.minutes_between(A, C) == pytest.approx(12.0) and net.minutes_between(F, C) is None
