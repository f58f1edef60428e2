"""Bx CDR file writer: file sequence and lease, closed files, which CDR went into which file.

Revision ID: bx_0001
Revises: core_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "bx_0001"
down_revision = "core_0001"
branch_labels = ("bx",)
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "bx_writer",
        sa.Column("name", sa.String, nullable=False),
        sa.Column("last_file_sequence_number", sa.BigInteger, nullable=False),
        sa.Column("owner", sa.String, nullable=True),
        sa.Column("lease_expires_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_bx_writer"),
    )
    op.create_table(
        "bx_file",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("writer", sa.String, nullable=False),
        sa.Column("file_sequence_number", sa.BigInteger, nullable=False),
        sa.Column("file_name", sa.String, nullable=False),
        sa.Column("temp_name", sa.String, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("closure_reason", sa.SmallInteger, nullable=False),
        sa.Column("cdr_count", sa.Integer, nullable=False),
        sa.Column("file_bytes", sa.BigInteger, nullable=False),
        sa.Column("opened_at", sa.Float, nullable=False),
        sa.Column("closed_at", sa.Float, nullable=False),
        sa.Column("marked_at", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_bx_file"),
        sa.UniqueConstraint("writer", "file_sequence_number", name="uq_bx_file_writer_sequence"),
    )
    op.create_index("ix_bx_file_writer_status", "bx_file", ["writer", "status"])
    op.create_table(
        "bx_file_cdr",
        sa.Column("cdr_id", sa.String, nullable=False),
        sa.Column("outbox_id", sa.BigInteger, nullable=False),
        sa.Column("file_id", BigId, nullable=True),
        sa.Column("position", sa.Integer, nullable=True),
        sa.Column("rejected_reason", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("cdr_id", name="pk_bx_file_cdr"),
        sa.ForeignKeyConstraint(["file_id"], ["bx_file.id"], name="fk_bx_file_cdr_file_id_bx_file", ondelete="CASCADE"),
    )
    op.create_index("ix_bx_file_cdr_file_id", "bx_file_cdr", ["file_id"])


def downgrade() -> None:
    op.drop_table("bx_file_cdr")
    op.drop_table("bx_file")
    op.drop_table("bx_writer")
