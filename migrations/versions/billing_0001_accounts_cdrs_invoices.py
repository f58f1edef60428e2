"""billing: accounts, subscribers, tariff versions, stored CDRs and charges, usage, invoices, dead letters.

Revision ID: billing_0001
Revises: core_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "billing_0001"
down_revision = "core_0001"
branch_labels = ("billing",)
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "billing_accounts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("tariff_plan", sa.String(64), nullable=True),
        sa.Column("cycle_kind", sa.String(8), nullable=False),
        sa.Column("cycle_day", sa.Integer(), nullable=False),
        sa.Column("time_zone", sa.String(64), nullable=False),
        sa.Column("taxes", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_billing_accounts"),
        sa.UniqueConstraint("name", name="uq_billing_accounts_name"),
    )
    op.create_table(
        "billing_subscribers",
        sa.Column("identity", sa.String(255), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("identity", name="pk_billing_subscribers"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["billing_accounts.id"], name="fk_billing_subscribers_account_id_billing_accounts"
        ),
    )
    op.create_index("ix_billing_subscribers_account_id", "billing_subscribers", ["account_id"])
    op.create_table(
        "billing_tariff_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("plan", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("effective_from", UTC_TIME, nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("note", sa.String(200), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_billing_tariff_versions"),
        sa.UniqueConstraint("plan", "version", name="uq_billing_tariff_versions_plan_version"),
    )
    op.create_table(
        "billing_invoices",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("period_start", UTC_TIME, nullable=False),
        sa.Column("period_end", UTC_TIME, nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("number", sa.String(32), nullable=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("subtotal_minor", sa.BigInteger(), nullable=False),
        sa.Column("tax_minor", sa.BigInteger(), nullable=False),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.Column("taxes", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("closed_at", UTC_TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_billing_invoices"),
        sa.UniqueConstraint("number", name="uq_billing_invoices_number"),
        sa.UniqueConstraint("account_id", "period_start", name="uq_billing_invoices_account_id_period_start"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["billing_accounts.id"], name="fk_billing_invoices_account_id_billing_accounts"
        ),
    )
    op.create_table(
        "billing_cdrs",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("cdr_id", sa.String(64), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("served_party", sa.String(255), nullable=True),
        sa.Column("icid", sa.String(255), nullable=True),
        sa.Column("session_id", sa.String(255), nullable=False),
        sa.Column("node_address", sa.String(255), nullable=False),
        sa.Column("record_type", sa.String(32), nullable=False),
        sa.Column("service", sa.String(32), nullable=True),
        sa.Column("called_party", sa.String(255), nullable=True),
        sa.Column("started_at", UTC_TIME, nullable=False),
        sa.Column("duration_seconds", sa.Float(), nullable=False),
        sa.Column("octets", sa.BigInteger(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("kafka_partition", sa.Integer(), nullable=True),
        sa.Column("kafka_offset", sa.BigInteger(), nullable=True),
        sa.Column("received_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_billing_cdrs"),
        sa.UniqueConstraint("cdr_id", name="uq_billing_cdrs_cdr_id"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["billing_accounts.id"], name="fk_billing_cdrs_account_id_billing_accounts"
        ),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["billing_invoices.id"], name="fk_billing_cdrs_invoice_id_billing_invoices"
        ),
    )
    op.create_index("ix_billing_cdrs_icid", "billing_cdrs", ["icid"])
    op.create_index("ix_billing_cdrs_node_address", "billing_cdrs", ["node_address"])
    op.create_index("ix_billing_cdrs_started_at", "billing_cdrs", ["started_at"])
    op.create_index("ix_billing_cdrs_account_started", "billing_cdrs", ["account_id", "started_at"])
    op.create_table(
        "billing_charges",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("cdr_row_id", BIG_ID, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=True),
        sa.Column("tariff_version_id", sa.Integer(), nullable=False),
        sa.Column("component", sa.String(32), nullable=False),
        sa.Column("service", sa.String(32), nullable=False),
        sa.Column("band", sa.String(32), nullable=True),
        sa.Column("destination", sa.String(20), nullable=True),
        sa.Column("partner_ioi", sa.String(255), nullable=True),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("charged_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_billing_charges"),
        sa.ForeignKeyConstraint(["cdr_row_id"], ["billing_cdrs.id"], name="fk_billing_charges_cdr_row_id_billing_cdrs"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["billing_accounts.id"], name="fk_billing_charges_account_id_billing_accounts"
        ),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["billing_invoices.id"], name="fk_billing_charges_invoice_id_billing_invoices"
        ),
        sa.ForeignKeyConstraint(
            ["tariff_version_id"],
            ["billing_tariff_versions.id"],
            name="fk_billing_charges_tariff_version_id_billing_tariff_versions",
        ),
    )
    op.create_index("ix_billing_charges_cdr_row_id", "billing_charges", ["cdr_row_id"])
    op.create_index("ix_billing_charges_account_id", "billing_charges", ["account_id"])
    op.create_index("ix_billing_charges_invoice_id", "billing_charges", ["invoice_id"])
    op.create_table(
        "billing_usage_daily",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("service", sa.String(32), nullable=False),
        sa.Column("cdr_count", sa.BigInteger(), nullable=False),
        sa.Column("duration_seconds", sa.Float(), nullable=False),
        sa.Column("octets", sa.BigInteger(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "day", "service", name="pk_billing_usage_daily"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["billing_accounts.id"], name="fk_billing_usage_daily_account_id_billing_accounts"
        ),
    )
    op.create_table(
        "billing_invoice_lines",
        sa.Column("invoice_id", sa.Integer(), nullable=False),
        sa.Column("service", sa.String(32), nullable=False),
        sa.Column("cdr_count", sa.BigInteger(), nullable=False),
        sa.Column("duration_seconds", sa.Float(), nullable=False),
        sa.Column("octets", sa.BigInteger(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("invoice_id", "service", name="pk_billing_invoice_lines"),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["billing_invoices.id"], name="fk_billing_invoice_lines_invoice_id_billing_invoices"
        ),
    )
    op.create_table(
        "billing_invoice_sequence",
        sa.Column("series", sa.String(16), nullable=False),
        sa.Column("last_number", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("series", name="pk_billing_invoice_sequence"),
    )
    op.create_table(
        "billing_dead_letters",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("kafka_partition", sa.Integer(), nullable=False),
        sa.Column("kafka_offset", sa.BigInteger(), nullable=False),
        sa.Column("message_key", sa.LargeBinary(), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("published", sa.Boolean(), nullable=False),
        sa.Column("received_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_billing_dead_letters"),
        sa.UniqueConstraint(
            "topic",
            "kafka_partition",
            "kafka_offset",
            name="uq_billing_dead_letters_topic_kafka_partition_kafka_offset",
        ),
    )
    op.create_table(
        "billing_rerate_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("period_from", UTC_TIME, nullable=False),
        sa.Column("period_to", UTC_TIME, nullable=False),
        sa.Column("cdr_count", sa.BigInteger(), nullable=False),
        sa.Column("changed_count", sa.BigInteger(), nullable=False),
        sa.Column("difference_minor", sa.BigInteger(), nullable=False),
        sa.Column("applied_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_billing_rerate_runs"),
    )
    _guard_closed_invoices()


_SQLITE_GUARDS = [
    """CREATE TRIGGER billing_invoice_closed_update BEFORE UPDATE ON billing_invoices
       WHEN OLD.status = 'closed' BEGIN SELECT RAISE(ABORT, 'billing: a closed invoice is immutable'); END""",
    """CREATE TRIGGER billing_invoice_closed_delete BEFORE DELETE ON billing_invoices
       WHEN OLD.status = 'closed' BEGIN SELECT RAISE(ABORT, 'billing: a closed invoice is immutable'); END""",
    """CREATE TRIGGER billing_invoice_line_closed_insert BEFORE INSERT ON billing_invoice_lines
       WHEN (SELECT status FROM billing_invoices WHERE id = NEW.invoice_id) = 'closed'
       BEGIN SELECT RAISE(ABORT, 'billing: a closed invoice is immutable'); END""",
    """CREATE TRIGGER billing_invoice_line_closed_update BEFORE UPDATE ON billing_invoice_lines
       WHEN (SELECT status FROM billing_invoices WHERE id = OLD.invoice_id) = 'closed'
       BEGIN SELECT RAISE(ABORT, 'billing: a closed invoice is immutable'); END""",
    """CREATE TRIGGER billing_invoice_line_closed_delete BEFORE DELETE ON billing_invoice_lines
       WHEN (SELECT status FROM billing_invoices WHERE id = OLD.invoice_id) = 'closed'
       BEGIN SELECT RAISE(ABORT, 'billing: a closed invoice is immutable'); END""",
]

_POSTGRES_GUARDS = [
    """CREATE FUNCTION billing_refuse_closed_invoice() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        invoice integer;
    BEGIN
        IF TG_TABLE_NAME = 'billing_invoices' THEN
            IF OLD.status = 'closed' THEN
                RAISE EXCEPTION 'billing: a closed invoice is immutable (invoice %)', OLD.number;
            END IF;
        ELSE
            IF TG_OP = 'INSERT' THEN
                invoice := NEW.invoice_id;
            ELSE
                invoice := OLD.invoice_id;
            END IF;
            IF EXISTS (SELECT 1 FROM billing_invoices WHERE id = invoice AND status = 'closed') THEN
                RAISE EXCEPTION 'billing: a closed invoice is immutable (invoice id %)', invoice;
            END IF;
        END IF;
        IF TG_OP = 'DELETE' THEN
            RETURN OLD;
        END IF;
        RETURN NEW;
    END
    $$""",
    """CREATE TRIGGER billing_invoice_closed BEFORE UPDATE OR DELETE ON billing_invoices
       FOR EACH ROW EXECUTE FUNCTION billing_refuse_closed_invoice()""",
    """CREATE TRIGGER billing_invoice_line_closed BEFORE INSERT OR UPDATE OR DELETE ON billing_invoice_lines
       FOR EACH ROW EXECUTE FUNCTION billing_refuse_closed_invoice()""",
]


def _guard_closed_invoices() -> None:
    """The database itself refuses to change a closed invoice or its lines, whoever asks."""
    dialect = op.get_bind().dialect.name
    for statement in _SQLITE_GUARDS if dialect == "sqlite" else _POSTGRES_GUARDS if dialect == "postgresql" else []:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION billing_refuse_closed_invoice() CASCADE")
    for table in (
        "billing_rerate_runs",
        "billing_dead_letters",
        "billing_invoice_sequence",
        "billing_invoice_lines",
        "billing_usage_daily",
        "billing_charges",
        "billing_cdrs",
        "billing_invoices",
        "billing_tariff_versions",
        "billing_subscribers",
        "billing_accounts",
    ):
        op.drop_table(table)
