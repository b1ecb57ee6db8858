"""Road network tables: data a county can replace with its own roads (from a survey or OpenStreetMap).

Nodes are points (junctions, bends, places), edges are road segments with a class; the speed of each
class is a tunable row in `road_speeds`, so a county that finds its ambulances slower on mountain
roads changes one number and every travel time follows.
"""

from __future__ import annotations

from sqlalchemy import Float, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from healthrelay.core.db import Base


class RoadSpeed(Base):
    """Planning speed of an ambulance on one road class (km/h), seeded by migration 0010."""

    __tablename__ = "road_speeds"

    road_class: Mapped[str] = mapped_column(String(20), primary_key=True)
    kmh: Mapped[float] = mapped_column(Float)
    description: Mapped[str] = mapped_column(String(300), default="")


class RoadNode(Base):
    __tablename__ = "road_nodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    latitude: Mapped[float] = mapped_column(Float)
    longitude: Mapped[float] = mapped_column(Float)
    # The place a node stands for (a village's centre, a town); bends and junctions have none.
    area_id: Mapped[int | None] = mapped_column(ForeignKey("areas.id", ondelete="SET NULL"), index=True)
    label: Mapped[str] = mapped_column(String(100), default="")


class RoadEdge(Base):
    """A road segment; two-way unless `one_way` (then only from → to)."""

    __tablename__ = "road_edges"

    id: Mapped[int] = mapped_column(primary_key=True)
    from_node_id: Mapped[int] = mapped_column(ForeignKey("road_nodes.id", ondelete="CASCADE"), index=True)
    to_node_id: Mapped[int] = mapped_column(ForeignKey("road_nodes.id", ondelete="CASCADE"), index=True)
    road_class: Mapped[str] = mapped_column(ForeignKey("road_speeds.road_class"), index=True)
    length_m: Mapped[float] = mapped_column(Float)
    one_way: Mapped[bool] = mapped_column(default=False)
