"""OCF: accounts, subscribers, unit buckets, tariffs, credit-control sessions, stored answers, ledger.

Revision ID: ocf_0001
Revises: core_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ocf_0001"
down_revision = "core_0001"
branch_labels = ("ocf",)
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ocf_accounts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("currency", sa.Integer, nullable=False),
        sa.Column("balance", sa.BigInteger, nullable=False),
        sa.Column("reserved", sa.BigInteger, nullable=False),
        sa.Column("credit_limit", sa.BigInteger, nullable=False),
        sa.Column("blocked", sa.Boolean, nullable=False),
        sa.Column("low_balance_threshold", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ocf_accounts"),
        sa.UniqueConstraint("name", name="uq_ocf_accounts_name"),
    )
    op.create_table(
        "ocf_subscribers",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("account_id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ocf_subscribers"),
        sa.ForeignKeyConstraint(["account_id"], ["ocf_accounts.id"], name="fk_ocf_subscribers_account_id_ocf_accounts"),
    )
    op.create_index("ix_ocf_subscribers_account_id", "ocf_subscribers", ["account_id"])
    op.create_table(
        "ocf_subscription_ids",
        sa.Column("id_type", sa.Integer, nullable=False),
        sa.Column("id_data", sa.String(255), nullable=False),
        sa.Column("subscriber_id", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id_type", "id_data", name="pk_ocf_subscription_ids"),
        sa.ForeignKeyConstraint(
            ["subscriber_id"], ["ocf_subscribers.id"], name="fk_ocf_subscription_ids_subscriber_id_ocf_subscribers"
        ),
    )
    op.create_index("ix_ocf_subscription_ids_subscriber_id", "ocf_subscription_ids", ["subscriber_id"])
    op.create_table(
        "ocf_buckets",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("account_id", sa.Integer, nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("rating_group", sa.Integer, nullable=True),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("reserved", sa.BigInteger, nullable=False),
        sa.Column("valid_from", sa.Float, nullable=False),
        sa.Column("valid_until", sa.Float, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ocf_buckets"),
        sa.ForeignKeyConstraint(["account_id"], ["ocf_accounts.id"], name="fk_ocf_buckets_account_id_ocf_accounts"),
    )
    op.create_index("ix_ocf_buckets_account_id", "ocf_buckets", ["account_id"])
    op.create_table(
        "ocf_tariffs",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("rating_group", sa.Integer, nullable=True),
        sa.Column("service_identifier", sa.Integer, nullable=True),
        sa.Column("destination_prefix", sa.String(32), nullable=False),
        sa.Column("band_start_minute", sa.Integer, nullable=True),
        sa.Column("band_end_minute", sa.Integer, nullable=True),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("price", sa.BigInteger, nullable=False),
        sa.Column("increment", sa.BigInteger, nullable=False),
        sa.Column("setup_fee", sa.BigInteger, nullable=False),
        sa.Column("minimum_charge", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.Integer, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("effective_from", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ocf_tariffs"),
    )
    op.create_table(
        "ocf_sessions",
        sa.Column("session_id", sa.String(255), nullable=False),
        sa.Column("account_id", sa.Integer, nullable=False),
        sa.Column("subscriber_id", sa.Integer, nullable=False),
        sa.Column("origin_host", sa.String(255), nullable=False),
        sa.Column("origin_realm", sa.String(255), nullable=False),
        sa.Column("service_context", sa.String(255), nullable=False),
        sa.Column("destination", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("request_number", sa.Integer, nullable=False),
        sa.Column("quotas", sa.Text, nullable=False),
        sa.Column("reserved", sa.BigInteger, nullable=False),
        sa.Column("cost", sa.BigInteger, nullable=False),
        sa.Column("pending_action", sa.String(16), nullable=True),
        sa.Column("action_sent_at", sa.Float, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("closed_at", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("session_id", name="pk_ocf_sessions"),
        sa.ForeignKeyConstraint(["account_id"], ["ocf_accounts.id"], name="fk_ocf_sessions_account_id_ocf_accounts"),
    )
    open_only = sa.text("state = 'open'")
    pending_only = sa.text("pending_action IS NOT NULL")
    op.create_index(
        "ix_ocf_sessions_open_account",
        "ocf_sessions",
        ["account_id"],
        postgresql_where=open_only,
        sqlite_where=open_only,
    )
    op.create_index(
        "ix_ocf_sessions_open_expires",
        "ocf_sessions",
        ["expires_at"],
        postgresql_where=open_only,
        sqlite_where=open_only,
    )
    op.create_index(
        "ix_ocf_sessions_pending_action",
        "ocf_sessions",
        ["pending_action"],
        postgresql_where=pending_only,
        sqlite_where=pending_only,
    )
    op.create_table(
        "ocf_answers",
        sa.Column("session_id", sa.String(255), nullable=False),
        sa.Column("request_number", sa.BigInteger, nullable=False),
        sa.Column("result_code", sa.Integer, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("session_id", "request_number", name="pk_ocf_answers"),
    )
    op.create_index("ix_ocf_answers_created_at", "ocf_answers", ["created_at"])
    op.create_table(
        "ocf_transactions",
        sa.Column("id", BigId, autoincrement=True),
        sa.Column("account_id", sa.Integer, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("balance_after", sa.BigInteger, nullable=False),
        sa.Column("units", sa.BigInteger, nullable=True),
        sa.Column("unit", sa.String(16), nullable=True),
        sa.Column("bucket_id", sa.Integer, nullable=True),
        sa.Column("uncollected", sa.BigInteger, nullable=False),
        sa.Column("session_id", sa.String(255), nullable=True),
        sa.Column("request_number", sa.BigInteger, nullable=True),
        sa.Column("rating_group", sa.Integer, nullable=True),
        sa.Column("service_identifier", sa.Integer, nullable=True),
        sa.Column("note", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ocf_transactions"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["ocf_accounts.id"], name="fk_ocf_transactions_account_id_ocf_accounts"
        ),
    )
    op.create_index("ix_ocf_transactions_account_id_id", "ocf_transactions", ["account_id", "id"])


def downgrade() -> None:
    for name in (
        "ocf_transactions",
        "ocf_answers",
        "ocf_sessions",
        "ocf_tariffs",
        "ocf_buckets",
        "ocf_subscription_ids",
        "ocf_subscribers",
        "ocf_accounts",
    ):
        op.drop_table(name)
