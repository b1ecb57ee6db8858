"""Plausible synthetic road networks (pure functions, no database), for the demo county and benches.

The output is what `geo.service.save_network` takes: node dicts (`key`, `latitude`, `longitude`,
`area_id`, `label`) and edge dicts (`from_key`, `to_key`, `road_class`, `length_m`, `one_way`).
Roads bend: long roads get an intermediate node every 300-500 m, pushed sideways by a smooth random
offset, and each segment's length carries a small winding factor (hill roads twist between the
sampled points), so travel times are longer than straight lines, as in a real hill county.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from healthrelay.geo.service import haversine_m

Node = dict[str, Any]
Edge = dict[str, Any]
_M_PER_DEG_LAT = 111_195.0

# Extra length a road has over its sampled polyline (switchbacks between sample points), per class.
_TOWN_ROAD_MAX_M = 15_000.0  # beyond this a village is served through its neighbours, not a road of its own
_WINDING = {"expressway": 1.02, "national": 1.05, "provincial": 1.08, "county": 1.12, "township": 1.15,
            "village": 1.15, "urban": 1.0}


@dataclass(frozen=True)
class Place:
    """A place a road must reach: the county seat, a town (township seat) or a village."""

    key: str
    lat: float
    lon: float
    kind: Literal["seat", "town", "village"]
    area_id: int | None = None
    # Regional centres get national roads; others provincial ones.
    major: bool = False


class _Builder:
    def __init__(self, rng: random.Random, lat0: float) -> None:
        self.rng = rng
        self.nodes: list[Node] = []
        self.edges: list[Edge] = []
        self.kx = _M_PER_DEG_LAT * math.cos(math.radians(lat0))  # metres per degree of longitude
        self._pair: set[tuple[int, int]] = set()

    def node(self, lat: float, lon: float, *, area_id: int | None = None, label: str = "") -> int:
        key = len(self.nodes)
        self.nodes.append({"key": key, "latitude": round(lat, 6), "longitude": round(lon, 6),
                           "area_id": area_id, "label": label})
        return key

    def pos(self, key: int) -> tuple[float, float]:
        n = self.nodes[key]
        return n["latitude"], n["longitude"]

    def edge(self, a: int, b: int, road_class: str, *, one_way: bool = False) -> None:
        if a == b or (min(a, b), max(a, b)) in self._pair:
            return
        self._pair.add((min(a, b), max(a, b)))
        (la, lo), (lb, lob) = self.pos(a), self.pos(b)
        length = max(1.0, haversine_m(la, lo, lb, lob) * _WINDING[road_class])
        self.edges.append({"from_key": a, "to_key": b, "road_class": road_class, "length_m": round(length, 1),
                           "one_way": one_way})

    def road(self, a: int, b: int, road_class: str, *, wiggle: float = 0.08) -> list[int]:
        """A bending road from node a to node b; returns its nodes in order."""
        (la, lo), (lb, lob) = self.pos(a), self.pos(b)
        dx, dy = (lob - lo) * self.kx, (lb - la) * _M_PER_DEG_LAT
        dist = math.hypot(dx, dy)
        if dist < 1:
            return [a, b]
        steps = max(1, round(dist / self.rng.uniform(300, 500)))
        # Sideways offset: a sum of two sine bumps with random amplitude, zero at both ends.
        amp1 = self.rng.uniform(-wiggle, wiggle) * dist
        amp2 = self.rng.uniform(-wiggle, wiggle) * dist / 3
        nx_, ny_ = -dy / dist, dx / dist
        chain = [a]
        for s in range(1, steps):
            f = s / steps
            off = amp1 * math.sin(math.pi * f) + amp2 * math.sin(3 * math.pi * f)
            x, y = dx * f + nx_ * off, dy * f + ny_ * off
            chain.append(self.node(la + y / _M_PER_DEG_LAT, lo + x / self.kx))
        chain.append(b)
        for u, v in zip(chain, chain[1:], strict=False):
            self.edge(u, v, road_class)
        return chain

    def distance(self, a: tuple[float, float], b: tuple[float, float]) -> float:
        return math.hypot((a[1] - b[1]) * self.kx, (a[0] - b[0]) * _M_PER_DEG_LAT)


def county_roads(places: Sequence[Place], *, seed: int, urban_radius_m: float = 3500.0,
                 block_m: float = 500.0) -> tuple[list[Node], list[Edge]]:
    """A county's roads: the seat's street grid, trunk roads to the towns, county roads between
    neighbouring towns, and a village road from each village to the nearest town or reached village.

    Every place ends on a node carrying its `area_id` and `key` as label; all places are connected.
    Places inside the seat's grid (urban communities) join the nearest street instead.
    """
    if not places:
        return [], []
    rng = random.Random(seed)
    seats = [p for p in places if p.kind == "seat"]
    lat0 = sum(p.lat for p in places) / len(places)
    b = _Builder(rng, lat0)
    place_node: dict[str, int] = {}
    hubs: list[int] = []  # nodes trunk roads start from (grid edge nodes of each seat)
    grid_nodes: list[int] = []
    towns = [p for p in places if p.kind == "town"]
    villages = [p for p in places if p.kind == "village"]

    for seat in seats:
        half = int(urban_radius_m // block_m)
        grid: dict[tuple[int, int], int] = {}
        for i in range(-half, half + 1):
            for j in range(-half, half + 1):
                if math.hypot(i, j) * block_m > urban_radius_m + 1:
                    continue
                jitter = block_m * 0.12
                x = i * block_m + rng.uniform(-jitter, jitter)
                y = j * block_m + rng.uniform(-jitter, jitter)
                grid[(i, j)] = b.node(seat.lat + y / _M_PER_DEG_LAT, seat.lon + x / b.kx)
        for (i, j), key in grid.items():
            for di, dj in ((1, 0), (0, 1)):
                other = grid.get((i + di, j + dj))
                if other is not None:
                    b.edge(key, other, "urban")
        centre = grid[(0, 0)]
        b.nodes[centre]["area_id"], b.nodes[centre]["label"] = seat.area_id, seat.key
        place_node[seat.key] = centre
        ring = [k for (i, j), k in grid.items() if any((i + di, j + dj) not in grid
                                                       for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)))]
        hubs.extend(ring)
        grid_nodes.extend(grid.values())

    def in_city(p: Place) -> bool:
        return any(b.distance((p.lat, p.lon), (s.lat, s.lon)) <= urban_radius_m for s in seats)

    def nearest(pos: tuple[float, float], candidates: Sequence[int]) -> int:
        return min(candidates, key=lambda k: b.distance(pos, b.pos(k)))

    # Towns: a node each; in the city, a street spur; outside, a trunk road from the nearest grid edge.
    for t in towns:
        key = b.node(t.lat, t.lon, area_id=t.area_id, label=t.key)
        place_node[t.key] = key
        if in_city(t) and grid_nodes:
            b.edge(key, nearest((t.lat, t.lon), grid_nodes), "urban")
        elif hubs:
            b.road(nearest((t.lat, t.lon), hubs), key, "national" if t.major else "provincial", wiggle=0.06)
    # County roads: each rural town to its two nearest rural towns (a mesh, so one blocked road is not fatal).
    rural = [t for t in towns if not (in_city(t) and grid_nodes)]
    done: set[tuple[str, str]] = set()
    for t in rural:
        others = sorted((o for o in rural if o.key != t.key), key=lambda o: b.distance((t.lat, t.lon), (o.lat, o.lon)))
        for o in others[:2]:
            pair = (min(t.key, o.key), max(t.key, o.key))
            if pair in done:
                continue
            done.add(pair)
            b.road(place_node[t.key], place_node[o.key], "county", wiggle=0.1)
    if not seats and not towns and villages:
        # No hub at all: the first village is where the roads start.
        first = villages[0]
        place_node[first.key] = b.node(first.lat, first.lon, area_id=first.area_id, label=first.key)
    # Villages, nearest first (Prim's order): each joins the nearest already-reached town or village.
    reached = [place_node[p.key] for p in (*seats, *towns, *villages) if p.key in place_node]
    town_nodes = [place_node[t.key] for t in towns if t.key in place_node] + hubs
    hanging: list[tuple[Place, int]] = []
    pending = [v for v in villages if v.key not in place_node]
    if pending and reached:
        px = np.array([v.lon * b.kx for v in pending])
        py = np.array([v.lat * _M_PER_DEG_LAT for v in pending])

        def dist_to(node: int) -> np.ndarray:
            lat, lon = b.pos(node)
            return np.hypot(px - lon * b.kx, py - lat * _M_PER_DEG_LAT)

        best = np.full(len(pending), np.inf)
        best_node = np.zeros(len(pending), dtype=np.int64)
        for node in reached:
            d = dist_to(node)
            closer = d < best
            best[closer], best_node[closer] = d[closer], node
        done = np.zeros(len(pending), dtype=bool)
        for _ in range(len(pending)):
            i = int(np.argmin(np.where(done, np.inf, best)))
            done[i] = True
            v, k = pending[i], int(best_node[i])
            key = b.node(v.lat, v.lon, area_id=v.area_id, label=v.key)
            place_node[v.key] = key
            if in_city(v) and grid_nodes:
                b.edge(key, nearest((v.lat, v.lon), grid_nodes), "urban")
            else:
                b.road(k, key, "village" if best[i] < 2500 else "township", wiggle=0.12)
            d = dist_to(key)
            closer = d < best
            best[closer], best_node[closer] = d[closer], key
            if not in_city(v) and k not in town_nodes:
                hanging.append((v, key))
    # A village hanging off another village also has its own road to the nearest town: chains of village
    # lanes alone would make a village 6 km from its town an hour's drive away, which no county has.
    for v, key in hanging:
        town = nearest((v.lat, v.lon), town_nodes)
        if b.distance((v.lat, v.lon), b.pos(town)) <= _TOWN_ROAD_MAX_M:
            b.road(town, key, "township", wiggle=0.1)
    return b.nodes, b.edges


def synthetic_region(*, n_nodes: int, seed: int, lat0: float = 29.0, lon0: float = 111.0,
                     spacing_m: float = 450.0) -> tuple[list[Node], list[Edge]]:
    """A connected region of exactly `n_nodes` nodes (a jittered lattice) for benches.

    Every 12th row and column is a provincial road, every 36th a national road, a few stretches are
    one-way pairs; the rest are county, township and village roads, some removed at random (a
    spanning tree of the lattice is always kept, so every node is reachable).
    """
    if n_nodes < 2:
        raise ValueError("n_nodes must be at least 2")
    rng = random.Random(seed)
    side = math.ceil(math.sqrt(n_nodes))
    b = _Builder(rng, lat0)
    grid: dict[tuple[int, int], int] = {}
    for r in range(side):
        for c in range(side):
            if len(grid) == n_nodes:
                break
            jitter = spacing_m * 0.25
            y = r * spacing_m + rng.uniform(-jitter, jitter)
            x = c * spacing_m + rng.uniform(-jitter, jitter)
            grid[(r, c)] = b.node(lat0 + y / _M_PER_DEG_LAT, lon0 + x / b.kx)

    def road_class(r: int, c: int, horizontal: bool) -> str:
        line = r if horizontal else c
        if line % 36 == 0:
            return "national"
        if line % 12 == 0:
            return "provincial"
        return rng.choice(("county", "township", "village", "village"))

    # Spanning tree first (row 0 across, then each column down), then the other lattice edges at random.
    tree: set[tuple[int, int]] = set()
    for (r, c), key in grid.items():
        if r == 0 and c > 0:
            tree.add((grid[(0, c - 1)], key))
        elif r > 0:
            tree.add((grid[(r - 1, c)], key))
    for (r, c), key in grid.items():
        for dr, dc in ((0, 1), (1, 0)):
            other = grid.get((r + dr, c + dc))
            if other is None:
                continue
            horizontal = dr == 0
            cls = road_class(r, c, horizontal)
            keep = (key, other) in tree or cls in ("national", "provincial") or rng.random() < 0.7
            if keep:
                b.edge(key, other, cls, one_way=cls == "county" and rng.random() < 0.01 and (key, other) not in tree)
    return b.nodes, b.edges
