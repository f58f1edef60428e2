"""CCR batches on PostgreSQL, settled on the event loop over a psycopg connection of their own.

On PostgreSQL (with the psycopg driver) the OCF does not hand its CCR batches to a writer
thread.  ``PgSettler`` keeps one asynchronous connection open and runs each batch as one
transaction from the event loop, so no thread hand-off, pool checkout, pre-ping or GIL
hand-over lies between a request and its answer, and the loop reads the next requests
while the database works.  A batch costs two round trips:

1. one pipeline: lock the batch's accounts (``SELECT ... FOR UPDATE``, in id order, in one
   statement), then read their buckets, the sessions and the stored answers, each in a
   statement that starts once the locks are held, so it sees what their holder committed;
2. once ``CreditStore.decide`` has answered every request, one pipeline: every write of the
   batch in one statement (a data-modifying WITH over unnested arrays), then COMMIT.

A Subscription-Id or a session that this process has not seen yet costs no round trip more: its
account is locked through a subquery, and the process learns which account it is in the same round
trip.  The answers are resolved only after the COMMIT succeeded.  A lost connection surfaces as
``DatabaseUnavailable`` and the next batch opens a new one.

The statements of a round trip go through ``Pipe``: psycopg connects, and then its libpq
connection is driven directly in pipeline mode, every statement prepared once, all of a round
trip's statements sent with one flush and their results read after one wait, rows loaded by
psycopg's C loaders.  Array parameters are packed into PostgreSQL's binary array format with
``struct`` (``PgArray``).  Per batch this costs a fraction of what psycopg's cursors, which
send and wait statement by statement and dump lists element by element, cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Sequence
from itertools import chain
from typing import Any, ClassVar

import psycopg
from psycopg import pq
from psycopg.adapt import Transformer
from psycopg.errors import error_from_result
from sqlalchemy import Engine

from charging.db import DatabaseUnavailable
from charging.diameter.constants import CcRequestType
from ocf import models as m
from ocf.control import Book, CreditRequest
from ocf.credit import Account, Bucket, Quota, Session
from ocf.rating import Tariff
from ocf.store import CreditStore, Outcome, quotas_json

log = logging.getLogger("charging.ocf")

CONNECT_TIMEOUT = 10  # seconds; a database that does not answer is out of reach


# -- array parameters in PostgreSQL's binary format -------------------------------------------------------------
_NULL = b"\xff\xff\xff\xff"
_HEAD = struct.Struct(">iiIii")  # dimensions, has nulls, element type, length, lower bound
_EMPTY = struct.Struct(">iiI")
_LENGTH = struct.Struct(">i")


class PgArray:
    """A one-dimensional array parameter; ``encode`` gives its binary form (array_recv's input)."""

    __slots__ = ("values",)
    array_oid: ClassVar[int]
    element_oid: ClassVar[int]

    def __init__(self, values: Sequence[Any]) -> None:
        self.values = values

    def encode(self) -> bytes:
        raise NotImplementedError


class _FixedArray(PgArray):
    """Elements of one size: each packed by ``struct`` and joined with its length word between them."""

    __slots__ = ()
    _item: ClassVar[struct.Struct]
    _length: ClassVar[bytes]

    def encode(self) -> bytes:
        values = self.values
        if not values:
            return _EMPTY.pack(0, 0, self.element_oid)
        item = self._item.pack
        length = self._length
        if None in values:
            body = b"".join(_NULL if v is None else length + item(v) for v in values)
            return _HEAD.pack(1, 1, self.element_oid, len(values), 1) + body
        return _HEAD.pack(1, 0, self.element_oid, len(values), 1) + length + length.join(map(item, values))


class Int8Array(_FixedArray):
    __slots__ = ()
    array_oid, element_oid = 1016, 20
    _item = struct.Struct(">q")
    _length = _LENGTH.pack(8)


class Float8Array(_FixedArray):
    __slots__ = ()
    array_oid, element_oid = 1022, 701
    _item = struct.Struct(">d")
    _length = _LENGTH.pack(8)


class BoolArray(_FixedArray):
    __slots__ = ()
    array_oid, element_oid = 1000, 16
    _item = struct.Struct(">?")
    _length = _LENGTH.pack(1)


class TextArray(PgArray):
    __slots__ = ()
    array_oid, element_oid = 1009, 25

    def encode(self) -> bytes:
        values = self.values
        if not values:
            return _EMPTY.pack(0, 0, self.element_oid)
        if None in values:
            pack = _LENGTH.pack
            parts = [_NULL if v is None else pack(len(d := self._data(v))) + d for v in values]
            return _HEAD.pack(1, 1, self.element_oid, len(values), 1) + b"".join(parts)
        data = self._all_data(values)
        lengths = map(_LENGTH.pack, map(len, data))
        body = b"".join(chain.from_iterable(zip(lengths, data, strict=True)))
        return _HEAD.pack(1, 0, self.element_oid, len(values), 1) + body

    @staticmethod
    def _data(value: Any) -> bytes:
        return str(value).encode()

    @staticmethod
    def _all_data(values: Sequence[Any]) -> list[bytes]:
        return list(map(str.encode, values))


class ByteaArray(TextArray):
    __slots__ = ()
    array_oid, element_oid = 1001, 17

    @staticmethod
    def _data(value: Any) -> bytes:
        return bytes(value)

    @staticmethod
    def _all_data(values: Sequence[Any]) -> list[bytes]:
        return list(map(bytes, values))


_FLOAT8 = struct.Struct(">d")
FLOAT8_OID = 701

Param = PgArray | float  # a float goes as float8


def _param(value: Param) -> tuple[bytes, int]:
    if isinstance(value, PgArray):
        return value.encode(), value.array_oid
    return _FLOAT8.pack(value), FLOAT8_OID


# -- reads ------------------------------------------------------------------------------------------------------


def _subscribers_from(types: int) -> str:
    """Subscription-Ids (``$types``, the next parameter their data) with their subscribers: by (type, data)
    pairs, so that the subscription ids' primary key finds them (data alone would read all of it)."""
    return (
        f"unnest(${types}::int8[], ${types + 1}::text[]) AS w(t, d) JOIN ocf_subscription_ids i "
        "ON i.id_type = w.t AND i.id_data = w.d JOIN ocf_subscribers s ON s.id = i.subscriber_id"
    )


_SUBSCRIBERS = f"SELECT i.id_type, i.id_data, s.id, s.account_id FROM {_subscribers_from(1)}"
_OWNERS = "SELECT session_id, account_id FROM ocf_sessions WHERE session_id = ANY($1)"
_LOCK = (
    "SELECT id, currency, balance, reserved, credit_limit, blocked, low_balance_threshold, "
    "(SELECT count(*) FROM ocf_tariffs), (SELECT max(id) FROM ocf_tariffs) "
    "FROM ocf_accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE"
)
_BUCKETS = (
    "SELECT id, account_id, unit, amount, reserved, rating_group, valid_from, valid_until "
    "FROM ocf_buckets WHERE account_id = ANY($1)"
)
_SESSIONS = (
    "SELECT session_id, account_id, subscriber_id, origin_host, origin_realm, service_context, destination, "
    "state, request_number, quotas, cost, pending_action, created_at, updated_at, expires_at, closed_at "
    "FROM ocf_sessions WHERE session_id = ANY($1)"
)
_ANSWERS = (
    "SELECT session_id, request_number, result_code, body FROM ocf_answers "
    "WHERE (session_id, request_number) IN (SELECT * FROM unnest($1::text[], $2::int8[]))"
)
# A batch with Subscription-Ids or sessions this process has not seen yet locks and reads the accounts they
# belong to in the same round trip: their ids come from a subquery, and the two statements after the lock tell
# the process which account each belongs to (facts that never change), for the batches to come.
# The ids are gathered into an array first (an InitPlan), so that the lock and the buckets are found by index.
_LEARNED_ACCOUNTS = (
    f"ARRAY(SELECT unnest($1::int8[]) UNION SELECT s.account_id FROM {_subscribers_from(2)} "
    "UNION SELECT account_id FROM ocf_sessions WHERE session_id = ANY($4))"
)
_LOCK_LEARNING = _LOCK.replace("WHERE id = ANY($1)", f"WHERE id = ANY({_LEARNED_ACCOUNTS})")
_BUCKETS_LEARNING = _BUCKETS.replace("WHERE account_id = ANY($1)", f"WHERE account_id = ANY({_LEARNED_ACCOUNTS})")
_TARIFFS = (
    "SELECT id, name, unit, price, increment, setup_fee, minimum_charge, currency, rating_group, "
    "service_identifier, destination_prefix, band_start_minute, band_end_minute, active, effective_from "
    "FROM ocf_tariffs"
)


def _quota(raw: dict[str, Any]) -> Quota:
    return Quota(
        raw["rg"],
        raw["si"],
        raw["unit"],
        raw["granted"],
        raw["money"],
        raw["bucket"],
        raw["tariff"],
        raw["used"],
        raw["charged"],
        raw["setup"],
        raw["final"],
    )


def _session(row: tuple[Any, ...], loads: Any) -> Session:
    (sid, account, subscriber, host, realm, context, destination, state, number, quotas, cost, pending) = row[:12]
    return Session(
        sid,
        account,
        subscriber,
        host,
        realm,
        context,
        destination,
        state,
        number,
        {key: _quota(value) for key, value in loads(quotas).items()},
        cost,
        pending,
        row[12],
        row[13],
        row[14],
        row[15],
    )


# -- writes -----------------------------------------------------------------------------------------------------
def _part_sql(table: str, columns: Sequence[str], key: str | None, first: int) -> str:
    """One table's part of the write statement, its arrays numbered from ``$first``."""
    arrays = ", ".join(f"${first + i}" for i in range(len(columns)))
    names = ", ".join(columns)
    if key is None:
        return f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays})"
    sets = ", ".join(f"{c} = v.{c}" for c in columns if c != key)
    # The key array twice: as the join, and as a condition the table's index answers, so that the rows to
    # update are found by index however the planner sizes the unnested arrays.
    keys = f"${first + list(columns).index(key)}"
    return (
        f"UPDATE {table} AS t SET {sets} FROM unnest({arrays}) AS v({names}) "
        f"WHERE t.{key} = v.{key} AND t.{key} = ANY({keys})"
    )


_I, _F, _B, _T, _Y = Int8Array, Float8Array, BoolArray, TextArray, ByteaArray
_ACCOUNT_COLUMNS = ("id", "balance", "reserved", "updated_at")
_ACCOUNT_KINDS = (_I, _I, _I, _F)
_BUCKET_COLUMNS = ("id", "amount", "reserved")
_BUCKET_KINDS = (_I, _I, _I)
_NEW_SESSION_COLUMNS = (
    "session_id",
    "account_id",
    "subscriber_id",
    "origin_host",
    "origin_realm",
    "service_context",
    "destination",
    "state",
    "request_number",
    "quotas",
    "reserved",
    "cost",
    "pending_action",
    "created_at",
    "updated_at",
    "expires_at",
    "closed_at",
)
_NEW_SESSION_KINDS = (_T, _I, _I, _T, _T, _T, _T, _T, _I, _T, _I, _I, _T, _F, _F, _F, _F)
_SESSION_COLUMNS = (
    "session_id",
    "state",
    "request_number",
    "quotas",
    "reserved",
    "cost",
    "pending_action",
    "updated_at",
    "expires_at",
    "closed_at",
)
_SESSION_KINDS = (_T, _T, _I, _T, _I, _I, _T, _F, _F, _F)
_LEDGER_COLUMNS = (
    "account_id",
    "at",
    "kind",
    "amount",
    "balance_after",
    "units",
    "unit",
    "bucket_id",
    "uncollected",
    "session_id",
    "request_number",
    "rating_group",
    "service_identifier",
    "note",
)
_LEDGER_KINDS = (_I, _F, _T, _I, _I, _I, _T, _I, _I, _T, _I, _I, _I, _T)
_ANSWER_COLUMNS = ("session_id", "request_number", "result_code", "body", "created_at")
_ANSWER_KINDS = (_T, _I, _I, _Y, _F)

_PARTS: tuple[tuple[str, Sequence[str], str | None, Sequence[type[PgArray]]], ...] = (
    (m.accounts.name, _ACCOUNT_COLUMNS, "id", _ACCOUNT_KINDS),
    (m.buckets.name, _BUCKET_COLUMNS, "id", _BUCKET_KINDS),
    (m.sessions.name, _NEW_SESSION_COLUMNS, None, _NEW_SESSION_KINDS),
    (m.sessions.name, _SESSION_COLUMNS, "session_id", _SESSION_KINDS),
    (m.transactions.name, _LEDGER_COLUMNS, None, _LEDGER_KINDS),
    (m.answers.name, _ANSWER_COLUMNS, None, _ANSWER_KINDS),
)
_WRITE_SQL: dict[tuple[bool, ...], str] = {}

# Open sessions of accounts whose credit ran out and that hold no units any more are asked to end (ASR).
_EXHAUSTED = (
    "UPDATE ocf_sessions SET pending_action = 'abort', action_sent_at = NULL, updated_at = $1 "
    "WHERE account_id = ANY($2) AND state = 'open' AND pending_action IS NULL "
    "AND NOT EXISTS (SELECT 1 FROM json_each(quotas::json) AS q WHERE (q.value ->> 'granted')::bigint <> 0)"
)


def write_statement(rows: Sequence[list[tuple[Any, ...]]]) -> tuple[str, list[PgArray]] | None:
    """One statement for every table's rows (``rows`` in the order of ``_PARTS``), and its parameters."""
    shape = tuple(bool(r) for r in rows)
    if not any(shape):
        return None
    sql = _WRITE_SQL.get(shape)
    if sql is None:
        parts = []
        first = 1
        for (table, columns, key, _), present in zip(_PARTS, shape, strict=True):
            if present:
                parts.append(_part_sql(table, columns, key, first))
                first += len(columns)
        sql = parts[0] if len(parts) == 1 else "WITH " + ", ".join(f"w{i} AS ({p})" for i, p in enumerate(parts))
        if len(parts) > 1:
            sql += " SELECT 1"
        _WRITE_SQL[shape] = sql
    params: list[PgArray] = []
    for (_, _, _, kinds), table_rows in zip(_PARTS, rows, strict=True):
        if table_rows:
            params.extend(kind(column) for kind, column in zip(kinds, zip(*table_rows, strict=True), strict=True))
    return sql, params


def book_rows(book: Book, answers: list[tuple[str, int, int, bytes]], now: float) -> tuple[list[tuple[Any, ...]], ...]:
    """What the batch changed, as rows of each part of the write statement."""
    accounts = book.accounts
    account_rows = [(i, accounts[i].balance, accounts[i].reserved, now) for i in sorted(book.touched_accounts)]
    bucket_rows: list[tuple[Any, ...]] = []
    if book.touched_buckets:
        by_id = {b.id: b for bs in book.buckets.values() for b in bs}
        bucket_rows = [(i, by_id[i].amount, by_id[i].reserved) for i in sorted(book.touched_buckets)]
    new_rows: list[tuple[Any, ...]] = []
    changed_rows: list[tuple[Any, ...]] = []
    sessions = book.sessions
    for sid in sorted(book.touched_sessions):
        s = sessions[sid]
        quotas = s.quotas
        reserved = sum(q.money for q in quotas.values())
        if s.is_new:
            s.is_new = False
            new_rows.append(
                (
                    sid,
                    s.account_id,
                    s.subscriber_id,
                    s.origin_host,
                    s.origin_realm,
                    s.service_context,
                    s.destination,
                    s.state,
                    s.request_number,
                    quotas_json(quotas),
                    reserved,
                    s.cost,
                    s.pending_action,
                    s.created_at,
                    s.updated_at,
                    s.expires_at,
                    s.closed_at,
                )
            )
        else:
            changed_rows.append(
                (
                    sid,
                    s.state,
                    s.request_number,
                    quotas_json(quotas),
                    reserved,
                    s.cost,
                    s.pending_action,
                    s.updated_at,
                    s.expires_at,
                    s.closed_at,
                )
            )
    ledger_rows = [
        (
            e.account_id,
            e.at,
            e.kind,
            e.amount,
            e.balance_after,
            e.units,
            e.unit,
            e.bucket_id,
            e.uncollected,
            e.session_id,
            e.request_number,
            e.rating_group,
            e.service_identifier,
            e.note,
        )
        for e in book.ledger
    ]
    answer_rows = [(sid, num, code, body, now) for sid, num, code, body in answers]
    return account_rows, bucket_rows, new_rows, changed_rows, ledger_rows, answer_rows


def conninfo_of(engine: Engine) -> tuple[str, str]:
    """The libpq connection string of ``engine``'s connections (schema option included), and the password."""
    with engine.connect() as conn:
        info = conn.connection.driver_connection.info  # type: ignore[union-attr]
        return str(info.dsn), str(info.password or "")


def supported(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"


Rows = list[tuple[Any, ...]]


class Pipe:
    """A connection's libpq in pipeline mode: statements queued, sent with one flush, results read after one wait.

    ``query`` queues a statement (prepared on the connection the first time its text is seen) and
    returns the index of its rows in what ``round_trip`` returns; ``command`` queues one whose
    result is not wanted (BEGIN, COMMIT, ROLLBACK).  ``round_trip`` ends the round with a Sync,
    waits for every result and raises the first error, once the server has answered everything.
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self.pgconn = conn.pgconn
        self._loop = asyncio.get_running_loop()
        self._fd = self.pgconn.socket
        self._rows = Transformer(conn)
        self._names: dict[str, bytes] = {}  # statement text -> prepared statement
        # Per queued statement: the index of its rows (None: no rows wanted), or the text being prepared.
        self._queued: list[int | str | None] = []
        self._wanted = 0
        self.pgconn.nonblocking = 1
        self.pgconn.enter_pipeline_mode()

    def command(self, sql: bytes) -> None:
        self.pgconn.send_query_params(sql, None)
        self._queued.append(None)

    def query(self, sql: str, *params: Param) -> int:
        pgconn = self.pgconn
        encoded = [_param(p) for p in params]
        name = self._names.get(sql)
        if name is None:
            name = self._names[sql] = b"ocf_%d" % len(self._names)
            pgconn.send_prepare(name, sql.encode(), [oid for _, oid in encoded])
            self._queued.append(sql)
        pgconn.send_query_prepared(name, [data for data, _ in encoded], [1] * len(encoded), 1)
        index = self._wanted
        self._wanted += 1
        self._queued.append(index)
        return index

    async def round_trip(self) -> list[Rows]:
        pgconn = self.pgconn
        queued, self._queued = self._queued, []
        wanted, self._wanted = self._wanted, 0
        pgconn.pipeline_sync()
        while pgconn.flush():
            await self._ready(self._loop.add_writer, self._loop.remove_writer)
        rows: list[Rows] = [[] for _ in range(wanted)]
        error: psycopg.Error | None = None
        last: pq.abc.PGresult | None = None
        position = 0
        while True:
            while pgconn.is_busy():
                await self._ready(self._loop.add_reader, self._loop.remove_reader)
                pgconn.consume_input()
            result = pgconn.get_result()
            if result is not None:
                status = result.status
                if status == pq.ExecStatus.PIPELINE_SYNC:
                    break
                if status == pq.ExecStatus.FATAL_ERROR and error is None:
                    error = error_from_result(result, encoding=self.conn.info.encoding)
                last = result
                continue
            # The end of one statement's results.
            entry = queued[position]
            position += 1
            ok = last is not None and last.status in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)
            if isinstance(entry, str):
                if not ok:
                    self._names.pop(entry, None)  # not prepared after all
            elif entry is not None and ok and last is not None and last.ntuples:
                loader = self._rows
                loader.set_pgresult(last)
                rows[entry] = loader.load_rows(0, last.ntuples, tuple)
            last = None
        if error is not None:
            raise error
        return rows

    async def _ready(self, watch: Any, unwatch: Any) -> None:
        ready = self._loop.create_future()
        watch(self._fd, _wake, ready)
        try:
            await ready
        finally:
            unwatch(self._fd)


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


class PgSettler:
    """One CCR writer on PostgreSQL: a connection of its own, one batch (one transaction) at a time."""

    def __init__(self, engine: Engine, store: CreditStore, name: str = "ocf-ccr") -> None:
        self.engine = engine
        self.store = store
        self.name = name
        self._conninfo: tuple[str, str] | None = None
        self._pipe: Pipe | None = None
        self.transactions = 0  # committed
        self.batches = 0  # tried
        from json import loads

        self._loads = loads

    async def settle(self, requests: list[CreditRequest], now: float) -> list[Outcome]:
        self.batches += 1
        pipe = await self._connection()
        try:
            outcomes = await self._settle(pipe, requests, now)
        except BaseException as error:
            await self._recover(pipe, error)
            if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
                raise DatabaseUnavailable(str(error)) from error
            raise
        self.transactions += 1
        return outcomes

    async def close(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            with contextlib.suppress(Exception):
                await pipe.conn.close()

    async def _connection(self) -> Pipe:
        pipe = self._pipe
        if pipe is not None and pipe.pgconn.status == pq.ConnStatus.OK:
            return pipe
        self._pipe = None
        try:
            if self._conninfo is None:
                self._conninfo = await asyncio.to_thread(conninfo_of, self.engine)
            dsn, password = self._conninfo
            extra: dict[str, Any] = {"password": password} if password else {}
            conn = await psycopg.AsyncConnection.connect(
                dsn, connect_timeout=CONNECT_TIMEOUT, application_name=self.name, autocommit=True, **extra
            )
        except Exception as error:
            raise DatabaseUnavailable(str(error)) from error
        try:
            # Every statement on this connection looks rows up by key.  A table still small, or not yet analysed,
            # can make the planner prefer reading it whole, and a prepared plan keeps that choice as the table grows.
            await conn.execute("SET enable_seqscan = off")
            pipe = Pipe(conn)
        except Exception as error:
            await conn.close()
            raise DatabaseUnavailable(str(error)) from error
        self._pipe = pipe
        return pipe

    async def _recover(self, pipe: Pipe, error: BaseException) -> None:
        """After a failed batch: roll back, or let the connection go when its state is unknown."""
        if isinstance(error, Exception) and pipe.pgconn.status == pq.ConnStatus.OK:
            try:
                pipe.command(b"ROLLBACK")
                await pipe.round_trip()
                return
            except Exception as rollback_error:
                log.warning("%s: rollback failed (%s); reconnecting", self.name, rollback_error)
        self._pipe = None
        with contextlib.suppress(Exception):
            await pipe.conn.close()

    async def _settle(self, pipe: Pipe, requests: list[CreditRequest], now: float) -> list[Outcome]:
        store = self.store
        pipe.command(b"BEGIN")
        # 1. which accounts: by Subscription-Id for new sessions and events, by session otherwise
        subscribers, missing = store.known_subscribers(requests)
        unknown = store.unknown_sessions(requests)
        session_ids: list[str] = []
        keys: dict[tuple[str, int], None] = {}
        for req in requests:
            if req.request_type != CcRequestType.EVENT:
                session_ids.append(req.session_id)
            keys[(req.session_id, req.request_number)] = None
        # 2. lock them; 3. read buckets, sessions and stored answers: one round trip
        ids = Int8Array(store.accounts_of(subscribers, session_ids))
        learning = bool(missing or unknown)
        if learning:
            pairs = sorted(missing)
            types, data, sids = Int8Array([t for t, _ in pairs]), TextArray([d for _, d in pairs]), TextArray(unknown)
            pipe.query(_LOCK_LEARNING, ids, types, data, sids)
            pipe.query(_BUCKETS_LEARNING, ids, types, data, sids)
        else:
            pipe.query(_LOCK, ids)
            pipe.query(_BUCKETS, ids)
        pipe.query(_SESSIONS, TextArray(list(set(session_ids))))
        pipe.query(_ANSWERS, TextArray([k[0] for k in keys]), Int8Array([k[1] for k in keys]))
        if learning:
            pipe.query(_SUBSCRIBERS, types, data)
            pipe.query(_OWNERS, sids)
            locked, held, found, given, learned, owned = await pipe.round_trip()
            for id_type, id_data, subscriber, account in learned:
                store.learn_subscriber(subscribers, id_type, id_data, subscriber, account)
            for session_id, account in owned:
                store.learn_owner(session_id, account)
        else:
            locked, held, found, given = await pipe.round_trip()
        accounts: dict[int, Account] = {}
        mark: tuple[int, int] | None = None
        for row in locked:
            accounts[row[0]] = Account(row[0], row[1], row[2], row[3], row[4], row[5], row[6])
            mark = (int(row[7]), int(row[8] or 0))
        buckets: dict[int, list[Bucket]] = {}
        for row in held:
            buckets.setdefault(row[1], []).append(Bucket(*row))
        loads = self._loads
        sessions = {row[0]: _session(row, loads) for row in found}
        stored = {(row[0], row[1]): (row[2], bytes(row[3])) for row in given}
        if mark is None or mark != store.catalog_mark:
            await self._load_catalog(pipe, mark)
        book = Book(
            catalog=store.catalog, accounts=accounts, buckets=buckets, sessions=sessions, subscribers=subscribers
        )
        # 4. decide
        outcomes, answers = store.decide(book, requests, stored, now)
        # 5. write everything, then COMMIT: one round trip
        statement = write_statement(book_rows(book, answers, now))
        if statement is not None:
            pipe.query(statement[0], *statement[1])
        if book.refused_accounts:
            pipe.query(_EXHAUSTED, now, Int8Array(sorted(book.refused_accounts)))
        pipe.command(b"COMMIT")
        await pipe.round_trip()
        return outcomes

    async def _load_catalog(self, pipe: Pipe, mark: tuple[int, int] | None) -> None:
        """Tariff rows never change, only get added: reload when their count or highest id moved."""
        pipe.query(_TARIFFS)
        (rows,) = await pipe.round_trip()
        if mark is None:
            mark = (len(rows), max((int(row[0]) for row in rows), default=0))
        if mark != self.store.catalog_mark:
            self.store.set_catalog((Tariff(*row) for row in rows), mark)
