"""pathways: time-critical pathway cases and their timestamped nodes

Seeds the nodes each centre records, the partial order a timeline must respect, and the national metric
targets (chest pain: FMC→ECG < 10 min, ECG→diagnosis < 10 min, D2B ≤ 90 min in ≥ 75%, diagnosis→cath-lab
activation < 30 min, ambulance STEMI with pre-hospital ECG transmitted ≥ 30% and bypassing ED ≥ 30%;
stroke: DNT < 60 min). An alliance tunes them by changing the rows.

Revision ID: 0012
Revises: 0011
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import healthrelay.core.db

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UTC = healthrelay.core.db.UTCDateTime(timezone=True)

NODES: dict[str, list[tuple[str, str, str]]] = {
    "chest_pain": [
        ("onset", "发病", "symptom onset"),
        ("first_medical_contact", "首次医疗接触", "first medical contact"),
        ("first_ecg", "首份心电图", "first ECG"),
        ("ecg_transmitted", "心电图传输", "ECG transmitted"),
        ("ecg_read", "心电图判读", "ECG read"),
        ("diagnosis", "确诊", "diagnosis"),
        ("arrival", "到达医院大门", "hospital door"),
        ("cath_lab_activation", "导管室激活", "cath-lab activation"),
        ("cath_lab_arrival", "到达导管室", "cath-lab arrival"),
        ("wire_crossing", "球囊扩张", "wire crossing"),
        ("thrombolysis", "溶栓", "thrombolysis"),
    ],
    "stroke": [
        ("onset", "发病", "symptom onset"),
        ("first_medical_contact", "首次医疗接触", "first medical contact"),
        ("arrival", "到达医院大门", "hospital door"),
        ("ct", "头颅CT", "CT scan"),
        ("ct_read", "CT判读", "CT read"),
        ("needle", "静脉溶栓", "thrombolysis needle"),
        ("groin_puncture", "股动脉穿刺", "groin puncture"),
        ("recanalisation", "血管再通", "recanalisation"),
    ],
    "trauma": [
        ("injury", "受伤", "injury"),
        ("first_medical_contact", "首次医疗接触", "first medical contact"),
        ("arrival", "到达医院大门", "hospital door"),
        ("ct", "CT检查", "CT scan"),
        ("surgery", "手术", "surgery"),
    ],
    "maternal": [
        ("first_medical_contact", "首次医疗接触", "first medical contact"),
        ("arrival", "到达医院大门", "hospital door"),
        ("first_assessment", "首次评估", "first assessment"),
        ("definitive_treatment", "确定性治疗", "definitive treatment"),
    ],
}
NODES["neonatal"] = list(NODES["maternal"])

ORDERS: dict[str, list[tuple[str, str]]] = {
    "chest_pain": [
        ("onset", "first_medical_contact"), ("onset", "arrival"),
        ("first_medical_contact", "first_ecg"), ("first_ecg", "ecg_transmitted"), ("ecg_transmitted", "ecg_read"),
        ("first_ecg", "diagnosis"), ("diagnosis", "cath_lab_activation"),
        ("cath_lab_activation", "cath_lab_arrival"), ("cath_lab_arrival", "wire_crossing"),
        ("arrival", "cath_lab_arrival"), ("arrival", "wire_crossing"), ("diagnosis", "thrombolysis"),
    ],
    "stroke": [
        ("onset", "first_medical_contact"), ("onset", "arrival"), ("arrival", "ct"), ("ct", "ct_read"),
        ("ct", "needle"), ("ct_read", "needle"), ("ct", "groin_puncture"),
        ("groin_puncture", "recanalisation"),
    ],
    "trauma": [
        ("injury", "first_medical_contact"), ("injury", "arrival"), ("arrival", "ct"), ("arrival", "surgery"),
    ],
    "maternal": [
        ("first_medical_contact", "definitive_treatment"), ("arrival", "first_assessment"),
        ("first_assessment", "definitive_treatment"),
    ],
}
ORDERS["neonatal"] = list(ORDERS["maternal"])

# (centre, code, zh, en, kind, from, to, minutes, comparison, required share, population, flag)
TARGETS = [
    ("chest_pain", "fmc_to_ecg", "首次医疗接触至首份心电图", "first medical contact to first ECG", "interval",
     "first_medical_contact", "first_ecg", 10, "lt", None, "", ""),
    ("chest_pain", "ecg_to_diagnosis", "首份心电图至确诊", "first ECG to diagnosis", "interval",
     "first_ecg", "diagnosis", 10, "lt", None, "", ""),
    ("chest_pain", "d2b", "进门至球囊扩张（D2B）", "door to balloon (D2B)", "interval",
     "arrival", "wire_crossing", 90, "le", 0.75, "", ""),
    ("chest_pain", "cath_lab_activation", "确诊至导管室激活", "diagnosis to cath-lab activation", "interval",
     "diagnosis", "cath_lab_activation", 30, "lt", None, "", ""),
    ("chest_pain", "prehospital_ecg", "救护车STEMI患者院前心电图传输比例",
     "ambulance STEMI patients with a pre-hospital ECG transmitted", "share",
     "", "", None, "ge", 0.30, "ambulance_stemi", "prehospital_ecg"),
    ("chest_pain", "bypass_ed", "救护车STEMI患者绕行急诊比例", "ambulance STEMI patients bypassing ED and CCU", "share",
     "", "", None, "ge", 0.30, "ambulance_stemi", "bypass_ed"),
    ("stroke", "dnt", "进门至静脉溶栓（DNT）", "door to needle (DNT)", "interval",
     "arrival", "needle", 60, "lt", None, "", ""),
]


def upgrade() -> None:
    op.create_table(
        "pathway_node_definitions",
        sa.Column("centre", sa.String(length=20), nullable=False),
        sa.Column("code", sa.String(length=40), nullable=False),
        sa.Column("zh", sa.String(length=60), nullable=False),
        sa.Column("en", sa.String(length=80), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("centre", "code", name=op.f("pk_pathway_node_definitions")),
    )
    op.create_table(
        "pathway_node_orders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("centre", sa.String(length=20), nullable=False),
        sa.Column("before", sa.String(length=40), nullable=False),
        sa.Column("after", sa.String(length=40), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pathway_node_orders")),
        sa.UniqueConstraint("centre", "before", "after", name=op.f("uq_pathway_node_orders_centre_before_after")),
    )
    op.create_table(
        "pathway_metric_targets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("centre", sa.String(length=20), nullable=False),
        sa.Column("code", sa.String(length=40), nullable=False),
        sa.Column("zh", sa.String(length=80), nullable=False),
        sa.Column("en", sa.String(length=120), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("from_node", sa.String(length=40), nullable=False),
        sa.Column("to_node", sa.String(length=40), nullable=False),
        sa.Column("target_minutes", sa.Float(), nullable=True),
        sa.Column("comparison", sa.String(length=4), nullable=False),
        sa.Column("required_share", sa.Float(), nullable=True),
        sa.Column("population", sa.String(length=30), nullable=False),
        sa.Column("share_flag", sa.String(length=30), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pathway_metric_targets")),
        sa.UniqueConstraint("centre", "code", name=op.f("uq_pathway_metric_targets_centre_code")),
    )
    op.create_table(
        "pathway_cases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("number", sa.String(length=40), nullable=False),
        sa.Column("centre", sa.Enum("chest_pain", "stroke", "trauma", "maternal", "neonatal", name="centre",
                                    native_enum=False, length=32), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.Enum("open", "closed", "cancelled", name="casestate", native_enum=False, length=32),
                  nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("hospital_organisation_id", sa.Integer(), nullable=True),
        sa.Column("opened_organisation_id", sa.Integer(), nullable=True),
        sa.Column("ecg_request_id", sa.Integer(), nullable=True),
        sa.Column("call_id", sa.Integer(), nullable=True),
        sa.Column("arrival_mode", sa.String(length=20), nullable=False),
        sa.Column("bypass_ed", sa.Boolean(), nullable=True),
        sa.Column("diagnosis", sa.Text(), nullable=False),
        sa.Column("diagnosis_code", sa.String(length=30), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("opened_at", _UTC, nullable=False),
        sa.Column("opened_by_user_id", sa.Integer(), nullable=True),
        sa.Column("closed_at", _UTC, nullable=True),
        sa.Column("closed_by_user_id", sa.Integer(), nullable=True),
        sa.Column("updated_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_pathway_cases_patient_id_patients")),
        sa.ForeignKeyConstraint(["hospital_organisation_id"], ["organisations.id"],
                                name=op.f("fk_pathway_cases_hospital_organisation_id_organisations")),
        sa.ForeignKeyConstraint(["opened_organisation_id"], ["organisations.id"],
                                name=op.f("fk_pathway_cases_opened_organisation_id_organisations")),
        sa.ForeignKeyConstraint(["ecg_request_id"], ["consult_requests.id"],
                                name=op.f("fk_pathway_cases_ecg_request_id_consult_requests")),
        sa.ForeignKeyConstraint(["call_id"], ["emergency_calls.id"],
                                name=op.f("fk_pathway_cases_call_id_emergency_calls")),
        sa.ForeignKeyConstraint(["opened_by_user_id"], ["users.id"],
                                name=op.f("fk_pathway_cases_opened_by_user_id_users")),
        sa.ForeignKeyConstraint(["closed_by_user_id"], ["users.id"],
                                name=op.f("fk_pathway_cases_closed_by_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pathway_cases")),
        sa.UniqueConstraint("number", name=op.f("uq_pathway_cases_number")),
    )
    with op.batch_alter_table("pathway_cases", schema=None) as batch_op:
        batch_op.create_index("ix_pathway_open_centre", ["centre", "opened_at"], unique=False,
                              postgresql_where=sa.text("state = 'open'"), sqlite_where=sa.text("state = 'open'"))
        batch_op.create_index("ix_pathway_centre_opened", ["centre", "opened_at"], unique=False)
        batch_op.create_index("ix_pathway_patient_centre", ["patient_id", "centre", "opened_at"], unique=False)
        batch_op.create_index("ix_pathway_hospital_opened", ["hospital_organisation_id", "opened_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_pathway_cases_opened_organisation_id"), ["opened_organisation_id"],
                              unique=False)
        batch_op.create_index(batch_op.f("ix_pathway_cases_ecg_request_id"), ["ecg_request_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_pathway_cases_call_id"), ["call_id"], unique=False)
    op.create_table(
        "pathway_nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(length=40), nullable=False),
        sa.Column("at", _UTC, nullable=False),
        sa.Column("recorded_at", _UTC, nullable=False),
        sa.Column("by_user_id", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["pathway_cases.id"], name=op.f("fk_pathway_nodes_case_id_pathway_cases"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["by_user_id"], ["users.id"], name=op.f("fk_pathway_nodes_by_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pathway_nodes")),
        sa.UniqueConstraint("case_id", "node", name=op.f("uq_pathway_nodes_case_id_node")),
    )
    op.create_table(
        "pathway_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("node", sa.String(length=40), nullable=False),
        sa.Column("old_at", _UTC, nullable=True),
        sa.Column("new_at", _UTC, nullable=True),
        sa.Column("by_user_id", sa.Integer(), nullable=True),
        sa.Column("at", _UTC, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["pathway_cases.id"],
                                name=op.f("fk_pathway_events_case_id_pathway_cases"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["by_user_id"], ["users.id"], name=op.f("fk_pathway_events_by_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pathway_events")),
    )
    with op.batch_alter_table("pathway_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pathway_events_case_id"), ["case_id"], unique=False)

    definitions = sa.table("pathway_node_definitions", sa.column("centre", sa.String), sa.column("code", sa.String),
                           sa.column("zh", sa.String), sa.column("en", sa.String), sa.column("position", sa.Integer))
    op.bulk_insert(definitions, [
        {"centre": centre, "code": code, "zh": zh, "en": en, "position": (i + 1) * 10}
        for centre, rows in NODES.items() for i, (code, zh, en) in enumerate(rows)])
    orders = sa.table("pathway_node_orders", sa.column("centre", sa.String), sa.column("before", sa.String),
                      sa.column("after", sa.String))
    op.bulk_insert(orders, [{"centre": centre, "before": b, "after": a}
                            for centre, rows in ORDERS.items() for b, a in rows])
    targets = sa.table(
        "pathway_metric_targets", sa.column("centre", sa.String), sa.column("code", sa.String),
        sa.column("zh", sa.String), sa.column("en", sa.String), sa.column("kind", sa.String),
        sa.column("from_node", sa.String), sa.column("to_node", sa.String), sa.column("target_minutes", sa.Float),
        sa.column("comparison", sa.String), sa.column("required_share", sa.Float),
        sa.column("population", sa.String), sa.column("share_flag", sa.String), sa.column("position", sa.Integer),
        sa.column("is_active", sa.Boolean))
    keys = ("centre", "code", "zh", "en", "kind", "from_node", "to_node", "target_minutes", "comparison",
            "required_share", "population", "share_flag")
    op.bulk_insert(targets, [{**dict(zip(keys, row, strict=True)), "position": (i + 1) * 10, "is_active": True}
                             for i, row in enumerate(TARGETS)])


def downgrade() -> None:
    with op.batch_alter_table("pathway_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pathway_events_case_id"))
    op.drop_table("pathway_events")
    op.drop_table("pathway_nodes")
    with op.batch_alter_table("pathway_cases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pathway_cases_call_id"))
        batch_op.drop_index(batch_op.f("ix_pathway_cases_ecg_request_id"))
        batch_op.drop_index(batch_op.f("ix_pathway_cases_opened_organisation_id"))
        batch_op.drop_index("ix_pathway_hospital_opened")
        batch_op.drop_index("ix_pathway_patient_centre")
        batch_op.drop_index("ix_pathway_centre_opened")
        batch_op.drop_index("ix_pathway_open_centre", postgresql_where=sa.text("state = 'open'"),
                            sqlite_where=sa.text("state = 'open'"))
    op.drop_table("pathway_cases")
    op.drop_table("pathway_metric_targets")
    op.drop_table("pathway_node_orders")
    op.drop_table("pathway_node_definitions")
