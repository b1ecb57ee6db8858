"""Indexes for the referral indicators (KPI page) at a million referrals

- ix_referrals_sent_kpi: the referrals sent in a period, with every column the KPI aggregates
  INCLUDEd (PostgreSQL), so the monthly counts and the percentiles read the index alone instead of
  the whole table (about a third of its size at 1,000,000 referrals). SQLite: a plain index.
- ix_referrals_up_completed_closed: up referrals completed, by completion time (partial), for the
  lead-hospital discharge share.
- ix_referrals_down_parent: down referrals by the up referral they follow (partial), for the same.
- ix_referrals_awaiting_org_due / ix_referrals_awaiting_dept_due: referrals waiting for an answer
  (partial: sent or redirected) by receiver and deadline, so the board's incoming list, overdue
  first, can be read in index order and stop at its limit.
- ix_referrals_from_org_created: what an organisation sent, newest first (the board's outgoing list).

Revision ID: 0006
Revises: 0005
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KPI_COLUMNS = ['id', 'direction', 'urgency', 'state', 'from_organisation_id', 'to_organisation_id', 'answered_at',
               'response_due_at', 'closed_at', 'round']
UP_COMPLETED = "direction = 'up' AND state = 'completed'"
DOWN_SENT = "direction = 'down' AND sent_at IS NOT NULL"
AWAITING = "state IN ('sent', 'redirected')"


def upgrade() -> None:
    with op.batch_alter_table('referrals', schema=None) as batch_op:
        batch_op.create_index('ix_referrals_sent_kpi', ['sent_at'], unique=False, postgresql_include=KPI_COLUMNS)
        batch_op.create_index('ix_referrals_up_completed_closed', ['closed_at'], unique=False,
                              postgresql_include=['id', 'to_organisation_id'],
                              postgresql_where=sa.text(UP_COMPLETED), sqlite_where=sa.text(UP_COMPLETED))
        batch_op.create_index('ix_referrals_down_parent', ['parent_referral_id'], unique=False,
                              postgresql_include=['from_organisation_id'],
                              postgresql_where=sa.text(DOWN_SENT), sqlite_where=sa.text(DOWN_SENT))
        batch_op.create_index('ix_referrals_awaiting_org_due', ['to_organisation_id', 'response_due_at'],
                              unique=False, postgresql_where=sa.text(AWAITING), sqlite_where=sa.text(AWAITING))
        batch_op.create_index('ix_referrals_awaiting_dept_due', ['to_department_id', 'response_due_at'],
                              unique=False, postgresql_where=sa.text(AWAITING), sqlite_where=sa.text(AWAITING))
        batch_op.create_index('ix_referrals_from_org_created', ['from_organisation_id', 'created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('referrals', schema=None) as batch_op:
        batch_op.drop_index('ix_referrals_from_org_created')
        batch_op.drop_index('ix_referrals_awaiting_dept_due')
        batch_op.drop_index('ix_referrals_awaiting_org_due')
        batch_op.drop_index('ix_referrals_down_parent')
        batch_op.drop_index('ix_referrals_up_completed_closed')
        batch_op.drop_index('ix_referrals_sent_kpi')
