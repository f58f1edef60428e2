"""Tables of the ocf package (declared on charging.db.metadata).

Money is integer minor units of the account's ISO 4217 numeric currency.  Times are
Unix seconds (float) from the injected clock, so that a replayed run writes the same rows.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    text,
)

from charging.db import metadata

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit key.
BigId = BigInteger().with_variant(Integer(), "sqlite")

accounts = Table(
    "ocf_accounts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("currency", Integer, nullable=False),
    Column("balance", BigInteger, nullable=False),
    Column("reserved", BigInteger, nullable=False),  # money held by open reservations
    Column("credit_limit", BigInteger, nullable=False),  # how far below zero the balance may go
    Column("blocked", Boolean, nullable=False),
    Column("low_balance_threshold", BigInteger, nullable=True),  # None: the configured default
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

subscribers = Table(
    "ocf_subscribers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", Integer, ForeignKey("ocf_accounts.id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
)

# One row per Subscription-Id a subscriber is known by (E.164, SIP URI, IMSI, NAI, private).
subscription_ids = Table(
    "ocf_subscription_ids",
    metadata,
    Column("id_type", Integer, primary_key=True),  # Subscription-Id-Type value
    Column("id_data", String(255), primary_key=True),
    Column("subscriber_id", Integer, ForeignKey("ocf_subscribers.id"), nullable=False, index=True),
)

# Unit buckets: seconds, octets or service units an account may use before money, within validity.
buckets = Table(
    "ocf_buckets",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", Integer, ForeignKey("ocf_accounts.id"), nullable=False, index=True),
    Column("unit", String(16), nullable=False),  # time | octets | units
    Column("rating_group", Integer, nullable=True),  # None: any rating group
    Column("amount", BigInteger, nullable=False),
    Column("reserved", BigInteger, nullable=False),
    Column("valid_from", Float, nullable=False),
    Column("valid_until", Float, nullable=True),
    Column("created_at", Float, nullable=False),
)

# Tariffs are never changed in place: a change is a new row with a later effective_from.
tariffs = Table(
    "ocf_tariffs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False),
    Column("rating_group", Integer, nullable=True),
    Column("service_identifier", Integer, nullable=True),
    Column("destination_prefix", String(32), nullable=False),  # "" matches every destination
    Column("band_start_minute", Integer, nullable=True),  # minute of the UTC day; None: all day
    Column("band_end_minute", Integer, nullable=True),
    Column("unit", String(16), nullable=False),  # time | octets | units
    Column("price", BigInteger, nullable=False),  # minor units per started increment
    Column("increment", BigInteger, nullable=False),  # units per price step (60: per started minute)
    Column("setup_fee", BigInteger, nullable=False),
    Column("minimum_charge", BigInteger, nullable=False),
    Column("currency", Integer, nullable=False),
    Column("active", Boolean, nullable=False),  # False withdraws the key from effective_from on
    Column("effective_from", Float, nullable=False),
    Column("created_at", Float, nullable=False),
)

sessions = Table(
    "ocf_sessions",
    metadata,
    Column("session_id", String(255), primary_key=True),
    Column("account_id", Integer, ForeignKey("ocf_accounts.id"), nullable=False),
    Column("subscriber_id", Integer, nullable=False),
    Column("origin_host", String(255), nullable=False),
    Column("origin_realm", String(255), nullable=False),
    Column("service_context", String(255), nullable=False),
    Column("destination", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # open | closed | expired | aborted
    Column("request_number", Integer, nullable=False),  # highest CC-Request-Number handled
    Column("quotas", Text, nullable=False),  # JSON: the reservations per rating group / service
    Column("reserved", BigInteger, nullable=False),  # money held, sum over quotas
    Column("cost", BigInteger, nullable=False),  # money debited so far
    Column("pending_action", String(16), nullable=True),  # abort | reauth: ASR or RAR to send
    Column("action_sent_at", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),  # Tcc: released by the OCF itself from here on
    Column("closed_at", Float, nullable=True),
    # Partial indexes: only open sessions, and only sessions with work pending, are ever looked up this way,
    # and rows outside the predicate cost these indexes nothing on update.
    Index(
        "ix_ocf_sessions_open_account",
        "account_id",
        postgresql_where=text("state = 'open'"),
        sqlite_where=text("state = 'open'"),
    ),
    Index(
        "ix_ocf_sessions_open_expires",
        "expires_at",
        postgresql_where=text("state = 'open'"),
        sqlite_where=text("state = 'open'"),
    ),
    Index(
        "ix_ocf_sessions_pending_action",
        "pending_action",
        postgresql_where=text("pending_action IS NOT NULL"),
        sqlite_where=text("pending_action IS NOT NULL"),
    ),
)

# The answer to each CCR, written in the transaction of its effect: a repeat gets it again.
answers = Table(
    "ocf_answers",
    metadata,
    Column("session_id", String(255), primary_key=True),
    Column("request_number", BigInteger, primary_key=True),
    Column("result_code", Integer, nullable=False),
    Column("body", LargeBinary, nullable=False),  # the answer's AVPs as sent
    Column("created_at", Float, nullable=False, index=True),
)

# The account's ledger: every change of balance, and every release of a silent reservation.
transactions = Table(
    "ocf_transactions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("account_id", Integer, ForeignKey("ocf_accounts.id"), nullable=False),
    Column("at", Float, nullable=False),
    Column("kind", String(16), nullable=False),  # topup | debit | refund | release | bucket
    Column("amount", BigInteger, nullable=False),  # change of balance: negative for a debit
    Column("balance_after", BigInteger, nullable=False),
    Column("units", BigInteger, nullable=True),
    Column("unit", String(16), nullable=True),
    Column("bucket_id", Integer, nullable=True),
    Column("uncollected", BigInteger, nullable=False),  # cost of usage the account could not cover
    Column("session_id", String(255), nullable=True),
    Column("request_number", BigInteger, nullable=True),
    Column("rating_group", Integer, nullable=True),
    Column("service_identifier", Integer, nullable=True),
    Column("note", String(200), nullable=False),
    Index("ix_ocf_transactions_account_id_id", "account_id", "id"),
)
