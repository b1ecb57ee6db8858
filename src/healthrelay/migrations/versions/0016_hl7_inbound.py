"""hl7: sending-facility registry, messages taken in, dead letters, destinations and the outbound queue

Revision ID: 0016
Revises: 0015
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from healthrelay.core.db import UTCDateTime

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UTC = UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "hl7_senders",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("facility", sa.String(60), nullable=False, unique=True),
        sa.Column("application", sa.String(60), nullable=False),
        sa.Column("organisation_id", sa.Integer, sa.ForeignKey("organisations.id"), nullable=False, index=True),
        sa.Column("interface_user_id", sa.Integer, sa.ForeignKey("users.id")),
        sa.Column("is_active", sa.Boolean, nullable=False),
        sa.Column("note", sa.String(200), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
    )
    op.create_table(
        "hl7_messages",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sender_id", sa.Integer, sa.ForeignKey("hl7_senders.id"), nullable=False),
        sa.Column("control_id", sa.String(64), nullable=False),
        sa.Column("message_type", sa.String(20), nullable=False),
        sa.Column("charset", sa.String(20), nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
        sa.Column("peer", sa.String(80), nullable=False),
        sa.Column("ack_code", sa.String(2), nullable=False),
        sa.Column("ack_text", sa.Text, nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.Column("received_at", _UTC, nullable=False),
        sa.UniqueConstraint("sender_id", "control_id", name="uq_hl7_messages_sender_control"),
    )
    op.create_index("ix_hl7_messages_received", "hl7_messages", ["received_at"])
    op.create_table(
        "hl7_dead_letters",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("received_at", _UTC, nullable=False),
        sa.Column("peer", sa.String(80), nullable=False),
        sa.Column("sender_facility", sa.String(60), nullable=False),
        sa.Column("control_id", sa.String(64), nullable=False),
        sa.Column("message_type", sa.String(20), nullable=False),
        sa.Column("charset", sa.String(20), nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
        sa.Column("reason_code", sa.String(40), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("ack_code", sa.String(2), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("handled_at", _UTC),
        sa.Column("handled_by_user_id", sa.Integer, sa.ForeignKey("users.id")),
        sa.Column("handled_note", sa.Text, nullable=False),
        sa.Column("replay_message_id", sa.Integer, sa.ForeignKey("hl7_messages.id")),
    )
    op.create_index("ix_hl7_dead_letters_state", "hl7_dead_letters", ["state", "received_at"])
    op.create_table(
        "hl7_destinations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("organisation_id", sa.Integer, sa.ForeignKey("organisations.id"), nullable=False, unique=True),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("receiving_application", sa.String(60), nullable=False),
        sa.Column("receiving_facility", sa.String(60), nullable=False),
        sa.Column("charset", sa.String(20), nullable=False),
        sa.Column("is_active", sa.Boolean, nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
    )
    op.create_table(
        "hl7_outbound",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("destination_id", sa.Integer, sa.ForeignKey("hl7_destinations.id"), nullable=False, index=True),
        sa.Column("control_id", sa.String(64), nullable=False, unique=True),
        sa.Column("message_type", sa.String(20), nullable=False),
        sa.Column("source_kind", sa.String(20), nullable=False),
        sa.Column("source_id", sa.Integer, nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", _UTC),
        sa.Column("last_error", sa.Text, nullable=False),
        sa.Column("ack_code", sa.String(2), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("sent_at", _UTC),
    )
    op.create_index("ix_hl7_outbound_state", "hl7_outbound", ["state", "next_attempt_at"])


def downgrade() -> None:
    for table in ("hl7_outbound", "hl7_destinations", "hl7_dead_letters", "hl7_messages", "hl7_senders"):
        op.drop_table(table)
