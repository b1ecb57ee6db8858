"""Travel times on the county road network.

`network_for(db)` loads the road tables once into an immutable `RoadNetwork` (a CSR matrix of edge
minutes, its transpose and a KD-tree of node positions) and keeps it per database until the tables
change, so dispatch asks "how long from each ambulance to this call" with one Dijkstra run and no
SQL beyond a cheap version check.

A point off the road network (a farmhouse, a GPS fix) reaches its nearest node in a straight line at
`ACCESS_KMH`: slow on purpose, since the last stretch is a track, a footpath or a stretcher carry.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import networkx as nx
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import cKDTree
from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from healthrelay.core.errors import InvalidInput, NotFound, field_error
from healthrelay.geo.models import RoadEdge, RoadNode, RoadSpeed

ACCESS_KMH = 15.0
# The speeds migration 0010 seeds (the database's `road_speeds` rows are what the app uses).
DEFAULT_SPEEDS_KMH = {"expressway": 90.0, "national": 70.0, "provincial": 60.0, "county": 45.0, "township": 35.0,
                      "village": 25.0, "urban": 30.0}
EARTH_RADIUS_M = 6_371_008.8
# Dijkstra treats a zero weight as a missing edge in some scipy paths; keep every edge positive.
_MIN_EDGE_MINUTES = 1e-6

LatLon = tuple[float, float]


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def _access_minutes(metres: float | np.ndarray) -> Any:
    return metres / 1000.0 / ACCESS_KMH * 60.0


@dataclass(frozen=True)
class _Snap:
    index: int  # row in the network's arrays
    access: float  # minutes from the point to that node


class RoadNetwork:
    """An immutable snapshot of the road network, built for fast repeated queries.

    Points are (latitude, longitude). Times are minutes and include the off-road access at both ends;
    `None` means no road leads there (e.g. a one-way stretch the wrong way, or an island of roads).
    """

    def __init__(self, *, node_ids: np.ndarray, lat: np.ndarray, lon: np.ndarray, edge_from: np.ndarray,
                 edge_to: np.ndarray, edge_minutes: np.ndarray, edge_count: int) -> None:
        self._ids = np.asarray(node_ids, dtype=np.int64)
        self._lat = np.asarray(lat, dtype=float)
        self._lon = np.asarray(lon, dtype=float)
        for arr in (self._ids, self._lat, self._lon):
            arr.setflags(write=False)
        self._index = {int(node_id): i for i, node_id in enumerate(self._ids)}
        self._edge_count = edge_count
        n = len(self._ids)
        self._lat0 = float(np.mean(self._lat)) if n else 0.0
        # Equirectangular projection in metres: exact enough for nearest-node search within a region.
        self._kx = math.radians(1) * EARTH_RADIUS_M * math.cos(math.radians(self._lat0))
        self._ky = math.radians(1) * EARTH_RADIUS_M
        self._tree = cKDTree(np.column_stack((self._lon * self._kx, self._lat * self._ky))) if n else None
        # Parallel edges: keep the fastest (csr_matrix would add them up).
        if len(edge_from):
            order = np.lexsort((edge_minutes, edge_to, edge_from))
            f, t, w = edge_from[order], edge_to[order], edge_minutes[order]
            first = np.ones(len(f), dtype=bool)
            first[1:] = (f[1:] != f[:-1]) | (t[1:] != t[:-1])
            f, t, w = f[first], t[first], np.maximum(w[first], _MIN_EDGE_MINUTES)
        else:
            f = t = np.zeros(0, dtype=np.int64)
            w = np.zeros(0, dtype=float)
        self._forward = csr_matrix((w, (f, t)), shape=(n, n))
        self._reverse = self._forward.transpose().tocsr()

    @classmethod
    def from_records(cls, nodes: Sequence[dict[str, Any]], edges: Sequence[dict[str, Any]],
                     speeds: dict[str, float] | None = None) -> RoadNetwork:
        """A network straight from generator output (`roadgen`), without a database: for benches and studies.

        Node ids are the nodes' `key`s when they are integers, else their positions in `nodes`.
        """
        kmh = speeds or DEFAULT_SPEEDS_KMH
        keys = [n.get("key", n.get("id")) for n in nodes]
        index = {k: i for i, k in enumerate(keys)}
        f: list[int] = []
        t: list[int] = []
        w: list[float] = []
        for e in edges:
            a, b = index[e.get("from_key", e.get("from_node_id"))], index[e.get("to_key", e.get("to_node_id"))]
            minutes = float(e["length_m"]) / 1000.0 / kmh[e["road_class"]] * 60.0
            f.append(a)
            t.append(b)
            w.append(minutes)
            if not e.get("one_way", False):
                f.append(b)
                t.append(a)
                w.append(minutes)
        ids = keys if all(isinstance(k, int) for k in keys) and len(set(keys)) == len(keys) else range(len(keys))
        return cls(node_ids=np.array(list(ids), dtype=np.int64), lat=np.array([n["latitude"] for n in nodes]),
                   lon=np.array([n["longitude"] for n in nodes]), edge_from=np.array(f, dtype=np.int64),
                   edge_to=np.array(t, dtype=np.int64), edge_minutes=np.array(w, dtype=float),
                   edge_count=len(edges))

    # ------------------------------------------------------------------ basics
    @property
    def node_count(self) -> int:
        return len(self._ids)

    @property
    def edge_count(self) -> int:
        """Road segments as stored (a two-way segment counts once)."""
        return self._edge_count

    @cached_property
    def graph(self) -> nx.DiGraph:
        """The network as a networkx DiGraph (node ids; `minutes` on edges) for analysis and drawing."""
        g = nx.DiGraph()
        for i, node_id in enumerate(self._ids):
            g.add_node(int(node_id), latitude=float(self._lat[i]), longitude=float(self._lon[i]))
        coo = self._forward.tocoo()
        for a, b, w in zip(coo.row, coo.col, coo.data, strict=True):
            g.add_edge(int(self._ids[a]), int(self._ids[b]), minutes=float(w))
        return g

    def node_position(self, node_id: int) -> LatLon:
        i = self._index.get(node_id)
        if i is None:
            raise NotFound(f"道路节点不存在 / road node {node_id} not found")
        return float(self._lat[i]), float(self._lon[i])

    def _snap(self, point: LatLon) -> _Snap:
        if self._tree is None:
            raise NotFound("尚未录入道路网 / the road network is empty")
        lat, lon = _check_point(point)
        _, i = self._tree.query((lon * self._kx, lat * self._ky))
        metres = haversine_m(lat, lon, float(self._lat[i]), float(self._lon[i]))
        return _Snap(int(i), float(_access_minutes(metres)))

    def _snap_many(self, points: Sequence[LatLon]) -> tuple[np.ndarray, np.ndarray]:
        if self._tree is None:
            raise NotFound("尚未录入道路网 / the road network is empty")
        if not len(points):
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        arr = np.array([_check_point(p) for p in points], dtype=float)
        _, idx = self._tree.query(np.column_stack((arr[:, 1] * self._kx, arr[:, 0] * self._ky)))
        idx = np.asarray(idx, dtype=np.int64)
        metres = _haversine_vec(arr[:, 0], arr[:, 1], self._lat[idx], self._lon[idx])
        return idx, _access_minutes(metres)

    def nearest_node(self, lat: float, lon: float) -> tuple[int, float]:
        """The nearest road node's id and the off-road minutes to reach it."""
        snap = self._snap((lat, lon))
        return int(self._ids[snap.index]), snap.access

    # ------------------------------------------------------------------ travel times
    def minutes_between(self, a: LatLon, b: LatLon) -> float | None:
        return self.minutes_from(a, [b])[0]

    def minutes_to(self, target: LatLon, sources: Sequence[LatLon]) -> list[float | None]:
        """Minutes from each source to one target: a single Dijkstra run on the reversed graph."""
        t = self._snap(target)
        idx, access = self._snap_many(sources)
        dist = dijkstra(self._reverse, directed=True, indices=t.index)
        return _combine(dist[idx] + access + t.access)

    def minutes_from(self, source: LatLon, targets: Sequence[LatLon]) -> list[float | None]:
        """Minutes from one source to each target (e.g. a patient to candidate hospitals)."""
        s = self._snap(source)
        idx, access = self._snap_many(targets)
        dist = dijkstra(self._forward, directed=True, indices=s.index)
        return _combine(dist[idx] + access + s.access)

    def minutes_matrix(self, sources: Sequence[LatLon], targets: Sequence[LatLon]) -> np.ndarray:
        """Minutes from every source (rows) to every target (columns); `inf` where no road leads.

        One Dijkstra run per distinct source node (many sources in one call), for planning studies.
        """
        if not len(sources) or not len(targets):
            return np.zeros((len(sources), len(targets)))
        s_idx, s_acc = self._snap_many(sources)
        t_idx, t_acc = self._snap_many(targets)
        unique, inverse = np.unique(s_idx, return_inverse=True)
        dist = dijkstra(self._forward, directed=True, indices=unique)
        dist = np.atleast_2d(dist)[inverse][:, t_idx]
        return dist + s_acc[:, None] + t_acc[None, :]

    def path(self, a: LatLon, b: LatLon) -> list[LatLon]:
        """The fastest route from a to b as points to draw (both ends included); [] if unreachable."""
        sa, sb = self._snap(a), self._snap(b)
        dist, pred = dijkstra(self._forward, directed=True, indices=sa.index, return_predecessors=True)
        if not np.isfinite(dist[sb.index]):
            return []
        chain = [sb.index]
        while chain[-1] != sa.index:
            chain.append(int(pred[chain[-1]]))
        chain.reverse()
        return [(float(a[0]), float(a[1]))] + [(float(self._lat[i]), float(self._lon[i])) for i in chain] + [
            (float(b[0]), float(b[1]))]


def _haversine_vec(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2 - lon1)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.minimum(1.0, np.sqrt(a)))


def _combine(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]


def _check_point(point: Any) -> LatLon:
    try:
        lat, lon = float(point[0]), float(point[1])
    except (TypeError, ValueError, IndexError):
        raise InvalidInput("坐标应为（纬度，经度） / a point must be (latitude, longitude)",
                           field_errors=[field_error("point", "not a (latitude, longitude) pair")]) from None
    if not (math.isfinite(lat) and -90 <= lat <= 90 and math.isfinite(lon) and -180 <= lon <= 180):
        raise InvalidInput("坐标超出范围 / coordinates out of range",
                           field_errors=[field_error("point", f"({lat}, {lon}) is not a valid latitude/longitude")])
    return lat, lon


# ---------------------------------------------------------------------- loading and caching

@dataclass
class _Cached:
    quick: tuple[Any, ...]
    deep: tuple[Any, ...]
    deep_checked: float  # time.monotonic() of the last deep check
    network: RoadNetwork


_cache: dict[str, _Cached] = {}
_cache_lock = threading.Lock()
DEEP_CHECK_SECONDS = 10.0


def _quick_stamp(db: Session) -> tuple[Any, ...]:
    """Counts, the first and last rows by id (primary-key lookups, well under a millisecond) and speeds.

    Catches every insert and delete, a network deleted and loaded again with the same row counts (its
    first and last rows differ), and every speed change, which is how networks change in practice.
    """
    def ends(model: Any, *columns: Any) -> list[Any]:
        return [select(c).order_by(order).limit(1).scalar_subquery()
                for order in (model.id, model.id.desc()) for c in columns]

    # One round trip: every value is a primary-key lookup except the two counts (index-only scans).
    row = db.execute(select(
        select(func.count()).select_from(RoadNode).scalar_subquery(),
        select(func.count()).select_from(RoadEdge).scalar_subquery(),
        *ends(RoadNode, RoadNode.id, RoadNode.latitude, RoadNode.longitude),
        *ends(RoadEdge, RoadEdge.id, RoadEdge.from_node_id, RoadEdge.to_node_id, RoadEdge.length_m))).one()
    speeds = db.execute(select(RoadSpeed.road_class, RoadSpeed.kmh).order_by(RoadSpeed.road_class)).all()
    return tuple(row), tuple(tuple(r) for r in speeds)


def _deep_stamp(db: Session) -> tuple[Any, ...]:
    """Sums over every row (tens of milliseconds on 10,000+ nodes): catches edits in place."""
    nodes = db.execute(select(func.sum(RoadNode.latitude), func.sum(RoadNode.longitude))).one()
    edges = db.execute(select(RoadEdge.road_class, RoadEdge.one_way, func.count(RoadEdge.id),
                              func.sum(RoadEdge.length_m), func.sum(RoadEdge.from_node_id),
                              func.sum(RoadEdge.to_node_id))
                       .group_by(RoadEdge.road_class, RoadEdge.one_way)
                       .order_by(RoadEdge.road_class, RoadEdge.one_way)).all()
    return tuple(nodes), tuple(tuple(r) for r in edges)


def _load(db: Session) -> RoadNetwork:
    speeds = {c: k for c, k in db.execute(select(RoadSpeed.road_class, RoadSpeed.kmh))}
    nodes = db.execute(select(RoadNode.id, RoadNode.latitude, RoadNode.longitude).order_by(RoadNode.id)).all()
    ids = np.array([r[0] for r in nodes], dtype=np.int64)
    lat = np.array([r[1] for r in nodes], dtype=float)
    lon = np.array([r[2] for r in nodes], dtype=float)
    index = {int(node_id): i for i, node_id in enumerate(ids)}
    rows = db.execute(select(RoadEdge.from_node_id, RoadEdge.to_node_id, RoadEdge.road_class, RoadEdge.length_m,
                             RoadEdge.one_way)).all()
    f: list[int] = []
    t: list[int] = []
    w: list[float] = []
    for a, b, road_class, length_m, one_way in rows:
        kmh = speeds.get(road_class) or 0.0
        if kmh <= 0:
            continue  # a class set to 0 km/h is a closed road
        minutes = length_m / 1000.0 / kmh * 60.0
        ia, ib = index[a], index[b]
        f.append(ia)
        t.append(ib)
        w.append(minutes)
        if not one_way:
            f.append(ib)
            t.append(ia)
            w.append(minutes)
    return RoadNetwork(node_ids=ids, lat=lat, lon=lon, edge_from=np.array(f, dtype=np.int64),
                       edge_to=np.array(t, dtype=np.int64), edge_minutes=np.array(w, dtype=float),
                       edge_count=len(rows))


def network_for(db: Session, *, deep_check_seconds: float = DEEP_CHECK_SECONDS) -> RoadNetwork:
    """The road network of this database, rebuilt only when the road tables changed.

    Every call compares counts, the first and last rows and the speeds (one cheap query, so dispatch
    can call it per request); a row edited in place in the middle of the tables is noticed by a full
    fingerprint taken at most every `deep_check_seconds`.
    """
    key = db.get_bind().url.render_as_string(hide_password=True)
    quick = _quick_stamp(db)
    cached = _cache.get(key)
    now = time.monotonic()
    if cached is not None and cached.quick == quick:
        if now - cached.deep_checked < deep_check_seconds:
            return cached.network
        deep = _deep_stamp(db)
        if deep == cached.deep:
            cached.deep_checked = now
            return cached.network
    with _cache_lock:
        deep = _deep_stamp(db)
        cached = _cache.get(key)
        if cached is not None and cached.quick == quick and cached.deep == deep:
            cached.deep_checked = now
            return cached.network
        network = _load(db)
        _cache[key] = _Cached(quick=quick, deep=deep, deep_checked=now, network=network)
        return network


def forget_cached_networks() -> None:
    """Drop every cached network (tests switching databases, or after a bulk import)."""
    with _cache_lock:
        _cache.clear()


# ---------------------------------------------------------------------- writing

def save_network(db: Session, *, nodes: list[dict[str, Any]], edges: list[dict[str, Any]]) -> None:
    """Add nodes and edges in bulk; everything is checked first, so bad input writes nothing.

    Node dicts: `latitude`, `longitude`, optional `area_id` and `label`, and either `key` (any hashable,
    local to this call) or `id` (stored as the node's database id, so a county's own numbering survives).
    Edge dicts: `road_class` (a row of `road_speeds`), the ends as `from_key`/`to_key` (keys of this
    batch) or `from_node_id`/`to_node_id` (ids given in this batch or already stored), optional
    `length_m` (default: the straight line between the ends) and `one_way`.
    """
    known_classes = set(db.scalars(select(RoadSpeed.road_class)))
    errors: list[dict[str, Any]] = []
    node_rows: list[dict[str, Any]] = []
    keys: dict[Any, int] = {}  # batch key -> index in node_rows
    given_ids: dict[int, int] = {}  # explicit id -> index in node_rows
    for n, node in enumerate(nodes):
        explicit = node.get("id")
        key = node.get("key", explicit)
        if key is None or key in keys:
            errors.append(field_error(f"nodes[{n}].key", "missing" if key is None else f"duplicate key {key!r}"))
            continue
        if explicit is not None and (not isinstance(explicit, int) or explicit <= 0 or explicit in given_ids):
            errors.append(field_error(f"nodes[{n}].id", f"{explicit!r} is not a new positive integer id"))
            continue
        try:
            lat, lon = _check_point((node.get("latitude"), node.get("longitude")))
        except InvalidInput:
            errors.append(field_error(f"nodes[{n}]", "latitude/longitude missing or out of range"))
            continue
        keys[key] = len(node_rows)
        if explicit is not None:
            given_ids[explicit] = len(node_rows)
        node_rows.append({"latitude": lat, "longitude": lon, "area_id": node.get("area_id"),
                          "label": str(node.get("label") or "")[:100], **({"id": explicit} if explicit else {})})
    if given_ids:
        taken = set(db.scalars(select(RoadNode.id).where(RoadNode.id.in_(list(given_ids)))))
        errors.extend(field_error(f"nodes[{i}].id", f"node id {node_id} already exists")
                      for node_id, i in given_ids.items() if node_id in taken)
    # Edge ends: ("batch", index) or ("stored", id); stored ends are looked up once, together.
    wanted_stored = {edge.get(f) for edge in edges for f in ("from_node_id", "to_node_id")} - set(given_ids) - {None}
    stored = {r.id: (r.latitude, r.longitude) for r in db.execute(
        select(RoadNode.id, RoadNode.latitude, RoadNode.longitude).where(
            RoadNode.id.in_([i for i in wanted_stored if isinstance(i, int)])))} if wanted_stored else {}

    def end(edge: dict[str, Any], side: str) -> tuple[str, int] | None:
        if f"{side}_key" in edge:
            i = keys.get(edge[f"{side}_key"])
            return None if i is None else ("batch", i)
        node_id = edge.get(f"{side}_node_id")
        if node_id in given_ids:
            return "batch", given_ids[node_id]
        return ("stored", node_id) if node_id in stored else None

    def position(ref: tuple[str, int]) -> tuple[float, float]:
        if ref[0] == "batch":
            return node_rows[ref[1]]["latitude"], node_rows[ref[1]]["longitude"]
        return stored[ref[1]]

    edge_rows: list[tuple[tuple[str, int], tuple[str, int], str, float, bool]] = []
    for e, edge in enumerate(edges):
        a, b = end(edge, "from"), end(edge, "to")
        road_class = edge.get("road_class")
        if a is None or b is None:
            errors.append(field_error(f"edges[{e}]", "an end is neither a node of this batch nor a stored node"))
            continue
        if a == b:
            errors.append(field_error(f"edges[{e}]", "an edge must join two different nodes"))
            continue
        if road_class not in known_classes:
            errors.append(field_error(f"edges[{e}].road_class", f"unknown road class {road_class!r}"))
            continue
        length = edge.get("length_m")
        if length is None:
            length = haversine_m(*position(a), *position(b))
        try:
            length = float(length)
        except (TypeError, ValueError):
            length = float("nan")
        if not (math.isfinite(length) and length > 0):
            errors.append(field_error(f"edges[{e}].length_m", "must be a positive number of metres"))
            continue
        edge_rows.append((a, b, road_class, length, bool(edge.get("one_way", False))))
    if errors:
        raise InvalidInput(f"道路数据有 {len(errors)} 处错误 / {len(errors)} problem(s) in the road data",
                           field_errors=errors[:50])
    ids: list[int] = [0] * len(node_rows)
    with_id = [r for r in node_rows if "id" in r]
    if with_id:
        db.execute(insert(RoadNode), with_id)
        for i, r in enumerate(node_rows):
            if "id" in r:
                ids[i] = r["id"]
        if db.get_bind().dialect.name == "postgresql":
            # Explicit ids leave the sequence behind; move it past them so later inserts do not clash.
            db.execute(text("SELECT setval(pg_get_serial_sequence('road_nodes', 'id'), "
                            "(SELECT max(id) FROM road_nodes))"))
    auto = [i for i, r in enumerate(node_rows) if "id" not in r]
    if auto:
        new_ids = db.scalars(insert(RoadNode).returning(RoadNode.id, sort_by_parameter_order=True),
                             [node_rows[i] for i in auto]).all()
        for i, node_id in zip(auto, new_ids, strict=True):
            ids[i] = node_id

    def db_id(ref: tuple[str, int]) -> int:
        return ids[ref[1]] if ref[0] == "batch" else ref[1]

    if edge_rows:
        db.execute(insert(RoadEdge), [
            {"from_node_id": db_id(a), "to_node_id": db_id(b), "road_class": c, "length_m": length, "one_way": ow}
            for a, b, c, length, ow in edge_rows])
    db.flush()
