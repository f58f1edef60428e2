"""CDF: ACR log, open records, CDR outbox, local record sequence numbers, singleton leases.

Revision ID: cdf_0001
Revises: core_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "cdf_0001"
down_revision = "core_0001"
branch_labels = ("cdf",)
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "cdf_acr_log",
        sa.Column("session_id", sa.String, nullable=False),
        sa.Column("origin_host", sa.String, nullable=False),
        sa.Column("record_number", sa.BigInteger, nullable=False),
        sa.Column("record_type", sa.SmallInteger, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("cdf_id", sa.String, nullable=False),
        sa.PrimaryKeyConstraint("session_id", "origin_host", "record_number", name="pk_cdf_acr_log"),
    )
    op.create_index("ix_cdf_acr_log_received_at", "cdf_acr_log", ["received_at"])

    op.create_table(
        "cdf_record",
        sa.Column("origin_host", sa.String, nullable=False),
        sa.Column("session_id", sa.String, nullable=False),
        sa.Column("icid", sa.String, nullable=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("opened_at", sa.Float, nullable=False),
        sa.Column("last_acr_at", sa.Float, nullable=False),
        sa.Column("due_at", sa.Float, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_by", sa.String, nullable=False),
        sa.PrimaryKeyConstraint("origin_host", "session_id", name="pk_cdf_record"),
    )
    op.create_index("ix_cdf_record_icid", "cdf_record", ["icid"])
    op.create_index("ix_cdf_record_due_at", "cdf_record", ["due_at"])

    op.create_table(
        "cdf_outbox",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("cdr_id", sa.String, nullable=False),
        sa.Column("partition_key", sa.String, nullable=False),
        sa.Column("icid", sa.String, nullable=True),
        sa.Column("session_id", sa.String, nullable=False),
        sa.Column("node_address", sa.String, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("published_at", sa.Float, nullable=True),
        sa.Column("file_written_at", sa.Float, nullable=True),
        sa.Column("jsonl_written_at", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_cdf_outbox"),
        sa.UniqueConstraint("cdr_id", name="uq_cdf_outbox_cdr_id"),
    )
    op.create_index("ix_cdf_outbox_icid", "cdf_outbox", ["icid"])
    op.create_index("ix_cdf_outbox_session_id", "cdf_outbox", ["session_id"])
    op.create_index("ix_cdf_outbox_created_at", "cdf_outbox", ["created_at"])
    unpublished = sa.text("published_at IS NULL")
    op.create_index(
        "ix_cdf_outbox_unpublished", "cdf_outbox", ["id"], postgresql_where=unpublished, sqlite_where=unpublished
    )
    unwritten = sa.text("file_written_at IS NULL")
    op.create_index("ix_cdf_outbox_unwritten", "cdf_outbox", ["id"], postgresql_where=unwritten, sqlite_where=unwritten)
    jsonl = sa.text("jsonl_written_at IS NULL")
    op.create_index("ix_cdf_outbox_jsonl_unwritten", "cdf_outbox", ["id"], postgresql_where=jsonl, sqlite_where=jsonl)

    op.create_table(
        "cdf_sequence",
        sa.Column("cdf_id", sa.String, nullable=False),
        sa.Column("last_value", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("cdf_id", name="pk_cdf_sequence"),
    )
    op.create_table(
        "cdf_lease",
        sa.Column("name", sa.String, nullable=False),
        sa.Column("owner", sa.String, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_cdf_lease"),
    )


def downgrade() -> None:
    op.drop_table("cdf_lease")
    op.drop_table("cdf_sequence")
    op.drop_table("cdf_outbox")
    op.drop_table("cdf_record")
    op.drop_table("cdf_acr_log")
