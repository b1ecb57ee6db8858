"""critical lab values in the critical-result loop

A critical result is now either a consult request's report (as before) or a lab result (lab_results, 0014):
request_id / report_id become nullable, lab_result_id (unique) is added, and exactly one of the two subjects
must be set. organisation_id names the organisation answerable for acting on it (filled in for existing
rows from their request's inviting member). flagged_by_user_id becomes nullable: a value arriving over HL7
may have nobody behind it.

Revision ID: 0017
Revises: 0016
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OPEN = sa.text("state = 'open'")
_ONE_SUBJECT = "(request_id IS NULL) <> (lab_result_id IS NULL)"


def upgrade() -> None:
    # Dropped around the batch (SQLite recreates the table) so the partial index keeps its WHERE clause.
    op.drop_index("ix_critical_open_due", table_name="critical_results", postgresql_where=_OPEN, sqlite_where=_OPEN)
    with op.batch_alter_table("critical_results", schema=None) as batch_op:
        batch_op.alter_column("request_id", existing_type=sa.Integer(), nullable=True)
        batch_op.alter_column("report_id", existing_type=sa.Integer(), nullable=True)
        batch_op.alter_column("flagged_by_user_id", existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column("lab_result_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("organisation_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(op.f("fk_critical_results_lab_result_id_lab_results"), "lab_results",
                                    ["lab_result_id"], ["id"], ondelete="CASCADE")
        batch_op.create_foreign_key(op.f("fk_critical_results_organisation_id_organisations"), "organisations",
                                    ["organisation_id"], ["id"])
        batch_op.create_unique_constraint(op.f("uq_critical_results_lab_result_id"), ["lab_result_id"])
        batch_op.create_check_constraint(op.f("ck_critical_results_one_subject"), _ONE_SUBJECT)
        batch_op.create_index(op.f("ix_critical_results_organisation_id"), ["organisation_id"], unique=False)
    op.create_index("ix_critical_open_due", "critical_results", ["ack_due_at"], unique=False,
                    postgresql_where=_OPEN, sqlite_where=_OPEN)
    op.execute("UPDATE critical_results SET organisation_id = (SELECT consult_requests.inviting_organisation_id "
               "FROM consult_requests WHERE consult_requests.id = critical_results.request_id) "
               "WHERE request_id IS NOT NULL")


def downgrade() -> None:
    # Lab values cannot live in the old shape: their loops go with the downgrade.
    op.execute("DELETE FROM critical_result_events WHERE critical_result_id IN "
               "(SELECT id FROM critical_results WHERE lab_result_id IS NOT NULL)")
    op.execute("DELETE FROM critical_results WHERE lab_result_id IS NOT NULL")
    op.drop_index("ix_critical_open_due", table_name="critical_results", postgresql_where=_OPEN, sqlite_where=_OPEN)
    with op.batch_alter_table("critical_results", schema=None) as batch_op:
        batch_op.drop_index(op.f("ix_critical_results_organisation_id"))
        batch_op.drop_constraint(op.f("ck_critical_results_one_subject"), type_="check")
        batch_op.drop_constraint(op.f("uq_critical_results_lab_result_id"), type_="unique")
        batch_op.drop_constraint(op.f("fk_critical_results_organisation_id_organisations"), type_="foreignkey")
        batch_op.drop_constraint(op.f("fk_critical_results_lab_result_id_lab_results"), type_="foreignkey")
        batch_op.drop_column("organisation_id")
        batch_op.drop_column("lab_result_id")
        batch_op.alter_column("flagged_by_user_id", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column("report_id", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column("request_id", existing_type=sa.Integer(), nullable=False)
    op.create_index("ix_critical_open_due", "critical_results", ["ack_due_at"], unique=False,
                    postgresql_where=_OPEN, sqlite_where=_OPEN)
