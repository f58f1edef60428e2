"""Tables of the billing package (declared on charging.db.metadata).

Money columns are integer minor units (``*_minor``) beside the currency they are in.
Time stamps are stored as UTC and always read back timezone-aware, on SQLite too.
A closed invoice is never written again: the code only books on open invoices, and
triggers of the migration make the database refuse any change to a closed one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

from charging.db import metadata

# BIGINT keys, except on SQLite where only INTEGER PRIMARY KEY autoincrements.
BigId = BigInteger().with_variant(Integer(), "sqlite")

INVOICE_OPEN = "open"
INVOICE_CLOSED = "closed"


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every dialect (SQLite keeps no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


accounts = Table(
    "billing_accounts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("currency", String(3), nullable=False),
    Column("tariff_plan", String(64), nullable=True),  # plan name; the version is chosen by CDR time
    Column("cycle_kind", String(8), nullable=False),
    Column("cycle_day", Integer, nullable=False),
    Column("time_zone", String(64), nullable=False),
    Column("taxes", JSON, nullable=False),  # [{"name": "VAT", "basis_points": 1900}, ...]
    Column("created_at", UtcDateTime, nullable=False),
)

subscribers = Table(
    "billing_subscribers",
    metadata,
    Column("identity", String(255), primary_key=True),  # normalised served party: sip:alice@x or tel:+49...
    Column("account_id", Integer, ForeignKey("billing_accounts.id"), nullable=False, index=True),
    Column("created_at", UtcDateTime, nullable=False),
)

tariff_versions = Table(
    "billing_tariff_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("plan", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("effective_from", UtcDateTime, nullable=False),
    Column("document", JSON, nullable=False),  # billing.rating.TariffPlan as JSON
    Column("note", String(200), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    UniqueConstraint("plan", "version"),
)

cdrs = Table(
    "billing_cdrs",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),  # also the cursor of searches and the feed
    Column("cdr_id", String(64), nullable=False, unique=True),
    Column("account_id", Integer, ForeignKey("billing_accounts.id"), nullable=True),  # NULL: nobody's yet
    Column("served_party", String(255), nullable=True),
    Column("icid", String(255), nullable=True, index=True),
    Column("session_id", String(255), nullable=False),
    Column("node_address", String(255), nullable=False, index=True),
    Column("record_type", String(32), nullable=False),
    Column("service", String(32), nullable=True),
    Column("called_party", String(255), nullable=True),
    Column("started_at", UtcDateTime, nullable=False, index=True),
    Column("duration_seconds", Float, nullable=False),
    Column("octets", BigInteger, nullable=False),
    Column("amount_minor", BigInteger, nullable=False),  # what the subscriber pays for it, as last rated
    Column("invoice_id", Integer, ForeignKey("billing_invoices.id"), nullable=True),  # where it was booked
    Column("payload", Text, nullable=False),  # the CDR JSON as received
    Column("kafka_partition", Integer, nullable=True),
    Column("kafka_offset", BigInteger, nullable=True),
    Column("received_at", UtcDateTime, nullable=False),
    Index("ix_billing_cdrs_account_started", "account_id", "started_at"),
)

charges = Table(
    "billing_charges",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("cdr_row_id", BigId, ForeignKey("billing_cdrs.id"), nullable=False, index=True),
    # Charges are read by their CDR only: no index on account_id or invoice_id (migration billing_0002).
    Column("account_id", Integer, ForeignKey("billing_accounts.id"), nullable=False),
    Column("invoice_id", Integer, ForeignKey("billing_invoices.id"), nullable=True),
    Column("tariff_version_id", Integer, ForeignKey("billing_tariff_versions.id"), nullable=False),
    Column("component", String(32), nullable=False),
    Column("service", String(32), nullable=False),
    Column("band", String(32), nullable=True),
    Column("destination", String(20), nullable=True),
    Column("partner_ioi", String(255), nullable=True),
    Column("quantity", BigInteger, nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("charged_at", UtcDateTime, nullable=False),
)

usage_daily = Table(
    "billing_usage_daily",
    metadata,
    Column("account_id", Integer, ForeignKey("billing_accounts.id"), primary_key=True),
    Column("day", Date, primary_key=True),  # in the account's time zone
    Column("service", String(32), primary_key=True),
    Column("cdr_count", BigInteger, nullable=False),
    Column("duration_seconds", Float, nullable=False),
    Column("octets", BigInteger, nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
)

invoices = Table(
    "billing_invoices",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", Integer, ForeignKey("billing_accounts.id"), nullable=False),
    Column("period_start", UtcDateTime, nullable=False),
    Column("period_end", UtcDateTime, nullable=False),
    Column("status", String(8), nullable=False),
    Column("number", String(32), nullable=True, unique=True),  # given when the invoice is closed
    Column("currency", String(3), nullable=False),
    Column("subtotal_minor", BigInteger, nullable=False),
    Column("tax_minor", BigInteger, nullable=False),
    Column("total_minor", BigInteger, nullable=False),
    Column("taxes", JSON, nullable=False),  # at close: [{"name", "basis_points", "amount_minor"}]
    Column("created_at", UtcDateTime, nullable=False),
    Column("closed_at", UtcDateTime, nullable=True),
    UniqueConstraint("account_id", "period_start"),
)

invoice_lines = Table(
    "billing_invoice_lines",
    metadata,
    Column("invoice_id", Integer, ForeignKey("billing_invoices.id"), primary_key=True),
    Column("service", String(32), primary_key=True),
    Column("cdr_count", BigInteger, nullable=False),
    Column("duration_seconds", Float, nullable=False),
    Column("octets", BigInteger, nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
)

invoice_sequence = Table(
    "billing_invoice_sequence",
    metadata,
    Column("series", String(16), primary_key=True),  # the number prefix
    Column("last_number", BigInteger, nullable=False),  # only ever grows
)

dead_letters = Table(
    "billing_dead_letters",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("topic", String(255), nullable=False),
    Column("kafka_partition", Integer, nullable=False),
    Column("kafka_offset", BigInteger, nullable=False),
    Column("message_key", LargeBinary, nullable=True),
    Column("payload", LargeBinary, nullable=False),
    Column("reason", Text, nullable=False),
    Column("published", Boolean, nullable=False),  # copied to the dead-letter topic
    Column("received_at", UtcDateTime, nullable=False),
    UniqueConstraint("topic", "kafka_partition", "kafka_offset"),
)

rerate_runs = Table(
    "billing_rerate_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("period_from", UtcDateTime, nullable=False),
    Column("period_to", UtcDateTime, nullable=False),
    Column("cdr_count", BigInteger, nullable=False),
    Column("changed_count", BigInteger, nullable=False),
    Column("difference_minor", BigInteger, nullable=False),
    Column("applied_at", UtcDateTime, nullable=False),
)

TABLES = (
    accounts,
    subscribers,
    tariff_versions,
    cdrs,
    charges,
    usage_daily,
    invoices,
    invoice_lines,
    invoice_sequence,
    dead_letters,
    rerate_runs,
)
