"""Tables of the cdf package (declared on charging.db.metadata).

Times are Unix seconds (float) from the injected clock, so that every database and
every replay compares them the same way.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, SmallInteger, String, Table, Text, text

from charging.db import metadata

# SQLite only auto-assigns an INTEGER PRIMARY KEY; PostgreSQL gets a BIGSERIAL.
_Id = BigInteger().with_variant(Integer(), "sqlite")

# Every ACR stored, by the key that makes a retransmission a duplicate (RFC 6733 9.4 and 9.8.3:
# Session-Id and Accounting-Record-Number; Origin-Host as well, since the number is the sender's).
acr_log = Table(
    "cdf_acr_log",
    metadata,
    Column("session_id", String, primary_key=True),
    Column("origin_host", String, primary_key=True),
    Column("record_number", BigInteger, primary_key=True),
    Column("record_type", SmallInteger, nullable=False),
    Column("received_at", Float, nullable=False),
    Column("cdf_id", String, nullable=False),  # the instance that stored it
    Index("ix_cdf_acr_log_received_at", "received_at"),
)

# The open record of one node's session: the assembly state (cdf.assembly.RecordState as JSON), so that the
# session's next ACR may reach any CDF instance sharing the database.
record = Table(
    "cdf_record",
    metadata,
    Column("origin_host", String, primary_key=True),
    Column("session_id", String, primary_key=True),
    Column("icid", String, nullable=True),
    Column("state", Text, nullable=False),
    Column("opened_at", Float, nullable=False),
    Column("last_acr_at", Float, nullable=False),
    Column("due_at", Float, nullable=False),  # when the sweeper must look at it (silence, maximum duration)
    Column("version", Integer, nullable=False),
    Column("updated_by", String, nullable=False),
    Index("ix_cdf_record_icid", "icid"),
    Index("ix_cdf_record_due_at", "due_at"),
)

# Closed CDRs, written in the transaction that closed them.  Each sink marks its own column: the Kafka
# publisher published_at, the TS 32.297 file writer (cdf.bx) file_written_at, the JSON-lines writer
# (cdf.files) jsonl_written_at.
outbox = Table(
    "cdf_outbox",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("cdr_id", String, nullable=False, unique=True),
    Column("partition_key", String, nullable=False),  # the Kafka key: ICID, else Session-Id
    Column("icid", String, nullable=True),
    Column("session_id", String, nullable=False),
    Column("node_address", String, nullable=False),
    Column("payload", Text, nullable=False),  # the CDR as JSON (charging.cdr.Cdr.to_json)
    Column("created_at", Float, nullable=False),
    Column("published_at", Float, nullable=True),
    Column("file_written_at", Float, nullable=True),
    Column("jsonl_written_at", Float, nullable=True),
    Index("ix_cdf_outbox_icid", "icid"),
    Index("ix_cdf_outbox_session_id", "session_id"),
    Index("ix_cdf_outbox_created_at", "created_at"),
    Index(
        "ix_cdf_outbox_unpublished",
        "id",
        postgresql_where=text("published_at IS NULL"),
        sqlite_where=text("published_at IS NULL"),
    ),
    Index(
        "ix_cdf_outbox_unwritten",
        "id",
        postgresql_where=text("file_written_at IS NULL"),
        sqlite_where=text("file_written_at IS NULL"),
    ),
    Index(
        "ix_cdf_outbox_jsonl_unwritten",
        "id",
        postgresql_where=text("jsonl_written_at IS NULL"),
        sqlite_where=text("jsonl_written_at IS NULL"),
    ),
)

# The last local record sequence number (TS 32.298) each CDF instance gave out: numbers run without gaps.
sequence = Table(
    "cdf_sequence",
    metadata,
    Column("cdf_id", String, primary_key=True),
    Column("last_value", BigInteger, nullable=False),
)

# Who runs a cluster-wide singleton (the publisher, the file writer) and until when.
lease = Table(
    "cdf_lease",
    metadata,
    Column("name", String, primary_key=True),
    Column("owner", String, nullable=False),
    Column("expires_at", Float, nullable=False),
)
