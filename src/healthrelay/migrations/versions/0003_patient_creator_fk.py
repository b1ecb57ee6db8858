"""patients.created_by_user_id references users on PostgreSQL too

patients and users reference each other, so 0001 marks this key `use_alter`: SQLite keeps it
inline, but create_table leaves it out elsewhere. It is added here once both tables exist.

Revision ID: 0003
Revises: 0002
"""
from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "fk_patients_created_by_user_id_users"


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.create_foreign_key(NAME, "patients", "users", ["created_by_user_id"], ["id"])


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(NAME, "patients", type_="foreignkey")
