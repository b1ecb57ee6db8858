"""Indexes for the referral indicators (KPI page) at a million referrals

- ix_referrals_sent_kpi: the referrals sent in a period, with every column the KPI aggregates
  INCLUDEd (PostgreSQL), so the monthly counts and the percentiles read the index alone instead of
  the whole table (about a third of its size at 1,000,000 referrals). SQLite: a plain index.
- ix_referrals_up_completed_closed: up referrals completed, by completion time (partial), for the
  lead-hospital discharge share.
- ix_referrals_down_parent: down referrals by the up referral they follow (partial), for the same.

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


def upgrade() -> None:
    with op.batch_alter_table('referrals', schema=None) as batch_op:
        batch_op.create_index('ix_referrals_sent_kpi', ['sent_at'], unique=False, postgresql_include=KPI_COLUMNS)
        batch_op.create_index('ix_referrals_up_completed_closed', ['closed_at'], unique=False,
                              postgresql_include=['id', 'to_organisation_id'],
                              postgresql_where=sa.text(UP_COMPLETED), sqlite_where=sa.text(UP_COMPLETED))
        batch_op.create_index('ix_referrals_down_parent', ['parent_referral_id'], unique=False,
                              postgresql_include=['from_organisation_id'],
                              postgresql_where=sa.text(DOWN_SENT), sqlite_where=sa.text(DOWN_SENT))


def downgrade() -> None:
    with op.batch_alter_table('referrals', schema=None) as batch_op:
        batch_op.drop_index('ix_referrals_down_parent')
        batch_op.drop_index('ix_referrals_up_completed_closed')
        batch_op.drop_index('ix_referrals_sent_kpi')
