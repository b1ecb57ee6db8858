"""A tiny road network whose fastest times are known by hand.

    A ──national 7 km (6 min)── B ──village 2.5 km (6 min)── C ──urban one-way 1 km (2 min)──▶ F
    └──────────────county 12 km (16 min)──────────────────────┘
    D ──village 1 km (2.4 min)── E          (an island: no road joins it to the rest)
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sqlalchemy.orm import Session

from healthrelay.geo.service import save_network

A, B, C, F = (30.0, 110.0), (30.0, 110.07), (30.0, 110.1), (30.0, 110.11)
D, E = (30.3, 110.3), (30.3, 110.31)
POINTS = {"A": A, "B": B, "C": C, "D": D, "E": E, "F": F}
EDGES = [("A", "B", "national", 7000.0, False), ("B", "C", "village", 2500.0, False),
         ("A", "C", "county", 12000.0, False), ("C", "F", "urban", 1000.0, True),
         ("D", "E", "village", 1000.0, False)]


@dataclass
class Tiny:
    points: dict[str, tuple[float, float]]


def tiny_nodes() -> list[dict[str, object]]:
    return [{"key": k, "latitude": lat, "longitude": lon, "label": k} for k, (lat, lon) in POINTS.items()]


def tiny_edges() -> list[dict[str, object]]:
    return [{"from_key": a, "to_key": b, "road_class": c, "length_m": m, "one_way": ow} for a, b, c, m, ow in EDGES]


@pytest.fixture
def tiny(db: Session) -> Tiny:
    save_network(db, nodes=tiny_nodes(), edges=tiny_edges())
    db.commit()
    return Tiny(points=POINTS)
