"""imaging: the database counts instances per series and study as rows are inserted

The C-STORE path used to send two UPDATE statements per instance to keep the counts the worklist,
QIDO-RS and the viewer show; a trigger does the same inside the insert, at a fraction of the cost.
Instances are never deleted one by one (a study goes as a whole, by cascade), so there is no delete
trigger.

Revision ID: 0008
Revises: 0007
"""
from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_FUNCTION = """
CREATE OR REPLACE FUNCTION imaging_instance_counted() RETURNS trigger AS $$
BEGIN
  UPDATE imaging_series SET number_of_instances = number_of_instances + 1 WHERE id = NEW.series_id;
  UPDATE imaging_studies SET number_of_instances = number_of_instances + 1, updated_at = NEW.received_at
   WHERE id = NEW.study_id;
  RETURN NULL;
END;
$$ LANGUAGE plpgsql
"""

SQLITE_TRIGGER = """
CREATE TRIGGER imaging_instance_counted AFTER INSERT ON imaging_instances
BEGIN
  UPDATE imaging_series SET number_of_instances = number_of_instances + 1 WHERE id = NEW.series_id;
  UPDATE imaging_studies SET number_of_instances = number_of_instances + 1, updated_at = NEW.received_at
   WHERE id = NEW.study_id;
END
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        op.execute("CREATE TRIGGER imaging_instance_counted AFTER INSERT ON imaging_instances "
                   "FOR EACH ROW EXECUTE FUNCTION imaging_instance_counted()")
    else:
        op.execute(SQLITE_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS imaging_instance_counted"
               + (" ON imaging_instances" if op.get_bind().dialect.name == "postgresql" else ""))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS imaging_instance_counted()")
