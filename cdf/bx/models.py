"""Tables of the Bx file writer (declared on charging.db.metadata; created by migrations/versions/bx_0001).

- ``bx_writer``: per writer name, the last file sequence number given out and who holds the writer lease.
- ``bx_file``: every file the writer closed, from the moment it is complete on disk under its temporary
  name (status ``closing``) until its CDRs are marked in the outbox (``closed``).
- ``bx_file_cdr``: which CDR (by ``cdr_id``, which the outbox keeps unique) went into which file, at which
  position; one row per CDR at most, so no CDR can be journaled into two files.  Keyed by CDR id rather
  than outbox row id, which SQLite may give out again once the CDF has purged the newest rows.  A row
  without a file is a CDR the writer could not encode (``rejected_reason``): it stays unmarked in the
  outbox and out of the files.

Times are Unix seconds (float) from the injected clock.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from charging.db import metadata

_Id = BigInteger().with_variant(Integer(), "sqlite")

CLOSING = "closing"
CLOSED = "closed"

writer = Table(
    "bx_writer",
    metadata,
    Column("name", String, primary_key=True),
    Column("last_file_sequence_number", BigInteger, nullable=False),
    Column("owner", String, nullable=True),
    Column("lease_expires_at", Float, nullable=False),
)

file = Table(
    "bx_file",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("writer", String, nullable=False),
    Column("file_sequence_number", BigInteger, nullable=False),
    Column("file_name", String, nullable=False),
    Column("temp_name", String, nullable=False),
    Column("status", String, nullable=False),
    Column("closure_reason", SmallInteger, nullable=False),
    Column("cdr_count", Integer, nullable=False),
    Column("file_bytes", BigInteger, nullable=False),
    Column("opened_at", Float, nullable=False),
    Column("closed_at", Float, nullable=False),
    Column("marked_at", Float, nullable=True),
    UniqueConstraint("writer", "file_sequence_number", name="uq_bx_file_writer_sequence"),
    Index("ix_bx_file_writer_status", "writer", "status"),
)

file_cdr = Table(
    "bx_file_cdr",
    metadata,
    Column("cdr_id", String, primary_key=True),
    Column("outbox_id", BigInteger, nullable=False),
    Column("file_id", _Id, ForeignKey("bx_file.id", ondelete="CASCADE"), nullable=True),
    Column("position", Integer, nullable=True),
    Column("rejected_reason", Text, nullable=True),
    Index("ix_bx_file_cdr_file_id", "file_id"),
)

TABLES = (writer, file, file_cdr)
