"""emergency: 120 calls, ambulances and their state log, dispatch

Seeds the national pre-hospital response targets (answered within 10 s and departed within 3 min, each
≥ 95 %; on scene within 10 min in town and 30 min in the countryside: "1030") and the dispatch rules'
tunable numbers; a county changes them by updating the rows.

Revision ID: 0011
Revises: 0010
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import healthrelay.core.db

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OPEN = "state NOT IN ('closed', 'cancelled')"


def _dt() -> healthrelay.core.db.UTCDateTime:
    return healthrelay.core.db.UTCDateTime()


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, length=32)


_AMB_STATES = ("available", "dispatched", "en_route", "on_scene", "transporting", "at_hospital", "returning",
               "out_of_service")
_CALL_STATES = ("received", "answered", "dispatched", "on_scene", "transporting", "at_hospital", "closed",
                "cancelled")
_CATEGORIES = ("chest_pain", "stroke", "trauma", "critical_maternal", "critical_neonatal", "other")


def upgrade() -> None:
    op.create_table(
        "emergency_response_targets",
        sa.Column("code", sa.String(length=40), nullable=False),
        sa.Column("limit_value", sa.Float(), nullable=False),
        sa.Column("unit", sa.String(length=10), nullable=False),
        sa.Column("required_share", sa.Float(), nullable=True),
        sa.Column("description", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_emergency_response_targets")),
    )
    targets = sa.table("emergency_response_targets", sa.column("code", sa.String), sa.column("limit_value", sa.Float),
                       sa.column("unit", sa.String), sa.column("required_share", sa.Float),
                       sa.column("description", sa.String))
    op.bulk_insert(targets, [
        {"code": "answer_seconds", "limit_value": 10, "unit": "seconds", "required_share": 0.95,
         "description": "10秒内接听率 ≥ 95% / calls answered within 10 s"},
        {"code": "depart_minutes", "limit_value": 3, "unit": "minutes", "required_share": 0.95,
         "description": "3分钟内出车率 ≥ 95% / ambulances leaving within 3 min"},
        {"code": "urban_on_scene", "limit_value": 10, "unit": "minutes", "required_share": None,
         "description": "城区10分钟到达现场 / on scene within 10 min in town"},
        {"code": "rural_on_scene", "limit_value": 30, "unit": "minutes", "required_share": None,
         "description": "农村30分钟到达现场 / on scene within 30 min in the countryside"},
    ])
    op.create_table(
        "emergency_settings",
        sa.Column("key", sa.String(length=60), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("description", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_emergency_settings")),
    )
    settings = sa.table("emergency_settings", sa.column("key", sa.String), sa.column("value", sa.Float),
                        sa.column("description", sa.String))
    op.bulk_insert(settings, [
        {"key": "mobile_icu_margin_minutes", "value": 3,
         "description": "一级呼叫：监护型救护车比最快车慢不超过此分钟数时优先 / priority 1: prefer a mobile ICU "
                        "within this many minutes of the fastest"},
        {"key": "thrombolysis_window_minutes", "value": 270,
         "description": "溶栓时间窗（发病至给药）/ thrombolysis window from onset (4.5 h)"},
        {"key": "door_to_needle_minutes", "value": 60,
         "description": "预计入院至溶栓用时，用于判断时间窗 / expected door-to-needle, counted in the window"},
    ])
    op.create_table(
        "ambulances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=40), nullable=False),
        sa.Column("plate", sa.String(length=20), nullable=False),
        sa.Column("kind", _enum("ambulancekind", "transport", "emergency", "mobile_icu"), nullable=False),
        sa.Column("station_organisation_id", sa.Integer(), nullable=False),
        sa.Column("state", _enum("ambulancestate", *_AMB_STATES), nullable=False),
        sa.Column("latitude", sa.Float(), nullable=False),
        sa.Column("longitude", sa.Float(), nullable=False),
        sa.Column("state_changed_at", _dt(), nullable=False),
        sa.Column("current_call_id", sa.Integer(), nullable=True),
        sa.Column("has_ecg_transmitter", sa.Boolean(), nullable=False),
        sa.Column("created_at", _dt(), nullable=False),
        sa.ForeignKeyConstraint(["station_organisation_id"], ["organisations.id"],
                                name=op.f("fk_ambulances_station_organisation_id_organisations")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ambulances")),
        sa.UniqueConstraint("code", name=op.f("uq_ambulances_code")),
    )
    op.create_index("ix_ambulances_station_state", "ambulances", ["station_organisation_id", "state"])
    op.create_index("ix_ambulances_state", "ambulances", ["state"])
    op.create_table(
        "emergency_calls",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("number", sa.String(length=40), nullable=False),
        sa.Column("category", _enum("callcategory", *_CATEGORIES), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("caller_name", sa.String(length=100), nullable=False),
        sa.Column("caller_phone", sa.String(length=40), nullable=False),
        sa.Column("complaint", sa.Text(), nullable=False),
        sa.Column("area_id", sa.Integer(), nullable=True),
        sa.Column("latitude", sa.Float(), nullable=False),
        sa.Column("longitude", sa.Float(), nullable=False),
        sa.Column("address", sa.String(length=300), nullable=False),
        sa.Column("urban", sa.Boolean(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=True),
        sa.Column("onset_at", _dt(), nullable=True),
        sa.Column("state", _enum("callstate", *_CALL_STATES), nullable=False),
        sa.Column("received_at", _dt(), nullable=False),
        sa.Column("answered_at", _dt(), nullable=True),
        sa.Column("dispatched_at", _dt(), nullable=True),
        sa.Column("departed_at", _dt(), nullable=True),
        sa.Column("on_scene_at", _dt(), nullable=True),
        sa.Column("left_scene_at", _dt(), nullable=True),
        sa.Column("at_hospital_at", _dt(), nullable=True),
        sa.Column("closed_at", _dt(), nullable=True),
        sa.Column("ambulance_id", sa.Integer(), nullable=True),
        sa.Column("station_organisation_id", sa.Integer(), nullable=True),
        sa.Column("destination_organisation_id", sa.Integer(), nullable=True),
        sa.Column("recommendation", sa.JSON(), nullable=False),
        sa.Column("pathway_case_id", sa.Integer(), nullable=True),
        sa.Column("ecg_request_id", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("from_organisation_id", sa.Integer(), nullable=True),
        sa.Column("created_by_user_id", sa.Integer(), nullable=True),
        sa.Column("dispatched_by_user_id", sa.Integer(), nullable=True),
        sa.Column("close_reason", sa.Text(), nullable=False),
        sa.Column("created_at", _dt(), nullable=False),
        sa.Column("updated_at", _dt(), nullable=False),
        sa.ForeignKeyConstraint(["ambulance_id"], ["ambulances.id"],
                                name=op.f("fk_emergency_calls_ambulance_id_ambulances")),
        sa.ForeignKeyConstraint(["area_id"], ["areas.id"], name=op.f("fk_emergency_calls_area_id_areas")),
        sa.ForeignKeyConstraint(["created_by_user_id"], ["users.id"],
                                name=op.f("fk_emergency_calls_created_by_user_id_users")),
        sa.ForeignKeyConstraint(["destination_organisation_id"], ["organisations.id"],
                                name=op.f("fk_emergency_calls_destination_organisation_id_organisations")),
        sa.ForeignKeyConstraint(["dispatched_by_user_id"], ["users.id"],
                                name=op.f("fk_emergency_calls_dispatched_by_user_id_users")),
        sa.ForeignKeyConstraint(["ecg_request_id"], ["consult_requests.id"],
                                name=op.f("fk_emergency_calls_ecg_request_id_consult_requests")),
        sa.ForeignKeyConstraint(["from_organisation_id"], ["organisations.id"],
                                name=op.f("fk_emergency_calls_from_organisation_id_organisations")),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_emergency_calls_patient_id_patients")),
        sa.ForeignKeyConstraint(["station_organisation_id"], ["organisations.id"],
                                name=op.f("fk_emergency_calls_station_organisation_id_organisations")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_emergency_calls")),
        sa.UniqueConstraint("number", name=op.f("uq_emergency_calls_number")),
    )
    op.create_index("ix_emergency_calls_open", "emergency_calls", ["priority", "received_at"],
                    postgresql_where=sa.text(_OPEN), sqlite_where=sa.text(_OPEN))
    op.create_index("ix_emergency_calls_station_received", "emergency_calls",
                    ["station_organisation_id", "received_at"])
    op.create_index("ix_emergency_calls_received", "emergency_calls", ["received_at"])
    op.create_index("ix_emergency_calls_patient", "emergency_calls", ["patient_id"])
    op.create_index(op.f("ix_emergency_calls_area_id"), "emergency_calls", ["area_id"])
    op.create_index(op.f("ix_emergency_calls_ambulance_id"), "emergency_calls", ["ambulance_id"])
    op.create_index(op.f("ix_emergency_calls_destination_organisation_id"), "emergency_calls",
                    ["destination_organisation_id"])
    op.create_index(op.f("ix_emergency_calls_pathway_case_id"), "emergency_calls", ["pathway_case_id"])
    op.create_index(op.f("ix_emergency_calls_ecg_request_id"), "emergency_calls", ["ecg_request_id"])
    op.create_table(
        "emergency_call_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("call_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=30), nullable=False),
        sa.Column("from_state", sa.String(length=20), nullable=False),
        sa.Column("to_state", sa.String(length=20), nullable=False),
        sa.Column("at", _dt(), nullable=False),
        sa.Column("by_user_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["by_user_id"], ["users.id"], name=op.f("fk_emergency_call_events_by_user_id_users")),
        sa.ForeignKeyConstraint(["call_id"], ["emergency_calls.id"], ondelete="CASCADE",
                                name=op.f("fk_emergency_call_events_call_id_emergency_calls")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_emergency_call_events")),
    )
    op.create_index(op.f("ix_emergency_call_events_call_id"), "emergency_call_events", ["call_id"])
    op.create_table(
        "ambulance_state_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ambulance_id", sa.Integer(), nullable=False),
        sa.Column("call_id", sa.Integer(), nullable=True),
        sa.Column("from_state", sa.String(length=20), nullable=False),
        sa.Column("to_state", sa.String(length=20), nullable=False),
        sa.Column("at", _dt(), nullable=False),
        sa.Column("latitude", sa.Float(), nullable=True),
        sa.Column("longitude", sa.Float(), nullable=True),
        sa.Column("position_source", sa.String(length=20), nullable=False),
        sa.Column("by_user_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["ambulance_id"], ["ambulances.id"], ondelete="CASCADE",
                                name=op.f("fk_ambulance_state_changes_ambulance_id_ambulances")),
        sa.ForeignKeyConstraint(["by_user_id"], ["users.id"],
                                name=op.f("fk_ambulance_state_changes_by_user_id_users")),
        sa.ForeignKeyConstraint(["call_id"], ["emergency_calls.id"],
                                name=op.f("fk_ambulance_state_changes_call_id_emergency_calls")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ambulance_state_changes")),
    )
    op.create_index("ix_ambulance_state_changes_ambulance_at", "ambulance_state_changes", ["ambulance_id", "at"])
    op.create_index(op.f("ix_ambulance_state_changes_call_id"), "ambulance_state_changes", ["call_id"])


def downgrade() -> None:
    op.drop_table("ambulance_state_changes")
    op.drop_table("emergency_call_events")
    op.drop_table("emergency_calls")
    op.drop_table("ambulances")
    op.drop_table("emergency_settings")
    op.drop_table("emergency_response_targets")
