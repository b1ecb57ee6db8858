"""ecg: ECG recordings, measurements and structured ECG reports

Adds the `ecg_recordings` table (one row per received tracing, its samples and automatic read) and the
`structured` column of consult reports (coded ECG statements; {} for free-text reports).

Revision ID: 0009
Revises: 0008
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import healthrelay.core.db

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ecg_recordings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.String(length=128), nullable=False),
        sa.Column("consult_request_id", sa.Integer(), nullable=False),
        sa.Column("organisation_id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=True),
        sa.Column("patient_match", sa.String(length=20), nullable=False),
        sa.Column("match_note", sa.String(length=300), nullable=False),
        sa.Column("demographics", sa.JSON(), nullable=False),
        sa.Column("source_format", sa.String(length=20), nullable=False),
        sa.Column("received_via", sa.String(length=10), nullable=False),
        sa.Column("device", sa.String(length=200), nullable=False),
        sa.Column("uploaded_by_user_id", sa.Integer(), nullable=True),
        sa.Column("acquired_at", healthrelay.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("received_at", healthrelay.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("sample_rate", sa.Float(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("lead_names", sa.JSON(), nullable=False),
        sa.Column("samples", sa.LargeBinary(), nullable=False),
        sa.Column("original", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("quality_flags", sa.JSON(), nullable=False),
        sa.Column("measurable", sa.Boolean(), nullable=False),
        sa.Column("measurements", sa.JSON(), nullable=False),
        sa.Column("measure_note", sa.Text(), nullable=False),
        sa.Column("suggested_codes", sa.JSON(), nullable=False),
        sa.Column("number_of_leads", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["consult_request_id"], ["consult_requests.id"],
                                name=op.f("fk_ecg_recordings_consult_request_id_consult_requests")),
        sa.ForeignKeyConstraint(["organisation_id"], ["organisations.id"],
                                name=op.f("fk_ecg_recordings_organisation_id_organisations")),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_ecg_recordings_patient_id_patients")),
        sa.ForeignKeyConstraint(["uploaded_by_user_id"], ["users.id"],
                                name=op.f("fk_ecg_recordings_uploaded_by_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ecg_recordings")),
        sa.UniqueConstraint("uid", name=op.f("uq_ecg_recordings_uid")),
    )
    with op.batch_alter_table("ecg_recordings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ecg_recordings_consult_request_id"), ["consult_request_id"],
                              unique=False)
        batch_op.create_index("ix_ecg_recordings_org_received", ["organisation_id", "received_at"], unique=False)
        batch_op.create_index("ix_ecg_recordings_patient", ["patient_id", "received_at"], unique=False)
    with op.batch_alter_table("consult_reports", schema=None) as batch_op:
        batch_op.add_column(sa.Column("structured", sa.JSON(), server_default=sa.text("'{}'"), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("consult_reports", schema=None) as batch_op:
        batch_op.drop_column("structured")
    with op.batch_alter_table("ecg_recordings", schema=None) as batch_op:
        batch_op.drop_index("ix_ecg_recordings_patient")
        batch_op.drop_index("ix_ecg_recordings_org_received")
        batch_op.drop_index(batch_op.f("ix_ecg_recordings_consult_request_id"))
    op.drop_table("ecg_recordings")
