"""recognition: external quality assessment, validity windows, prices, orders and re-order reasons

Seeds local defaults a county changes by editing rows: validity windows (chemistry 30 days, electrolytes 7,
HbA1c 60, haematology 7, cardiac markers 1, coagulation 7; CT 90, DR 30, US 30, MR 180, ECG 7, pathology 365,
endoscopy 180; anything else 30), prices in fen, and the national list of reasons for ordering a
recognisable result again (医疗机构检查检验结果互认管理办法, 2022).

Revision ID: 0015
Revises: 0014
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from healthrelay.core.db import UTCDateTime

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (code, category, modality, days, note)
VALIDITY: list[tuple[str, str, str, int, str]] = [
    ("", "", "", 30, "默认 / default"),
    ("", "chemistry", "", 30, "生化 / chemistry"),
    ("", "electrolyte", "", 7, "电解质 / electrolytes"),
    ("", "hba1c", "", 60, "糖化血红蛋白 / HbA1c"),
    ("", "haematology", "", 7, "血常规 / blood count"),
    ("", "cardiac", "", 1, "心肌标志物 / cardiac markers"),
    ("", "coagulation", "", 7, "凝血 / coagulation"),
    ("GLU", "", "", 7, "血糖变化快 / glucose changes quickly"),
    ("", "imaging", "", 90, "影像 / imaging"),
    ("", "ultrasound", "", 30, "超声 / ultrasound"),
    ("", "ecg", "", 7, "心电 / ECG"),
    ("", "pathology", "", 365, "病理 / pathology"),
    ("", "endoscopy", "", 180, "内镜 / endoscopy"),
    ("", "", "CT", 90, "CT"),
    ("", "", "DR", 30, "DR"),
    ("", "", "US", 30, "超声 / ultrasound"),
    ("", "", "MR", 180, "MR"),
    ("", "", "ECG", 7, "心电图 / ECG"),
    ("", "", "PATH", 365, "病理 / pathology"),
    ("", "", "ES", 180, "内镜 / endoscopy"),
]

# (code, category, modality, price in fen)
PRICES: list[tuple[str, str, str, int]] = [
    ("", "", "", 2000),
    ("CT_HEAD", "", "", 20000), ("CT_CHEST", "", "", 26000), ("CT_ABD", "", "", 32000),
    ("MR_HEAD", "", "", 60000), ("DR_CHEST", "", "", 8000), ("US_ABD", "", "", 12000),
    ("US_HEART", "", "", 18000), ("ECG_12", "", "", 2500), ("PATH_BIOPSY", "", "", 30000),
    ("GASTROSCOPY", "", "", 25000),
    ("", "", "CT", 25000), ("", "", "MR", 60000), ("", "", "DR", 8000), ("", "", "US", 12000),
    ("", "", "ECG", 2500), ("", "", "PATH", 30000), ("", "", "ES", 25000),
    ("GLU", "", "", 500), ("K", "", "", 800), ("NA", "", "", 800), ("CL", "", "", 800), ("HBA1C", "", "", 6000),
    ("ALT", "", "", 500), ("AST", "", "", 500), ("CREA", "", "", 600), ("UREA", "", "", 500), ("UA", "", "", 500),
    ("TC", "", "", 500), ("TG", "", "", 500), ("LDL", "", "", 1500), ("WBC", "", "", 2000), ("HGB", "", "", 2000),
    ("PLT", "", "", 2000), ("CTNI", "", "", 8000), ("INR", "", "", 1500),
    ("", "chemistry", "", 800), ("", "electrolyte", "", 800), ("", "hba1c", "", 6000), ("", "haematology", "", 2000),
    ("", "cardiac", "", 8000), ("", "coagulation", "", 3000),
]

# (code, zh, en, needs a note)
REASONS: list[tuple[str, str, str, bool]] = [
    ("condition_changed", "病情变化或结果与临床表现不符", "condition changed or the result contradicts the picture", True),
    ("fast_changing", "检查检验项目变化快", "fast-changing value", False),
    ("major_decision", "重大医疗决策前（手术、输血等）", "before a major decision (surgery, transfusion)", False),
    ("emergency", "急诊、急救", "emergency", False),
    ("forensic", "司法鉴定等特殊需要", "forensic or other legal assessment", False),
    ("patient_request", "患者要求复查", "the patient asks for a new test", False),
    ("eqa_failed", "出具结果的机构室间质评不合格", "the issuing lab failed quality assessment", False),
    ("too_old", "结果时间久，参考价值不足", "too old to be useful", False),
    ("physician_judgement", "医师判断确有必要", "the physician judges it necessary", True),
]


def upgrade() -> None:
    op.create_table(
        "eqa_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organisation_id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=40), nullable=False),
        sa.Column("category", sa.String(length=20), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("scope", sa.String(length=20), nullable=False),
        sa.Column("year", sa.Integer(), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("program", sa.String(length=200), nullable=False),
        sa.Column("recorded_by_user_id", sa.Integer(), nullable=True),
        sa.Column("recorded_at", UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["organisation_id"], ["organisations.id"],
                                name=op.f("fk_eqa_records_organisation_id_organisations")),
        sa.ForeignKeyConstraint(["recorded_by_user_id"], ["users.id"],
                                name=op.f("fk_eqa_records_recorded_by_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eqa_records")),
    )
    op.create_index("ix_eqa_records_org_year", "eqa_records", ["organisation_id", "year"], unique=False)

    for table, value_col in (("recognition_validity", sa.Column("days", sa.Integer(), nullable=False)),
                             ("recognition_prices", sa.Column("price_fen", sa.Integer(), nullable=False))):
        extra = [sa.Column("note", sa.String(length=200), nullable=False)] if table == "recognition_validity" else []
        op.create_table(
            table,
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("code", sa.String(length=40), nullable=False),
            sa.Column("category", sa.String(length=20), nullable=False),
            sa.Column("modality", sa.String(length=16), nullable=False),
            value_col,
            *extra,
            sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}")),
            sa.UniqueConstraint("code", "category", "modality", name=f"uq_{table}_key"),
        )

    op.create_table(
        "reorder_reasons",
        sa.Column("code", sa.String(length=40), nullable=False),
        sa.Column("name_zh", sa.String(length=100), nullable=False),
        sa.Column("name_en", sa.String(length=100), nullable=False),
        sa.Column("needs_note", sa.Boolean(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_reorder_reasons")),
    )

    op.create_table(
        "clinical_orders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("number", sa.String(length=40), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("ordering_organisation_id", sa.Integer(), nullable=False),
        sa.Column("ordered_by_user_id", sa.Integer(), nullable=True),
        sa.Column("ordering_provider", sa.String(length=100), nullable=False),
        sa.Column("performing_organisation_id", sa.Integer(), nullable=True),
        sa.Column("code", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("placer_number", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("source", sa.String(length=10), nullable=False),
        sa.Column("clinical_note", sa.Text(), nullable=False),
        sa.Column("ordered_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("hl7_message_id", sa.Integer(), nullable=True),
        sa.Column("cancelled_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("cancel_reason", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_clinical_orders_patient_id_patients")),
        sa.ForeignKeyConstraint(["ordering_organisation_id"], ["organisations.id"],
                                name=op.f("fk_clinical_orders_ordering_organisation_id_organisations")),
        sa.ForeignKeyConstraint(["ordered_by_user_id"], ["users.id"],
                                name=op.f("fk_clinical_orders_ordered_by_user_id_users")),
        sa.ForeignKeyConstraint(["performing_organisation_id"], ["organisations.id"],
                                name=op.f("fk_clinical_orders_performing_organisation_id_organisations")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clinical_orders")),
        sa.UniqueConstraint("number", name=op.f("uq_clinical_orders_number")),
    )
    op.create_index("uq_clinical_orders_placer", "clinical_orders", ["ordering_organisation_id", "placer_number"],
                    unique=True, postgresql_where=sa.text("placer_number <> ''"),
                    sqlite_where=sa.text("placer_number <> ''"))
    op.create_index("ix_clinical_orders_patient", "clinical_orders", ["patient_id", "ordered_at"], unique=False)
    op.create_index("ix_clinical_orders_org", "clinical_orders", ["ordering_organisation_id", "ordered_at"],
                    unique=False)

    op.create_table(
        "recognition_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("organisation_id", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=12), nullable=False),
        sa.Column("code", sa.String(length=40), nullable=False),
        sa.Column("prior_kind", sa.String(length=8), nullable=False),
        sa.Column("prior_lab_result_id", sa.Integer(), nullable=True),
        sa.Column("prior_exam_result_id", sa.Integer(), nullable=True),
        sa.Column("prior_organisation_id", sa.Integer(), nullable=False),
        sa.Column("prior_reported_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("prior_scope", sa.String(length=20), nullable=False),
        sa.Column("priors_offered", sa.Integer(), nullable=False),
        sa.Column("reason_code", sa.String(length=40), nullable=True),
        sa.Column("reason_note", sa.Text(), nullable=False),
        sa.Column("price_fen", sa.Integer(), nullable=False),
        sa.Column("decided_by_user_id", sa.Integer(), nullable=True),
        sa.Column("decided_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("resolved_by_user_id", sa.Integer(), nullable=True),
        sa.Column("resolved_at", UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["order_id"], ["clinical_orders.id"],
                                name=op.f("fk_recognition_decisions_order_id_clinical_orders")),
        sa.ForeignKeyConstraint(["organisation_id"], ["organisations.id"],
                                name=op.f("fk_recognition_decisions_organisation_id_organisations")),
        sa.ForeignKeyConstraint(["prior_lab_result_id"], ["lab_results.id"],
                                name=op.f("fk_recognition_decisions_prior_lab_result_id_lab_results")),
        sa.ForeignKeyConstraint(["prior_exam_result_id"], ["exam_results.id"],
                                name=op.f("fk_recognition_decisions_prior_exam_result_id_exam_results")),
        sa.ForeignKeyConstraint(["prior_organisation_id"], ["organisations.id"],
                                name=op.f("fk_recognition_decisions_prior_organisation_id_organisations")),
        sa.ForeignKeyConstraint(["reason_code"], ["reorder_reasons.code"],
                                name=op.f("fk_recognition_decisions_reason_code_reorder_reasons")),
        sa.ForeignKeyConstraint(["decided_by_user_id"], ["users.id"],
                                name=op.f("fk_recognition_decisions_decided_by_user_id_users")),
        sa.ForeignKeyConstraint(["resolved_by_user_id"], ["users.id"],
                                name=op.f("fk_recognition_decisions_resolved_by_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recognition_decisions")),
        sa.UniqueConstraint("order_id", name=op.f("uq_recognition_decisions_order_id")),
    )
    op.create_index("ix_recognition_decisions_org_at", "recognition_decisions", ["organisation_id", "decided_at"],
                    unique=False)
    op.create_index("ix_recognition_decisions_at", "recognition_decisions", ["decided_at"], unique=False)

    def key() -> tuple[sa.ColumnClause, ...]:
        return sa.column("code", sa.String), sa.column("category", sa.String), sa.column("modality", sa.String)

    validity = sa.table("recognition_validity", *key(), sa.column("days", sa.Integer), sa.column("note", sa.String))
    op.bulk_insert(validity, [{"code": c, "category": cat, "modality": m, "days": d, "note": n}
                              for c, cat, m, d, n in VALIDITY])
    prices = sa.table("recognition_prices", *key(), sa.column("price_fen", sa.Integer))
    op.bulk_insert(prices, [{"code": c, "category": cat, "modality": m, "price_fen": p} for c, cat, m, p in PRICES])
    reasons = sa.table("reorder_reasons", sa.column("code", sa.String), sa.column("name_zh", sa.String),
                       sa.column("name_en", sa.String), sa.column("needs_note", sa.Boolean),
                       sa.column("position", sa.Integer), sa.column("is_active", sa.Boolean))
    op.bulk_insert(reasons, [{"code": c, "name_zh": zh, "name_en": en, "needs_note": note, "position": (i + 1) * 10,
                              "is_active": True} for i, (c, zh, en, note) in enumerate(REASONS)])


def downgrade() -> None:
    op.drop_index("ix_recognition_decisions_at", table_name="recognition_decisions")
    op.drop_index("ix_recognition_decisions_org_at", table_name="recognition_decisions")
    op.drop_table("recognition_decisions")
    op.drop_index("ix_clinical_orders_org", table_name="clinical_orders")
    op.drop_index("ix_clinical_orders_patient", table_name="clinical_orders")
    op.drop_index("uq_clinical_orders_placer", table_name="clinical_orders", postgresql_where=sa.text(
        "placer_number <> ''"), sqlite_where=sa.text("placer_number <> ''"))
    op.drop_table("clinical_orders")
    op.drop_table("reorder_reasons")
    op.drop_table("recognition_prices")
    op.drop_table("recognition_validity")
    op.drop_index("ix_eqa_records_org_year", table_name="eqa_records")
    op.drop_table("eqa_records")
