"""The OCF's units of work: SQL around the pure credit-control flow, run through ``GroupCommitter``.

``CreditStore.settle_batch(conn, requests)`` settles many CCRs in one transaction:

1. finds the accounts the requests touch (by Subscription-Id, or by their session);
2. locks those account rows, in id order (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's
   ``BEGIN IMMEDIATE`` already serialises writers), so that OCF processes sharing a
   database never decide on the same balance at once;
3. reads the sessions, buckets and stored answers under that lock;
4. answers repeats from the stored answers, and runs ``CreditControl.handle`` for the rest;
5. writes back accounts, buckets, sessions, the ledger and every new answer, a few
   ``executemany`` statements per batch whatever its size.

On PostgreSQL steps 2-3 go to the server as one pipeline, and so do the writes of step 5:
a batch costs two round trips and the COMMIT, however many CCRs it holds.

Every answer is written in the transaction of its effect, so a CCA can only leave once
both are committed, and a repeat of the request, now or after a restart, gets it again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Table, bindparam, delete, func, insert, select, tuple_, update

from charging.db import GroupCommitter
from charging.diameter.constants import CcRequestType
from ocf import models as m
from ocf.control import Book, CreditAnswer, CreditControl, CreditRequest, LedgerEntry, close_session
from ocf.credit import Account, Bucket, Quota, Session
from ocf.rating import Catalog, Tariff

log = logging.getLogger("charging.ocf")

Encoder = Callable[[CreditRequest, CreditAnswer], bytes]

I = TypeVar("I")  # noqa: E741 - item and result of a batch
R = TypeVar("R")


@dataclass(slots=True)
class Outcome:
    """What a settled request answers: the CCA's AVPs (Session-Id first), and whether it was a repeat."""

    body: bytes
    result_code: int
    replay: bool = False
    answer: CreditAnswer | None = None


# -- rows <-> state -------------------------------------------------------------------------------
def account_of(row: Any) -> Account:
    return Account(
        id=row.id,
        currency=row.currency,
        balance=row.balance,
        reserved=row.reserved,
        credit_limit=row.credit_limit,
        blocked=bool(row.blocked),
        low_balance_threshold=row.low_balance_threshold,
    )


def bucket_of(row: Any) -> Bucket:
    return Bucket(
        id=row.id,
        account_id=row.account_id,
        unit=row.unit,
        amount=row.amount,
        reserved=row.reserved,
        rating_group=row.rating_group,
        valid_from=row.valid_from,
        valid_until=row.valid_until,
    )


def tariff_of(row: Any) -> Tariff:
    return Tariff(
        id=row.id,
        name=row.name,
        unit=row.unit,
        price=row.price,
        increment=row.increment,
        setup_fee=row.setup_fee,
        minimum_charge=row.minimum_charge,
        currency=row.currency,
        rating_group=row.rating_group,
        service_identifier=row.service_identifier,
        destination_prefix=row.destination_prefix,
        band_start_minute=row.band_start_minute,
        band_end_minute=row.band_end_minute,
        active=bool(row.active),
        effective_from=row.effective_from,
    )


def quotas_of(raw: str) -> dict[str, Quota]:
    return {key: Quota.from_json(value) for key, value in json.loads(raw).items()}


def quotas_json(quotas: dict[str, Quota]) -> str:
    return json.dumps({key: q.to_json() for key, q in quotas.items()}, separators=(",", ":"))


def session_of(row: Any) -> Session:
    return Session(
        session_id=row.session_id,
        account_id=row.account_id,
        subscriber_id=row.subscriber_id,
        origin_host=row.origin_host,
        origin_realm=row.origin_realm,
        service_context=row.service_context,
        destination=row.destination,
        state=row.state,
        request_number=row.request_number,
        quotas=quotas_of(row.quotas),
        cost=row.cost,
        pending_action=row.pending_action,
        created_at=row.created_at,
        updated_at=row.updated_at,
        expires_at=row.expires_at,
        closed_at=row.closed_at,
    )


def session_row(session: Session) -> dict[str, Any]:
    return {
        "session_id": session.session_id,
        "account_id": session.account_id,
        "subscriber_id": session.subscriber_id,
        "origin_host": session.origin_host,
        "origin_realm": session.origin_realm,
        "service_context": session.service_context,
        "destination": session.destination,
        "state": session.state,
        "request_number": session.request_number,
        "quotas": quotas_json(session.quotas),
        "reserved": session.reserved,
        "cost": session.cost,
        "pending_action": session.pending_action,
        "action_sent_at": None,
        "created_at": session.created_at,
        "updated_at": session.updated_at,
        "expires_at": session.expires_at,
        "closed_at": session.closed_at,
    }


def ledger_row(entry: LedgerEntry) -> dict[str, Any]:
    return {
        "account_id": entry.account_id,
        "at": entry.at,
        "kind": entry.kind,
        "amount": entry.amount,
        "balance_after": entry.balance_after,
        "units": entry.units,
        "unit": entry.unit,
        "bucket_id": entry.bucket_id,
        "uncollected": entry.uncollected,
        "session_id": entry.session_id,
        "request_number": entry.request_number,
        "rating_group": entry.rating_group,
        "service_identifier": entry.service_identifier,
        "note": entry.note,
    }


def lock_accounts(conn: Connection, ids: Iterable[int]) -> dict[int, Account]:
    """The accounts, locked against other writers until COMMIT; always in id order, so never deadlocked."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = conn.execute(
        select(m.accounts).where(m.accounts.c.id.in_(wanted)).order_by(m.accounts.c.id).with_for_update()
    )
    return {row.id: account_of(row) for row in rows}


_TARIFF_MARK = select(func.count(), func.max(m.tariffs.c.id)).select_from(m.tariffs)
_BUCKET_COLUMNS = [c.label(f"b_{c.name}") for c in m.buckets.c]


def lock_accounts_with_buckets(
    conn: Connection, ids: Iterable[int]
) -> tuple[dict[int, Account], dict[int, list[Bucket]], tuple[int, int] | None]:
    """``lock_accounts``, with the accounts' buckets and the tariff mark read in the same statement."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}, {}, None
    count = _TARIFF_MARK.with_only_columns(func.count()).scalar_subquery().label("tariff_count")
    highest = _TARIFF_MARK.with_only_columns(func.max(m.tariffs.c.id)).scalar_subquery().label("tariff_max")
    rows = conn.execute(
        select(m.accounts, *_BUCKET_COLUMNS, count, highest)
        .select_from(m.accounts.outerjoin(m.buckets, m.buckets.c.account_id == m.accounts.c.id))
        .where(m.accounts.c.id.in_(wanted))
        .order_by(m.accounts.c.id)
        .with_for_update(of=m.accounts)
    ).all()
    return _accounts_and_buckets(rows)


def _accounts_and_buckets(
    rows: Sequence[Any],
) -> tuple[dict[int, Account], dict[int, list[Bucket]], tuple[int, int] | None]:
    accounts: dict[int, Account] = {}
    buckets: dict[int, list[Bucket]] = {}
    for row in rows:
        if row.id not in accounts:
            accounts[row.id] = account_of(row)
        if row.b_id is not None:
            buckets.setdefault(row.id, []).append(
                Bucket(
                    id=row.b_id,
                    account_id=row.id,
                    unit=row.b_unit,
                    amount=row.b_amount,
                    reserved=row.b_reserved,
                    rating_group=row.b_rating_group,
                    valid_from=row.b_valid_from,
                    valid_until=row.b_valid_until,
                )
            )
    mark = (int(rows[0].tariff_count), int(rows[0].tariff_max or 0)) if rows else None
    return accounts, buckets, mark


_ACCOUNT_COLUMNS = ", ".join(f"a.{c.name}" for c in m.accounts.c)
_BUCKET_SELECT = ", ".join(f"b.{c.name} AS b_{c.name}" for c in m.buckets.c)
_SESSION_COLUMNS = ", ".join(c.name for c in m.sessions.c)
# PostgreSQL reads of a batch: arrays keep each statement's text (and so its prepared plan) the same.
_PG_LOCK = (
    f"SELECT {_ACCOUNT_COLUMNS}, {_BUCKET_SELECT}, "
    "(SELECT count(*) FROM ocf_tariffs) AS tariff_count, (SELECT max(id) FROM ocf_tariffs) AS tariff_max "
    "FROM ocf_accounts a LEFT JOIN ocf_buckets b ON b.account_id = a.id "
    "WHERE a.id = ANY(%(ids)s) ORDER BY a.id FOR UPDATE OF a"
)
_PG_SESSIONS = f"SELECT {_SESSION_COLUMNS} FROM ocf_sessions WHERE session_id = ANY(%(sids)s)"
_PG_ANSWERS = (
    "SELECT session_id, request_number, result_code, body FROM ocf_answers "
    "WHERE (session_id, request_number) IN (SELECT * FROM unnest(%(sids)s::text[], %(nums)s::bigint[]))"
)


def read_locked_pg(
    conn: Connection, account_ids: Iterable[int], session_ids: Iterable[str], answer_keys: Iterable[tuple[str, int]]
) -> tuple[
    dict[int, Account],
    dict[int, list[Bucket]],
    tuple[int, int] | None,
    dict[str, Session],
    dict[tuple[str, int], tuple[int, bytes]],
]:
    """Lock the accounts, then read sessions and stored answers: three statements in one pipeline, one round trip.

    The server runs them in order, so the reads see whatever was committed before the locks were granted.
    """
    from psycopg.rows import namedtuple_row

    driver: Any = conn.connection.driver_connection
    keys = list(answer_keys)
    wanted = sorted(set(account_ids))
    with driver.pipeline():
        lock = driver.cursor(row_factory=namedtuple_row)
        lock.execute(_PG_LOCK, {"ids": wanted})
        found = driver.cursor(row_factory=namedtuple_row)
        found.execute(_PG_SESSIONS, {"sids": list(session_ids)})
        given = driver.cursor(row_factory=namedtuple_row)
        given.execute(_PG_ANSWERS, {"sids": [k[0] for k in keys], "nums": [k[1] for k in keys]})
    accounts, buckets, mark = _accounts_and_buckets(lock.fetchall())
    sessions = {row.session_id: session_of(row) for row in found.fetchall()}
    stored = {(r.session_id, r.request_number): (r.result_code, bytes(r.body)) for r in given.fetchall()}
    for cursor in (lock, found, given):
        cursor.close()
    return accounts, buckets, mark, sessions, stored


def load_buckets(conn: Connection, account_ids: Iterable[int]) -> dict[int, list[Bucket]]:
    wanted = list(set(account_ids))
    out: dict[int, list[Bucket]] = {}
    if not wanted:
        return out
    for row in conn.execute(select(m.buckets).where(m.buckets.c.account_id.in_(wanted))):
        out.setdefault(row.account_id, []).append(bucket_of(row))
    return out


def load_sessions(conn: Connection, session_ids: Iterable[str]) -> dict[str, Session]:
    wanted = list(set(session_ids))
    if not wanted:
        return {}
    rows = conn.execute(select(m.sessions).where(m.sessions.c.session_id.in_(wanted)))
    return {row.session_id: session_of(row) for row in rows}


@dataclass(slots=True)
class Write:
    """Rows for one table: inserted, or (with ``key``) updated where the key column matches."""

    table: Table
    rows: list[dict[str, Any]]
    key: str | None = None


_PG_SQL: dict[tuple[tuple[str, str | None, tuple[str, ...]], ...], str] = {}
_SQLITE_STATEMENTS: dict[tuple[str, str | None, tuple[str, ...]], Any] = {}


def _pg_part(write: Write, columns: tuple[str, ...], prefix: str, dialect: Any) -> str:
    """One statement for all the rows of a table: one array per column, unnested on the server."""
    arrays = ", ".join(f"%({prefix}{c})b::{write.table.c[c].type.compile(dialect=dialect)}[]" for c in columns)
    names = ", ".join(columns)
    if write.key is None:
        return f"INSERT INTO {write.table.name} ({names}) SELECT * FROM unnest({arrays})"
    sets = ", ".join(f"{c} = v.{c}" for c in columns if c != write.key)
    return (
        f"UPDATE {write.table.name} AS t SET {sets} FROM unnest({arrays}) AS v({names}) "
        f"WHERE t.{write.key} = v.{write.key}"
    )


def _pg_sql(writes: list[Write], dialect: Any) -> str:
    """Every table's statement as one data-modifying WITH: one statement, one round trip, one result."""
    shape = tuple((w.table.name, w.key, tuple(w.rows[0])) for w in writes)
    found = _PG_SQL.get(shape)
    if found is None:
        parts = [
            _pg_part(w, cols, f"w{i}_", dialect) for i, (w, (_, _, cols)) in enumerate(zip(writes, shape, strict=True))
        ]
        found = (
            parts[0]
            if len(parts) == 1
            else "WITH " + ", ".join(f"w{i} AS ({part})" for i, part in enumerate(parts)) + " SELECT 1"
        )
        _PG_SQL[shape] = found
    return found


def _sqlite_statement(write: Write, columns: tuple[str, ...]) -> Any:
    found = _SQLITE_STATEMENTS.get((write.table.name, write.key, columns))
    if found is None:
        if write.key is None:
            found = insert(write.table)
        else:
            found = (
                update(write.table)
                .where(write.table.c[write.key] == bindparam(f"_{write.key}"))
                .values({c: bindparam(c) for c in columns if c != write.key})
            )
        _SQLITE_STATEMENTS[(write.table.name, write.key, columns)] = found
    return found


def execute_writes(conn: Connection, writes: Iterable[Write]) -> None:
    """Write every table's rows; on PostgreSQL all of them in one statement (one round trip)."""
    todo = [w for w in writes if w.rows]
    if not todo:
        return
    if conn.dialect.name != "postgresql":
        for write in todo:
            columns = tuple(write.rows[0])
            rows = write.rows
            if write.key is not None:
                rows = [{**row, f"_{write.key}": row[write.key]} for row in rows]
            conn.execute(_sqlite_statement(write, columns), rows)
        return
    params: dict[str, list[Any]] = {}
    for i, write in enumerate(todo):
        for column in write.rows[0]:
            params[f"w{i}_{column}"] = [row[column] for row in write.rows]
    driver: Any = conn.connection.driver_connection
    with driver.cursor() as cursor:
        cursor.execute(_pg_sql(todo, conn.dialect), params)


def book_writes(book: Book, now: float) -> list[Write]:
    """What the credit-control flow changed, table by table."""
    writes: list[Write] = []
    if book.touched_accounts:
        changed = [book.accounts[i] for i in sorted(book.touched_accounts)]
        rows = [{"id": a.id, "balance": a.balance, "reserved": a.reserved, "updated_at": now} for a in changed]
        writes.append(Write(m.accounts, rows, "id"))
    if book.touched_buckets:
        by_id = {b.id: b for bs in book.buckets.values() for b in bs}
        changed_buckets = [by_id[i] for i in sorted(book.touched_buckets)]
        rows = [{"id": b.id, "amount": b.amount, "reserved": b.reserved} for b in changed_buckets]
        writes.append(Write(m.buckets, rows, "id"))
    new_rows: list[dict[str, Any]] = []
    changed_rows: list[dict[str, Any]] = []
    for sid in sorted(book.touched_sessions):
        session = book.sessions[sid]
        if session.is_new:
            new_rows.append(session_row(session))
            session.is_new = False
        else:
            changed_rows.append(
                {
                    "session_id": session.session_id,
                    "state": session.state,
                    "request_number": session.request_number,
                    "quotas": quotas_json(session.quotas),
                    "reserved": session.reserved,
                    "cost": session.cost,
                    "pending_action": session.pending_action,
                    "updated_at": session.updated_at,
                    "expires_at": session.expires_at,
                    "closed_at": session.closed_at,
                }
            )
    writes.append(Write(m.sessions, new_rows))
    writes.append(Write(m.sessions, changed_rows, "session_id"))
    writes.append(Write(m.transactions, [ledger_row(e) for e in book.ledger]))
    return writes


def write_book(conn: Connection, book: Book, now: float) -> None:
    execute_writes(conn, book_writes(book, now))


class CreditStore:
    """Settles CCRs and runs the OCF's other units of work on the shared database."""

    def __init__(self, control: CreditControl, encode: Encoder) -> None:
        self.control = control
        self.encode = encode
        self._catalog = Catalog()
        self._catalog_mark: tuple[int, int] | None = None
        self.replays = 0
        # Facts that never change once written, kept to save round trips: whose a session is, and
        # which subscriber and account a Subscription-Id names (Subscription-Ids are never moved).
        self._owners: BoundedMap[str, int] = BoundedMap(200_000)
        self._subscriber_ids: BoundedMap[tuple[int, str], tuple[int, int]] = BoundedMap(200_000)

    # -- tariffs and subscribers ------------------------------------------------------------------------
    def _catalog_for(self, conn: Connection, mark: tuple[int, int] | None) -> Catalog:
        """Tariff rows never change, only get added: reload when the count or the highest id moves."""
        if mark is None:
            count, highest = conn.execute(_TARIFF_MARK).one()
            mark = (int(count), int(highest or 0))
        if mark != self._catalog_mark:
            self._catalog = Catalog.of(tariff_of(row) for row in conn.execute(select(m.tariffs)))
            self._catalog_mark = mark
        return self._catalog

    def _subscribers(
        self, conn: Connection, requests: Sequence[CreditRequest]
    ) -> dict[tuple[int, str], tuple[int, int]]:
        wanted = {sub for req in requests if _needs_subscriber(req) for sub in req.subscription_ids}
        known = self._subscriber_ids
        found = {sub: known[sub] for sub in wanted if sub in known}
        missing = wanted - found.keys()
        if missing:
            rows = conn.execute(
                select(
                    m.subscription_ids.c.id_type,
                    m.subscription_ids.c.id_data,
                    m.subscribers.c.id,
                    m.subscribers.c.account_id,
                )
                .join(m.subscribers, m.subscribers.c.id == m.subscription_ids.c.subscriber_id)
                .where(m.subscription_ids.c.id_data.in_({data for _, data in missing}))
            )
            for row in rows:
                key = (row.id_type, row.id_data)
                found[key] = known[key] = (row.id, row.account_id)
        return found

    # -- credit control -----------------------------------------------------------------------------
    def settle_batch(self, conn: Connection, requests: Sequence[CreditRequest], now: float) -> list[Outcome]:
        # 1. which accounts: by Subscription-Id for new sessions and events, by session otherwise
        subscribers = self._subscribers(conn, requests)
        session_ids = {req.session_id for req in requests if req.request_type != CcRequestType.EVENT}
        # Sessions this process has not seen are looked up to find their account; a new one is found by
        # its Subscription-Id instead.
        unknown = [
            r.session_id
            for r in requests
            if r.request_type in (CcRequestType.UPDATE, CcRequestType.TERMINATION) and r.session_id not in self._owners
        ]
        sessions: dict[str, Session] = {}
        if unknown:
            sessions = load_sessions(conn, unknown)
            for session in sessions.values():
                self._owners[session.session_id] = session.account_id
        account_ids = {acc for _, acc in subscribers.values()}
        account_ids.update(self._owners[sid] for sid in session_ids if sid in self._owners)
        # 2. lock them (with their buckets and the tariff mark); 3. read the sessions and the stored answers
        # under the lock, since another process may have changed them until we held it
        answer_keys = {(req.session_id, req.request_number) for req in requests}
        if conn.dialect.name == "postgresql":
            accounts, buckets, mark, sessions, stored = read_locked_pg(conn, account_ids, session_ids, answer_keys)
        else:
            accounts, buckets, mark = lock_accounts_with_buckets(conn, account_ids)
            if len(sessions) < len(session_ids):
                sessions = load_sessions(conn, session_ids)
            stored = self._stored_answers(conn, requests, sessions)
        catalog = self._catalog_for(conn, mark)
        book = Book(catalog=catalog, accounts=accounts, buckets=buckets, sessions=sessions, subscribers=subscribers)
        # 4. decide, in arrival order
        outcomes: list[Outcome] = []
        new_answers: list[dict[str, Any]] = []
        for req in requests:
            key = (req.session_id, req.request_number)
            found = stored.get(key)
            if found is not None:
                self.replays += 1
                log.info(
                    "repeated CCR %s/%d answered from the store",
                    req.session_id,
                    req.request_number,
                    extra={"session_id": req.session_id},
                )
                outcomes.append(Outcome(found[1], found[0], replay=True))
                continue
            answer = self.control.handle(book, req, now)
            body = self.encode(req, answer)
            stored[key] = (answer.result_code, body)
            new_answers.append(
                {
                    "session_id": req.session_id,
                    "request_number": req.request_number,
                    "result_code": answer.result_code,
                    "body": body,
                    "created_at": now,
                }
            )
            outcomes.append(Outcome(body, answer.result_code, answer=answer))
        # 5. write
        for sid in book.touched_sessions:
            self._owners[sid] = book.sessions[sid].account_id
        execute_writes(conn, [*book_writes(book, now), Write(m.answers, new_answers)])
        if book.refused_accounts:
            mark_exhausted(conn, book.refused_accounts, now)
        return outcomes

    def _stored_answers(
        self, conn: Connection, requests: Sequence[CreditRequest], sessions: dict[str, Session]
    ) -> dict[tuple[str, int], tuple[int, bytes]]:
        """Answers already given to requests of this batch: only those that may be repeats are looked up."""
        maybe: set[tuple[str, int]] = set()
        for req in requests:
            session = sessions.get(req.session_id)
            if (
                req.retransmit
                or req.request_type == CcRequestType.EVENT
                or (session is not None and req.request_number <= session.request_number)
                or (session is not None and req.request_type == CcRequestType.INITIAL)
            ):
                maybe.add((req.session_id, req.request_number))
        if not maybe:
            return {}
        rows = conn.execute(
            select(m.answers.c.session_id, m.answers.c.request_number, m.answers.c.result_code, m.answers.c.body).where(
                tuple_(m.answers.c.session_id, m.answers.c.request_number).in_(list(maybe))
            )
        )
        return {(row.session_id, row.request_number): (row.result_code, bytes(row.body)) for row in rows}

    # -- silent sessions ----------------------------------------------------------------------------
    def sweep(self, conn: Connection, now: float, retention: float, limit: int = 500) -> list[Session]:
        """Release the reservations of sessions silent past Tcc, and forget old closed sessions and answers."""
        candidates = conn.execute(
            select(m.sessions.c.session_id, m.sessions.c.account_id)
            .where(m.sessions.c.state == "open", m.sessions.c.expires_at <= now)
            .order_by(m.sessions.c.expires_at)
            .limit(limit)
        ).all()
        expired: list[Session] = []
        if candidates:
            accounts = lock_accounts(conn, (row.account_id for row in candidates))
            sessions = load_sessions(conn, (row.session_id for row in candidates))
            book = Book(catalog=Catalog(), accounts=accounts, buckets=load_buckets(conn, accounts), sessions=sessions)
            for session in sessions.values():
                if session.state != "open" or session.expires_at > now:
                    continue  # answered meanwhile
                account = accounts[session.account_id]
                released = session.reserved
                close_session(book, account, session, now, "expired")
                book.ledger.append(
                    LedgerEntry(
                        account_id=account.id,
                        at=now,
                        kind="release",
                        amount=0,
                        balance_after=account.balance,
                        session_id=session.session_id,
                        note=f"Tcc expired: {released} reserved released",
                    )
                )
                expired.append(session)
            write_book(conn, book, now)
        if retention >= 0:
            cutoff = now - retention
            conn.execute(delete(m.sessions).where(m.sessions.c.state != "open", m.sessions.c.closed_at < cutoff))
            open_ids = select(m.sessions.c.session_id).where(m.sessions.c.state == "open")
            conn.execute(
                delete(m.answers).where(m.answers.c.created_at < cutoff, m.answers.c.session_id.not_in(open_ids))
            )
        return expired


K = TypeVar("K")
V = TypeVar("V")


class BoundedMap(dict[K, V]):
    """A dict that forgets everything when it grows past ``limit``: a cache of facts that never change."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: K, value: V) -> None:
        if len(self) >= self.limit:
            self.clear()
        super().__setitem__(key, value)


def _needs_subscriber(req: CreditRequest) -> bool:
    return req.request_type in (CcRequestType.INITIAL, CcRequestType.EVENT)


def mark_exhausted(conn: Connection, account_ids: Iterable[int], now: float) -> int:
    """Ask for ASR on the open sessions of exhausted accounts that hold no units any more."""
    rows = conn.execute(
        select(m.sessions.c.session_id, m.sessions.c.quotas).where(
            m.sessions.c.account_id.in_(list(account_ids)),
            m.sessions.c.state == "open",
            m.sessions.c.pending_action.is_(None),
        )
    ).all()
    starved = [row.session_id for row in rows if not any(q.granted for q in quotas_of(row.quotas).values())]
    if starved:
        conn.execute(
            update(m.sessions)
            .where(m.sessions.c.session_id.in_(starved))
            .values(pending_action="abort", action_sent_at=None, updated_at=now)
        )
    return len(starved)


class Batcher(Generic[I, R]):
    """Collects items from the event loop and settles them many to a unit of work.

    While a batch is in a writer thread the next one gathers.  With one committer, up to
    two batches are queued on it, so the writer never waits for the loop; with several
    (PostgreSQL), each takes one batch at a time and their database round trips overlap.
    If a batch fails, its items are tried again one by one, so one bad item fails alone.
    """

    def __init__(
        self,
        committers: Sequence[GroupCommitter],
        work: Callable[[Connection, list[I]], list[R]],
        max_batch: int = 512,
    ) -> None:
        self.committers = list(committers)
        self.work = work
        self.max_batch = max_batch
        # One batch per writer when there are several: two batches merged into one transaction would
        # take their account locks in two rounds, and two such transactions could deadlock.
        self.per_writer = 2 if len(self.committers) == 1 else 1
        self._busy = [0] * len(self.committers)
        self._waiting: list[tuple[I, asyncio.Future[R]]] = []
        self._kick_pending = False
        self.last_error: BaseException | None = None  # of the latest batch; None once one succeeds
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: I) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._waiting.append((item, future))
        if not self._kick_pending:
            # Let every request that arrived in this turn of the loop join before a batch leaves.
            self._kick_pending = True
            loop.call_soon(self._kick)
        return await future

    def _kick(self) -> None:
        self._kick_pending = False
        while self._waiting:
            writer = min(range(len(self.committers)), key=self._busy.__getitem__)
            if self._busy[writer] >= self.per_writer:
                return
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
            self._busy[writer] += 1
            task = asyncio.ensure_future(self._settle(writer, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _settle(self, writer: int, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        committer = self.committers[writer]
        try:
            items = [item for item, _ in batch]
            try:
                results = await committer.run(lambda conn: self.work(conn, items))
            except Exception as error:
                self.last_error = error
                if len(batch) == 1:
                    _fail(batch[0][1], error)
                    return
                log.warning("a batch of %d failed (%s); settling its items one by one", len(batch), error)
                for item, future in batch:
                    try:
                        one = await committer.run(lambda conn, item=item: self.work(conn, [item]))  # type: ignore[misc]
                    except Exception as single_error:
                        _fail(future, single_error)
                    else:
                        if not future.done():
                            future.set_result(one[0])
                return
            self.last_error = None
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._busy[writer] -= 1
            self._kick()


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
