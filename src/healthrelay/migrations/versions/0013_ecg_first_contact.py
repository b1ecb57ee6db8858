"""ecg: when the clinic first saw the patient, for the chest-pain pathway's first medical contact

Revision ID: 0013
Revises: 0012
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from healthrelay.core.db import UTCDateTime

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("ecg_recordings", sa.Column("first_contact_at", UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ecg_recordings") as batch:
        batch.drop_column("first_contact_at")
