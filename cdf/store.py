"""The CDF's units of work on the database, and the writer that batches ACRs into them.

Everything an ACR changes happens in one transaction, committed before its ACA leaves:
the ACR log row (whose primary key makes a retransmission a duplicate, in any instance and
after any restart), the open record of the node's session, and an outbox row for every CDR
the ACR closed.  A batch of ACRs costs the same handful of statements whatever its size:

1. the ACR log: which keys are new, and their rows (SQLite: a join against the batch's keys, then one
   multi-row INSERT; PostgreSQL: ``INSERT ... ON CONFLICT DO NOTHING RETURNING``);
2. the open records concerned: only those whose remembered version is wrong or missing come back
   (PostgreSQL: every one, ``FOR UPDATE`` in key order, so that instances lock the same way round);
3. the pure assembly, in memory;
4. one DELETE of the records closed, one write of the records changed or opened;
5. one ``UPDATE ... RETURNING`` of this instance's local record sequence counter;
6. one INSERT of the outbox rows.

The statements are plain SQL on the driver's cursor, rows passed as multi-row VALUES (SQLite) or
arrays (PostgreSQL): no per-row work in Python beyond building the parameters.  On SQLite every
statement step gives the GIL away and has to win it back from the event loop, so the count of steps per
batch, not per ACR, is what keeps the writer thread from waiting.

**Prepared ahead.**  The writer thread assembles a batch (steps 3, 4 and 6's rows, the CDRs' JSON) before it
takes the writers' turn and begins the transaction (``CdfStore.prepare``): on the records it remembers, every
ACR taken for new, the CDRs numbered after the last number this store took.  In the transaction, steps 1, 2
and 5 check all three; where the database disagrees (a duplicate of an earlier batch, a record written
elsewhere, numbers another process of the same id took) the batch is assembled again there, as without a
preparation.  The turn and the row locks are then held for the statements and the COMMIT only.

**Records remembered.** The store keeps the records it wrote last (``cache_size``, least recently used
dropped) with their version.  Every record row carries the version and the writer that wrote it
(``updated_by``: this store's ``tag``, the node id and a random part, new in every process).  A
remembered record is used only when the row still has that version *and* that writer, so a record that
another instance (or the command line, or another process of the same node id) wrote meanwhile, closed,
or closed and opened again, is read afresh; a batch whose COMMIT failed leaves remembered versions one
ahead of the rows, which is read afresh too.  The assembly works on copies, so a batch that fails
leaves what is remembered untouched.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Connection, delete, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite

from cdf.acr import Acr
from cdf.assembly import Assembler, ClosedRecord, RecordState, build_cdr
from cdf.models import acr_log, lease, outbox
from cdf.settings import REMEMBERED_RECORDS
from charging.cdr import Cdr
from charging.db import DatabaseUnavailable, GroupCommitter

log = logging.getLogger("charging.cdf")

RecordKey = tuple[str, str]  # (Origin-Host, Session-Id)
AcrKey = tuple[str, str, int]  # (Session-Id, Origin-Host, Accounting-Record-Number)
Known = tuple[int, RecordState]  # a record's version in the database, and its state
RecordRow = tuple[RecordKey, int, RecordState, float]  # key, new version, state, due_at


class Verdict(enum.Enum):
    STORED = "stored"  # new: applied to its record
    DUPLICATE = "duplicate"  # seen before: answered again, counted once
    FAILED = "failed"  # could not be applied (a defect, logged): nothing of it was kept


@dataclass(slots=True)
class WriteResult:
    verdicts: list[Verdict]
    cdrs: list[Cdr] = field(default_factory=list)  # the CDRs the batch closed


def _insert(conn: Connection, table: Any) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that knows ON CONFLICT on both databases."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


@dataclass(slots=True)
class PreparedWrite:
    """A batch assembled before its transaction, on the records as this store last wrote them: what the
    transaction writes when the database agrees (every ACR new, every record at the version remembered)."""

    first_of_key: dict[AcrKey, int]  # the index of each key's first ACR in the batch
    log_rows: list[tuple[Any, ...]]
    remembered: list[int | None]  # the version remembered for each of the batch's records (sorted by key)
    verdicts: list[Verdict]
    failed: list[Acr]
    rows: _RecordRows
    closed: list[ClosedRecord]
    now: float
    last_number: int | None  # the local record sequence number ``cdrs`` end with; None: not numbered yet
    cdrs: list[Cdr]
    outbox_rows: list[tuple[Any, ...]]


@dataclass(slots=True)
class _RecordRows:
    """What a batch changes in cdf_record, and what the store remembers once it committed."""

    gone: list[RecordKey]
    opened: list[tuple[Any, ...]]
    changed: list[tuple[Any, ...]]
    written: list[tuple[RecordKey, Known]]


class _Redo(Exception):
    """An ACR of the batch failed in the assembly: assemble again, copying before every ACR."""


# -- SQL, per database ----------------------------------------------------------------------------------------
_RECORD_COLUMNS = "origin_host, session_id, icid, state, opened_at, last_acr_at, due_at, version, updated_by"
_ACR_LOG_COLUMNS = "session_id, origin_host, record_number, record_type, received_at, cdf_id"
_OUTBOX_COLUMNS = "cdr_id, partition_key, icid, session_id, node_address, payload, created_at"
_NEXT_NUMBERS = "UPDATE cdf_sequence SET last_value = last_value + {p} WHERE cdf_id = {p} RETURNING last_value"
_NEW_COUNTER = "INSERT INTO cdf_sequence (cdf_id, last_value) VALUES ({p}, 0) ON CONFLICT DO NOTHING"


class _Statements:
    """The store's statements on one connection; ``Changed`` maps a record key to what the database holds
    when that differs from what the store remembers: (version, state JSON), or None for no record."""

    def log_acrs(self, rows: list[tuple[Any, ...]]) -> set[AcrKey]:
        """Insert the ACR log rows whose key is new; return those keys."""
        raise NotImplementedError

    def unlog_acrs(self, keys: list[AcrKey]) -> None:
        raise NotImplementedError

    def changed_records(
        self, keys: list[RecordKey], remembered: list[int | None], tag: str
    ) -> dict[RecordKey, tuple[int, str] | None]:
        """Of ``keys`` (sorted), those whose row is not at the ``remembered`` version written by ``tag``
        (None: nothing remembered, so only an existing row differs)."""
        raise NotImplementedError

    def due_records(self, now: float, limit: int) -> list[tuple[str, str, int, str, str]]:
        raise NotImplementedError

    def delete_records(self, keys: list[RecordKey]) -> None:
        raise NotImplementedError

    def write_records(self, opened: list[tuple[Any, ...]], changed: list[tuple[Any, ...]]) -> None:
        """Insert ``opened`` and overwrite ``changed`` (rows in _RECORD_COLUMNS order)."""
        raise NotImplementedError

    def next_numbers(self, cdf_id: str, count: int) -> int:
        """The last of ``count`` local record sequence numbers taken for ``cdf_id``."""
        raise NotImplementedError

    def insert_outbox(self, rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError


class _SqliteStatements(_Statements):
    """Multi-row VALUES on the sqlite3 connection itself: one statement step per statement, not per row."""

    def __init__(self, conn: Connection) -> None:
        self.dialect = conn.dialect
        self.db: sqlite3.Connection = conn.connection.driver_connection  # type: ignore[assignment]
        self.max_variables = self.db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)

    def _run(self, sql: str, params: Sequence[Any]) -> list[Any]:
        try:
            return self.db.execute(sql, params).fetchall()
        except sqlite3.Error as error:
            # As SQLAlchemy would have raised it: an OperationalError (locked, I/O) means the database is
            # unavailable to the GroupCommitter; anything else fails the batch, which is retried ACR by ACR.
            raise sa_exc.DBAPIError.instance(
                sql, None, error, sqlite3.Error, hide_parameters=True, dialect=self.dialect
            ) from error

    def _chunks(self, rows: Sequence[tuple[Any, ...]], width: int) -> Iterable[tuple[str, list[Any]]]:
        """(``VALUES (?, ...), ...``, flat parameters) for as many rows as one statement may bind."""
        per_statement = max(1, self.max_variables // width)
        one = "(" + ",".join("?" * width) + ")"
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            yield "VALUES " + ",".join(itertools.repeat(one, len(chunk))), list(itertools.chain.from_iterable(chunk))

    def log_acrs(self, rows: list[tuple[Any, ...]]) -> set[AcrKey]:
        # The write lock is ours since BEGIN IMMEDIATE: nobody can log a key between the two statements.
        known: set[AcrKey] = set()
        for values, params in self._chunks([row[:3] for row in rows], 3):
            found = self._run(
                f"SELECT a.session_id, a.origin_host, a.record_number FROM ({values}) AS v "
                "JOIN cdf_acr_log AS a ON a.session_id = v.column1 AND a.origin_host = v.column2 "
                "AND a.record_number = v.column3",
                params,
            )
            known.update(found)
        new = [row for row in rows if row[:3] not in known] if known else rows
        for values, params in self._chunks(new, 6):
            self._run(f"INSERT INTO cdf_acr_log ({_ACR_LOG_COLUMNS}) {values}", params)
        return {row[:3] for row in new}

    def unlog_acrs(self, keys: list[AcrKey]) -> None:
        for values, params in self._chunks(keys, 3):
            self._run(
                "DELETE FROM cdf_acr_log WHERE rowid IN (SELECT a.rowid FROM "
                f"({values}) AS v JOIN cdf_acr_log AS a ON a.session_id = v.column1 "
                "AND a.origin_host = v.column2 AND a.record_number = v.column3)",
                params,
            )

    def changed_records(
        self, keys: list[RecordKey], remembered: list[int | None], tag: str
    ) -> dict[RecordKey, tuple[int, str] | None]:
        # Only the rows that differ come back: in the steady state, none (one statement step).
        rows = [
            (host, session, version, tag if version is not None else None)
            for (host, session), version in zip(keys, remembered, strict=True)
        ]
        changed: dict[RecordKey, tuple[int, str] | None] = {}
        for values, params in self._chunks(rows, 4):
            found = self._run(
                f"SELECT v.column1, v.column2, r.version, r.state FROM ({values}) AS v "
                "LEFT JOIN cdf_record AS r ON r.origin_host = v.column1 AND r.session_id = v.column2 "
                "WHERE r.version IS NOT v.column3 OR r.updated_by IS NOT v.column4",
                params,
            )
            for host, session, version, state in found:
                changed[(host, session)] = (version, state) if version is not None else None
        return changed

    def due_records(self, now: float, limit: int) -> list[tuple[str, str, int, str, str]]:
        return self._run(
            "SELECT origin_host, session_id, version, updated_by, state FROM cdf_record "
            "WHERE due_at <= ? ORDER BY due_at LIMIT ?",
            (now, limit),
        )

    def delete_records(self, keys: list[RecordKey]) -> None:
        for values, params in self._chunks(keys, 2):
            self._run(
                "DELETE FROM cdf_record WHERE rowid IN (SELECT r.rowid FROM "
                f"({values}) AS v JOIN cdf_record AS r ON r.origin_host = v.column1 AND r.session_id = v.column2)",
                params,
            )

    def write_records(self, opened: list[tuple[Any, ...]], changed: list[tuple[Any, ...]]) -> None:
        # Under the write lock and after the version check, an upsert does both in one statement.
        for values, params in self._chunks(opened + changed, 9):
            self._run(
                f"INSERT INTO cdf_record ({_RECORD_COLUMNS}) {values} "
                "ON CONFLICT (origin_host, session_id) DO UPDATE SET icid = excluded.icid, state = excluded.state, "
                "opened_at = excluded.opened_at, last_acr_at = excluded.last_acr_at, due_at = excluded.due_at, "
                "version = excluded.version, updated_by = excluded.updated_by",
                params,
            )

    def next_numbers(self, cdf_id: str, count: int) -> int:
        found = self._run(_NEXT_NUMBERS.format(p="?"), (count, cdf_id))
        if not found:
            # The instance's first CDR: create its counter (another process of the same id may race us).
            self._run(_NEW_COUNTER.format(p="?"), (cdf_id,))
            found = self._run(_NEXT_NUMBERS.format(p="?"), (count, cdf_id))
        return int(found[0][0])

    def insert_outbox(self, rows: list[tuple[Any, ...]]) -> None:
        for values, params in self._chunks(rows, 7):
            self._run(f"INSERT INTO cdf_outbox ({_OUTBOX_COLUMNS}) {values}", params)


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> tuple[list[Any], ...]:
    """Rows to columns: one array parameter per column."""
    if not rows:
        return tuple([] for _ in range(width))
    return tuple(list(column) for column in zip(*rows, strict=True))


class _PostgresStatements(_Statements):
    """One array per column (``unnest``): the same SQL text whatever the batch size, one round trip each.

    The arrays go in binary (``%b``): in text form psycopg escapes every quote of every CDR's JSON with a
    regular expression, which cost more than everything else the writer does.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def _run(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        result = self.conn.exec_driver_sql(sql, params)
        return list(result.fetchall()) if result.returns_rows else []

    def log_acrs(self, rows: list[tuple[Any, ...]]) -> set[AcrKey]:
        found = self._run(
            f"INSERT INTO cdf_acr_log ({_ACR_LOG_COLUMNS}) "
            "SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::smallint[], %b::float8[], %b::text[]) "
            "ON CONFLICT DO NOTHING RETURNING session_id, origin_host, record_number",
            _columns(rows, 6),
        )
        return {(r[0], r[1], int(r[2])) for r in found}

    def unlog_acrs(self, keys: list[AcrKey]) -> None:
        self._run(
            "DELETE FROM cdf_acr_log WHERE (session_id, origin_host, record_number) IN "
            "(SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[]))",
            _columns(keys, 3),
        )

    def changed_records(
        self, keys: list[RecordKey], remembered: list[int | None], tag: str
    ) -> dict[RecordKey, tuple[int, str] | None]:
        # Every existing row of the batch is locked (in key order), whether remembered right or not.
        found = self._run(
            "SELECT origin_host, session_id, version, updated_by, state FROM cdf_record "
            "WHERE (origin_host, session_id) IN (SELECT * FROM unnest(%b::text[], %b::text[])) "
            "ORDER BY origin_host, session_id FOR UPDATE",
            _columns(keys, 2),
        )
        rows = {(r[0], r[1]): r for r in found}
        changed: dict[RecordKey, tuple[int, str] | None] = {}
        for key, version in zip(keys, remembered, strict=True):
            row = rows.get(key)
            if row is None:
                if version is not None:
                    changed[key] = None
            elif version is None or row[2] != version or row[3] != tag:
                changed[key] = (int(row[2]), row[4])
        return changed

    def due_records(self, now: float, limit: int) -> list[tuple[str, str, int, str, str]]:
        return self._run(
            "SELECT origin_host, session_id, version, updated_by, state FROM cdf_record WHERE due_at <= %s "
            "ORDER BY due_at LIMIT %s FOR UPDATE SKIP LOCKED",  # another instance's sweeper takes the others
            (now, limit),
        )

    def delete_records(self, keys: list[RecordKey]) -> None:
        self._run(
            "DELETE FROM cdf_record WHERE (origin_host, session_id) IN (SELECT * FROM unnest(%b::text[], %b::text[]))",
            _columns(keys, 2),
        )

    _RECORD_ARRAYS = (
        "%b::text[], %b::text[], %b::text[], %b::text[], %b::float8[], %b::float8[], %b::float8[], "
        "%b::int[], %b::text[]"
    )

    def write_records(self, opened: list[tuple[Any, ...]], changed: list[tuple[Any, ...]]) -> None:
        if opened:
            # A plain INSERT: a record another instance opened meanwhile fails the batch (retried ACR by ACR)
            # rather than being overwritten.
            self._run(
                f"INSERT INTO cdf_record ({_RECORD_COLUMNS}) SELECT * FROM unnest({self._RECORD_ARRAYS})",
                _columns(opened, 9),
            )
        if changed:
            self._run(
                "UPDATE cdf_record AS r SET icid = v.icid, state = v.state, opened_at = v.opened_at, "
                "last_acr_at = v.last_acr_at, due_at = v.due_at, version = v.version, updated_by = v.updated_by "
                f"FROM unnest({self._RECORD_ARRAYS}) AS v({_RECORD_COLUMNS}) "
                "WHERE r.origin_host = v.origin_host AND r.session_id = v.session_id",
                _columns(changed, 9),
            )

    def next_numbers(self, cdf_id: str, count: int) -> int:
        found = self._run(_NEXT_NUMBERS.format(p="%s"), (count, cdf_id))
        if not found:
            self._run(_NEW_COUNTER.format(p="%s"), (cdf_id,))
            found = self._run(_NEXT_NUMBERS.format(p="%s"), (count, cdf_id))
        return int(found[0][0])

    def insert_outbox(self, rows: list[tuple[Any, ...]]) -> None:
        self._run(
            f"INSERT INTO cdf_outbox ({_OUTBOX_COLUMNS}) SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], "
            "%b::text[], %b::text[], %b::text[], %b::float8[])",
            _columns(rows, 7),
        )


def _statements(conn: Connection) -> _Statements:
    name = conn.dialect.name
    if name == "sqlite":
        return _SqliteStatements(conn)
    if name == "postgresql":
        return _PostgresStatements(conn)
    raise ValueError(f"the CDF store runs on SQLite or PostgreSQL, not {name}")


# -- the units of work ---------------------------------------------------------------------------------------
class CdfStore:
    """Units of work (functions of a Connection) for the GroupCommitter's writer thread.

    Not thread-safe: one writer thread (or one caller at a time) uses a store.
    """

    def __init__(
        self, assembler: Assembler, cdf_id: str, *, cache_size: int = REMEMBERED_RECORDS, tag: str | None = None
    ) -> None:
        self.assembler = assembler
        self.cdf_id = cdf_id
        self.tag = tag or f"{cdf_id}/{uuid.uuid4().hex[:12]}"  # updated_by of every record this store writes
        self.cache_size = cache_size
        self._known: dict[RecordKey, Known] = {}  # insertion order = least recently written first
        self.records_remembered = 0  # records taken from memory
        self.records_read = 0  # records read from the database (not remembered, or written elsewhere)
        self._last_number: int | None = None  # the last local record sequence number this store took
        self.prepared_written = 0  # batches written as prepared (the database agreed with the preparation)

    # -- ACRs -----------------------------------------------------------------------------------------------
    def prepare(self, acrs: Sequence[Acr]) -> PreparedWrite | None:
        """Assemble ``acrs`` ahead of their transaction, outside the writers' turn: on the records as this store
        last wrote them, every ACR taken for new, the CDRs numbered after the last number this store took.
        ``write_acrs`` checks all three in the transaction and assembles again where the database disagrees.
        None when the preparation itself failed (logged): the transaction then does all the work."""
        try:
            first_of_key = self._first_of_key(acrs)
            fresh = list(first_of_key.values())
            keys = sorted({(acrs[i].origin_host, acrs[i].session_id) for i in fresh})
            known = self._known
            remembered = [entry[0] if (entry := known.get(key)) is not None else None for key in keys]
            base = {key: entry for key in keys if (entry := known.get(key)) is not None}
            verdicts: list[Verdict] = [Verdict.DUPLICATE] * len(acrs)
            states, closed, failed = self._assemble_batch(acrs, fresh, base, verdicts)
            now = max(acrs[i].received_at for i in fresh)
            last = None if self._last_number is None or not closed else self._last_number + len(closed)
            cdrs, outbox_rows = self._numbered(closed, last, now) if last is not None else ([], [])
            return PreparedWrite(
                first_of_key,
                self._log_rows(acrs, first_of_key),
                remembered,
                verdicts,
                failed,
                self._record_rows(base, states),
                closed,
                now,
                last,
                cdrs,
                outbox_rows,
            )
        except Exception:
            log.exception("a batch of %d ACRs could not be prepared; its transaction assembles it", len(acrs))
            return None

    def write_acrs(self, conn: Connection, acrs: Sequence[Acr], prepared: PreparedWrite | None = None) -> WriteResult:
        """Store a batch of ACRs: duplicates out, records updated, closed CDRs into the outbox.  With
        ``prepared`` (``prepare(acrs)``), what was assembled ahead is written when the database agrees."""
        db = _statements(conn)
        if prepared is not None:
            first_of_key, log_rows = prepared.first_of_key, prepared.log_rows
        else:
            first_of_key = self._first_of_key(acrs)
            log_rows = self._log_rows(acrs, first_of_key)
        logged = db.log_acrs(log_rows)
        fresh = [i for i in first_of_key.values() if acrs[i].key in logged]
        if not fresh:
            return WriteResult([Verdict.DUPLICATE] * len(acrs))
        keys = sorted({(acrs[i].origin_host, acrs[i].session_id) for i in fresh})
        if (
            prepared is not None
            and len(fresh) == len(first_of_key)  # no ACR of the batch was stored before
            and not db.changed_records(keys, prepared.remembered, self.tag)
        ):
            return self._write_prepared(db, prepared)
        base = self._read(db, keys)
        verdicts: list[Verdict] = [Verdict.DUPLICATE] * len(acrs)
        states, closed, failed = self._assemble_batch(acrs, fresh, base, verdicts)
        if failed:
            db.unlog_acrs([a.key for a in failed])
        now = max(acrs[i].received_at for i in fresh)
        return WriteResult(verdicts, self._persist(db, self._record_rows(base, states), closed, now))

    def _write_prepared(self, db: _Statements, prepared: PreparedWrite) -> WriteResult:
        self.prepared_written += 1
        self.records_remembered += sum(1 for version in prepared.remembered if version is not None)
        if prepared.failed:
            db.unlog_acrs([a.key for a in prepared.failed])
        ahead = (prepared.last_number, prepared.cdrs, prepared.outbox_rows)
        return WriteResult(
            prepared.verdicts, self._persist(db, prepared.rows, prepared.closed, prepared.now, ahead=ahead)
        )

    @staticmethod
    def _first_of_key(acrs: Sequence[Acr]) -> dict[AcrKey, int]:
        first_of_key: dict[AcrKey, int] = {}
        for index, acr in enumerate(acrs):
            first_of_key.setdefault(acr.key, index)
        return first_of_key

    def _log_rows(self, acrs: Sequence[Acr], first_of_key: dict[AcrKey, int]) -> list[tuple[Any, ...]]:
        cdf_id = self.cdf_id
        return [
            (acr.session_id, acr.origin_host, acr.record_number, int(acr.record_type), acr.received_at, cdf_id)
            for acr in (acrs[i] for i in first_of_key.values())
        ]

    def _assemble_batch(
        self, acrs: Sequence[Acr], fresh: list[int], base: dict[RecordKey, Known], verdicts: list[Verdict]
    ) -> tuple[dict[RecordKey, RecordState | None], list[ClosedRecord], list[Acr]]:
        try:
            return self._assemble(acrs, fresh, base, verdicts, careful=False)
        except _Redo:
            return self._assemble(acrs, fresh, base, verdicts, careful=True)

    def _assemble(
        self,
        acrs: Sequence[Acr],
        fresh: list[int],
        base: dict[RecordKey, Known],
        verdicts: list[Verdict],
        *,
        careful: bool,
    ) -> tuple[dict[RecordKey, RecordState | None], list[ClosedRecord], list[Acr]]:
        """Apply the fresh ACRs in order.  The states in ``base`` are never changed: a record is copied before
        its first ACR of the batch, and, when ``careful``, before every ACR, so that one that fails in the
        assembly leaves its record as it was (the first failure without ``careful`` raises _Redo)."""
        states: dict[RecordKey, RecordState | None] = {key: known[1] for key, known in base.items()}
        owned: set[RecordKey] = set()  # states this batch made or copied, which it may change in place
        closed: list[ClosedRecord] = []
        failed: list[Acr] = []
        apply = self.assembler.apply
        for index in fresh:
            acr = acrs[index]
            key = (acr.origin_host, acr.session_id)
            state = states.get(key)
            if state is not None and (careful or key not in owned):
                state = state.copy()
            try:
                outcome = apply(state, acr)
            except Exception:
                if not careful:
                    raise _Redo from None
                # A defect in the assembly must not take the batch down; this ACR gets 5012 and is not kept.
                log.exception(
                    "ACR %d of %s could not be assembled",
                    acr.record_number,
                    acr.origin_host,
                    extra={"session_id": acr.session_id, "icid": acr.icid},
                )
                verdicts[index] = Verdict.FAILED
                failed.append(acr)
                continue
            states[key] = outcome.state
            owned.add(key)
            closed.extend(outcome.closed)
            verdicts[index] = Verdict.STORED
        return states, closed, failed

    # -- the clock ------------------------------------------------------------------------------------------
    def sweep(self, conn: Connection, now: float, limit: int) -> tuple[int, list[Cdr]]:
        """Close what the clock says is due by ``now``: silent sessions (incomplete) and over-long records.

        Returns how many due records it looked at (``limit`` means: call again) and the CDRs it closed.
        """
        db = _statements(conn)
        base: dict[RecordKey, Known] = {}
        for host, session, version, written_by, text in db.due_records(now, limit):
            key = (host, session)
            known = self._known.get(key)
            if known is not None and known[0] == version and written_by == self.tag:
                base[key] = known
            else:
                base[key] = (int(version), RecordState.from_json(text))
        states: dict[RecordKey, RecordState | None] = {}
        closed: list[ClosedRecord] = []
        for key, (_, state) in base.items():
            outcome = self.assembler.on_timer(state.copy(), now)
            states[key] = outcome.state
            closed.extend(outcome.closed)
            for item in outcome.closed:
                log.info(
                    "record of %s closed by the CDF: %s",
                    key[0],
                    item.cause.value,
                    extra={"session_id": key[1], "icid": item.state.icid},
                )
        return len(base), self._persist(db, self._record_rows(base, states), closed, now)

    def purge(self, conn: Connection, before: float, *, marks: Sequence[str]) -> tuple[int, int]:
        """Delete ACR log rows older than ``before``, and CDRs as old that every sink in ``marks`` (outbox
        column names) has delivered; returns how many of each."""
        acrs = conn.execute(delete(acr_log).where(acr_log.c.received_at < before)).rowcount
        delivered: list[ColumnElement[bool]] = [outbox.c[name].is_not(None) for name in marks]
        cdrs = conn.execute(delete(outbox).where(outbox.c.created_at < before, *delivered)).rowcount
        return acrs, cdrs

    # -- shared -----------------------------------------------------------------------------------------------
    def _read(self, db: _Statements, keys: list[RecordKey]) -> dict[RecordKey, Known]:
        """The records of ``keys`` as the database has them: from memory where the version says it may."""
        known = self._known
        remembered = [entry[0] if (entry := known.get(key)) is not None else None for key in keys]
        changed = db.changed_records(keys, remembered, self.tag)
        base: dict[RecordKey, Known] = {}
        for key, version in zip(keys, remembered, strict=True):
            if key in changed:
                found = changed[key]
                if found is not None:
                    base[key] = (int(found[0]), RecordState.from_json(found[1]))
                    self.records_read += 1
            elif version is not None:
                base[key] = known[key]
                self.records_remembered += 1
        return base

    def _persist(
        self,
        db: _Statements,
        rows: _RecordRows,
        closed: list[ClosedRecord],
        now: float,
        *,
        ahead: tuple[int | None, list[Cdr], list[tuple[Any, ...]]] = (None, [], []),
    ) -> list[Cdr]:
        """Write the record rows, number the closed records' CDRs and put them in the outbox; ``ahead``: the
        CDRs numbered before the transaction (up to that last number), used if the numbers taken agree."""
        if rows.gone:
            db.delete_records(rows.gone)
        if rows.opened or rows.changed:
            db.write_records(rows.opened, rows.changed)
        cdrs: list[Cdr] = []
        if closed:
            last = db.next_numbers(self.cdf_id, len(closed))
            guessed_last, cdrs, outbox_rows = ahead
            if last != guessed_last:  # not numbered ahead, or on a guess another process of this id undid
                cdrs, outbox_rows = self._numbered(closed, last, now)
            self._last_number = last
            db.insert_outbox(outbox_rows)
        self._remember(rows.gone, rows.written)
        return cdrs

    def _record_rows(self, base: dict[RecordKey, Known], states: dict[RecordKey, RecordState | None]) -> _RecordRows:
        """The cdf_record rows of the assembled ``states`` (in _RECORD_COLUMNS order), each one version on."""
        rows = _RecordRows([key for key, state in states.items() if state is None and key in base], [], [], [])
        due_at = self.assembler.due_at
        tag = self.tag
        for key, state in states.items():
            if state is None:
                continue
            before = base.get(key)
            version = before[0] + 1 if before is not None else 1
            row = (
                key[0],
                key[1],
                state.icid,
                state.to_json(),
                state.opened_at,
                state.last_acr_at,
                due_at(state),
                version,
                tag,
            )
            (rows.changed if before is not None else rows.opened).append(row)
            rows.written.append((key, (version, state)))
        return rows

    def _numbered(self, closed: list[ClosedRecord], last: int, now: float) -> tuple[list[Cdr], list[tuple[Any, ...]]]:
        """The CDRs of ``closed``, numbered up to ``last``, and their outbox rows."""
        first = last - len(closed) + 1
        cdrs = [build_cdr(item, first + n, self.cdf_id) for n, item in enumerate(closed)]
        outbox_rows = [
            (
                cdr.cdr_id,
                cdr.partition_key,
                cdr.ims_charging_identifier,
                cdr.session_id,
                cdr.node_address,
                cdr.model_dump_json(),  # what Cdr.to_json gives, as text
                now,
            )
            for cdr in cdrs
        ]
        return cdrs, outbox_rows

    def _remember(self, gone: list[RecordKey], written: list[tuple[RecordKey, Known]]) -> None:
        """What this batch wrote, as the database will have it once it commits (if it does not, the versions
        remembered are ahead of the rows, and the next batch reads those records afresh)."""
        known = self._known
        for key in gone:
            known.pop(key, None)
        for key, entry in written:
            known.pop(key, None)  # to the end: the most recently written
            known[key] = entry
        excess = len(known) - self.cache_size
        if excess > 0:
            for key in list(itertools.islice(known, excess)):
                del known[key]


# -- leases: one publisher and one file writer in a cluster of instances ------------------------------------
def hold_lease(conn: Connection, name: str, owner: str, now: float, duration: float) -> bool:
    """Take or renew lease ``name`` for ``owner`` until ``now + duration``; False while another holds it."""
    taken = conn.execute(
        update(lease)
        .where(lease.c.name == name, (lease.c.owner == owner) | (lease.c.expires_at < now))
        .values(owner=owner, expires_at=now + duration)
    ).rowcount
    if taken:
        return True
    # RETURNING, not rowcount: psycopg reports no row count for INSERT ... ON CONFLICT DO NOTHING.
    created = conn.execute(
        _insert(conn, lease)
        .values(name=name, owner=owner, expires_at=now + duration)
        .on_conflict_do_nothing()
        .returning(lease.c.name)
    ).first()
    return created is not None


def release_lease(conn: Connection, name: str, owner: str) -> None:
    conn.execute(delete(lease).where(lease.c.name == name, lease.c.owner == owner))


# -- the asyncio side ---------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Waiting:
    acr: Acr
    future: asyncio.Future[Verdict]


class AcrWriter:
    """Hands ACRs to the GroupCommitter in batches that take whatever is waiting when the writer is ready.

    A unit of work is queued as soon as an ACR arrives and none is queued yet; the unit takes the ACRs
    waiting at the moment the writer thread starts it (up to ``max_batch``), so the batches grow with the
    load and the writer never waits for the event loop to hand over the next batch.  A batch that fails
    for a reason other than the database being out of reach is retried one ACR at a time, so that one bad
    ACR cannot fail its neighbours.
    """

    def __init__(
        self,
        committer: GroupCommitter,
        store: CdfStore,
        *,
        max_batch: int = 512,
        on_cdrs: Callable[[list[Cdr]], None] | None = None,
    ) -> None:
        self.committer = committer
        self.store = store
        self.max_batch = max_batch
        self.on_cdrs = on_cdrs
        self._lock = threading.Lock()
        self._waiting: list[_Waiting] = []
        self._queued = False  # a unit is queued and has not taken its ACRs yet
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.acrs = 0
        self.database_ok = True  # whether the last transaction reached the database

    async def write(self, acr: Acr) -> Verdict:
        """The verdict on ``acr`` once its transaction committed; raises DatabaseUnavailable."""
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiting.append(_Waiting(acr, future))
            queue = not self._queued
            self._queued = True
        if queue:
            self._spawn(self._run())
        return await future

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Waiting]:
        """In the writer thread: the ACRs this unit writes."""
        with self._lock:
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
            self._queued = False  # ACRs arriving from now on need a unit of their own
        return batch

    async def _run(self) -> None:
        taken: list[_Waiting] = []
        took = False
        prepared: PreparedWrite | None = None

        def prepare() -> None:
            # Before the transaction and the writers' turn: take the ACRs waiting and assemble them.
            nonlocal took, prepared
            taken.extend(self._take())
            took = True
            prepared = self.store.prepare([w.acr for w in taken])

        def unit(conn: Connection) -> WriteResult:
            nonlocal took
            if not took:  # not prepared (the preparation failed before taking): take them now
                taken.extend(self._take())
                took = True
            # The GroupCommitter may run a unit again, alone, after its batch failed: the same ACRs, and the
            # preparation still holds, since the failed transaction left nothing behind.
            return self.store.write_acrs(conn, [w.acr for w in taken], prepared)

        try:
            result = await self.committer.run(unit, prepare=prepare)
        except DatabaseUnavailable as exc:
            self.database_ok = False
            if not took:  # the transaction failed before the unit ran: its ACRs are still waiting
                taken.extend(self._take())
                took = True
            for waiting in taken:
                if not waiting.future.done():
                    waiting.future.set_exception(DatabaseUnavailable(str(exc)))
            return
        except Exception as exc:
            if not took:
                taken.extend(self._take())
                took = True
            await self._one_by_one(taken, exc)
            return
        finally:
            self._requeue()
        self.database_ok = True
        self.batches += 1
        self.acrs += len(taken)
        self._resolve(taken, result)

    def _requeue(self) -> None:
        """ACRs left over by a full batch get a unit of their own."""
        with self._lock:
            queue = bool(self._waiting) and not self._queued
            self._queued = self._queued or queue
        if queue:
            self._spawn(self._run())

    def _resolve(self, batch: list[_Waiting], result: WriteResult) -> None:
        for waiting, verdict in zip(batch, result.verdicts, strict=True):
            if not waiting.future.done():
                waiting.future.set_result(verdict)
        if result.cdrs and self.on_cdrs is not None:
            self.on_cdrs(result.cdrs)

    async def _one_by_one(self, batch: list[_Waiting], error: Exception) -> None:
        if len(batch) == 1:
            acr = batch[0].acr
            log.error(
                "ACR %d of %s not stored: %s",
                acr.record_number,
                acr.origin_host,
                error,
                extra={"session_id": acr.session_id, "icid": acr.icid},
            )
            if not batch[0].future.done():
                batch[0].future.set_result(Verdict.FAILED)
            return
        for waiting in batch:
            alone = [waiting.acr]
            try:
                result = await self.committer.run(lambda conn: self.store.write_acrs(conn, alone))  # noqa: B023
            except DatabaseUnavailable as exc:
                if not waiting.future.done():
                    waiting.future.set_exception(DatabaseUnavailable(str(exc)))
            except Exception as exc:
                await self._one_by_one([waiting], exc)
            else:
                self._resolve([waiting], result)

    async def drain(self) -> None:
        """Wait until every ACR handed in so far has its verdict."""
        while self._waiting or self._tasks:
            await asyncio.sleep(0.01)
