"""geo: the road network (nodes, edges, speeds by road class)

Seeds planning speeds for an ambulance by road class. They are below the legal limits on purpose:
an ambulance with lights keeps to the speed the road lets a stretcher patient be carried at, and a
hill county's roads wind, so averages sit well under the posted limits. A county tunes the rows.

Revision ID: 0010
Revises: 0009
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SPEEDS = [
    ("expressway", 90.0, "高速公路：救护车规划速度，低于限速，含进出匝道 / expressway: below the limit, ramps included"),
    ("national", 70.0, "国道：双车道干线，过境车辆多 / national road: two-lane trunk road with through traffic"),
    ("provincial", 60.0, "省道：弯道和集镇路段较多 / provincial road: more bends and market-town stretches"),
    ("county", 45.0, "县道：山区窄路，会车减速 / county road: narrow hill road, slowing to pass"),
    ("township", 35.0, "乡道：路面窄，坡陡弯急 / township road: narrow, steep and winding"),
    ("village", 25.0, "村道：单车道水泥路，常有行人和农机 / village road: single-lane, people and farm vehicles"),
    ("urban", 30.0, "城区道路：红绿灯和拥堵 / urban street: traffic lights and congestion"),
]


def upgrade() -> None:
    op.create_table(
        "road_speeds",
        sa.Column("road_class", sa.String(length=20), nullable=False),
        sa.Column("kmh", sa.Float(), nullable=False),
        sa.Column("description", sa.String(length=300), nullable=False),
        sa.PrimaryKeyConstraint("road_class", name=op.f("pk_road_speeds")),
    )
    speeds = sa.table("road_speeds", sa.column("road_class", sa.String), sa.column("kmh", sa.Float),
                      sa.column("description", sa.String))
    op.bulk_insert(speeds, [{"road_class": c, "kmh": k, "description": d} for c, k, d in SPEEDS])
    op.create_table(
        "road_nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("latitude", sa.Float(), nullable=False),
        sa.Column("longitude", sa.Float(), nullable=False),
        sa.Column("area_id", sa.Integer(), nullable=True),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(["area_id"], ["areas.id"], name=op.f("fk_road_nodes_area_id_areas"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_road_nodes")),
    )
    op.create_index(op.f("ix_road_nodes_area_id"), "road_nodes", ["area_id"], unique=False)
    op.create_table(
        "road_edges",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("from_node_id", sa.Integer(), nullable=False),
        sa.Column("to_node_id", sa.Integer(), nullable=False),
        sa.Column("road_class", sa.String(length=20), nullable=False),
        sa.Column("length_m", sa.Float(), nullable=False),
        sa.Column("one_way", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["from_node_id"], ["road_nodes.id"],
                                name=op.f("fk_road_edges_from_node_id_road_nodes"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["to_node_id"], ["road_nodes.id"],
                                name=op.f("fk_road_edges_to_node_id_road_nodes"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["road_class"], ["road_speeds.road_class"],
                                name=op.f("fk_road_edges_road_class_road_speeds")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_road_edges")),
    )
    op.create_index(op.f("ix_road_edges_from_node_id"), "road_edges", ["from_node_id"], unique=False)
    op.create_index(op.f("ix_road_edges_to_node_id"), "road_edges", ["to_node_id"], unique=False)
    op.create_index(op.f("ix_road_edges_road_class"), "road_edges", ["road_class"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_road_edges_road_class"), table_name="road_edges")
    op.drop_index(op.f("ix_road_edges_to_node_id"), table_name="road_edges")
    op.drop_index(op.f("ix_road_edges_from_node_id"), table_name="road_edges")
    op.drop_table("road_edges")
    op.drop_index(op.f("ix_road_nodes_area_id"), table_name="road_nodes")
    op.drop_table("road_nodes")
    op.drop_table("road_speeds")
