"""The OCF's units of work: SQL around the pure credit-control flow.

``CreditStore`` settles a batch of CCRs in one transaction:

1. finds the accounts the requests touch (by Subscription-Id, or by their session);
2. locks those account rows, in id order (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's
   ``BEGIN IMMEDIATE`` already serialises writers), so that OCF processes sharing a
   database never decide on the same balance at once;
3. reads the buckets, sessions and stored answers under that lock, each in a statement of
   its own that starts after the lock was granted, so it sees what the lock holder committed;
4. answers repeats from the stored answers, and runs ``CreditControl.handle`` for the rest
   (``CreditStore.decide``, shared by both ways of talking to the database);
5. writes back accounts, buckets, sessions, the ledger and every new answer.

There are two ways to run it.  ``CreditStore.settle_batch(conn, requests, now)`` is a unit of
work for ``GroupCommitter`` (SQLAlchemy, in a writer thread): SQLite uses it.  On PostgreSQL
with psycopg, ``ocf.pg.PgSettler`` runs the same steps on the event loop over a connection of
its own, in two round trips a batch.

Every answer is written in the transaction of its effect, so a CCA can only leave once
both are committed, and a repeat of the request, now or after a restart, gets it again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Table, bindparam, delete, func, insert, select, tuple_, update

from charging.db import DatabaseUnavailable, GroupCommitter
from charging.diameter.constants import CcRequestType
from ocf import models as m
from ocf.control import Book, CreditAnswer, CreditControl, CreditRequest, LedgerEntry, release_session
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


def _literal(value: int | None) -> str:
    """An int, a bool or None as a JSON literal."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(int(value))


def quotas_json(quotas: dict[str, Quota]) -> str:
    """What ``json.dumps`` gives of the quotas' ``to_json`` (compact), written out directly: a third of the time,
    once per session per CCR.  Keys (``quota_key``) and units (``ocf.rating.UNIT_*``) are plain words that need
    no escaping."""
    return (
        "{"
        + ",".join(
            f'"{key}":{{"rg":{_literal(q.rating_group)},"si":{_literal(q.service_identifier)},"unit":"{q.unit}",'
            f'"granted":{_literal(q.granted)},"money":{_literal(q.money)},"bucket":{_literal(q.bucket_id)},'
            f'"tariff":{_literal(q.tariff_id)},"used":{_literal(q.used)},"charged":{_literal(q.charged)},'
            f'"setup":{_literal(q.setup_in_segment)},"final":{_literal(q.final)}}}'
            for key, q in quotas.items()
        )
        + "}"
    )


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


def load_buckets(conn: Connection, account_ids: Iterable[int]) -> dict[int, list[Bucket]]:
    wanted = list(set(account_ids))
    out: dict[int, list[Bucket]] = {}
    if not wanted:
        return out
    for row in conn.execute(select(m.buckets).where(m.buckets.c.account_id.in_(wanted))):
        out.setdefault(row.account_id, []).append(bucket_of(row))
    return out


def open_session_state(conn: Connection) -> tuple[int, int, dict[str, int]]:
    """Open sessions, the money their reservations hold, and sessions waiting for an ASR or RAR, by action."""
    s = m.sessions.c
    opened, held = conn.execute(
        select(func.count(), func.coalesce(func.sum(s.reserved), 0)).where(s.state == "open")
    ).one()
    pending = conn.execute(
        select(s.pending_action, func.count()).where(s.pending_action.is_not(None)).group_by(s.pending_action)
    )
    return int(opened), int(held), {str(action): int(count) for action, count in pending}


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
    @property
    def catalog_mark(self) -> tuple[int, int] | None:
        return self._catalog_mark

    def set_catalog(self, tariffs: Iterable[Tariff], mark: tuple[int, int]) -> None:
        self._catalog = Catalog.of(tariffs)
        self._catalog_mark = mark

    def _catalog_for(self, conn: Connection) -> Catalog:
        """Tariff rows never change, only get added: reload when the count or the highest id moves."""
        count, highest = conn.execute(_TARIFF_MARK).one()
        mark = (int(count), int(highest or 0))
        if mark != self._catalog_mark:
            self.set_catalog((tariff_of(row) for row in conn.execute(select(m.tariffs))), mark)
        return self._catalog

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def known_subscribers(
        self, requests: Sequence[CreditRequest]
    ) -> tuple[dict[tuple[int, str], tuple[int, int]], set[tuple[int, str]]]:
        """The Subscription-Ids of new sessions and events: (subscriber, account) of those known, and the rest."""
        known = self._subscriber_ids
        found: dict[tuple[int, str], tuple[int, int]] = {}
        missing: set[tuple[int, str]] = set()
        for req in requests:
            if req.request_type == CcRequestType.INITIAL or req.request_type == CcRequestType.EVENT:
                for sub in req.subscription_ids:
                    hit = known.get(sub)
                    if hit is None:
                        missing.add(sub)
                    else:
                        found[sub] = hit
        return found, missing

    def learn_subscriber(
        self, found: dict[tuple[int, str], tuple[int, int]], id_type: int, id_data: str, subscriber: int, account: int
    ) -> None:
        key = (id_type, id_data)
        found[key] = self._subscriber_ids[key] = (subscriber, account)

    def unknown_sessions(self, requests: Sequence[CreditRequest]) -> list[str]:
        """Sessions of updates and terminations whose account this process does not know yet."""
        owners = self._owners
        return [
            r.session_id
            for r in requests
            if (r.request_type == CcRequestType.UPDATE or r.request_type == CcRequestType.TERMINATION)
            and r.session_id not in owners
        ]

    def learn_owner(self, session_id: str, account_id: int) -> None:
        self._owners[session_id] = account_id

    def accounts_of(self, subscribers: dict[tuple[int, str], tuple[int, int]], session_ids: Iterable[str]) -> list[int]:
        """The accounts a batch must lock, sorted: those of its subscribers and of its sessions."""
        owners = self._owners
        wanted = {account for _, account in subscribers.values()}
        wanted.update(owners[sid] for sid in session_ids if sid in owners)
        return sorted(wanted)

    def _subscribers(
        self, conn: Connection, requests: Sequence[CreditRequest]
    ) -> dict[tuple[int, str], tuple[int, int]]:
        found, missing = self.known_subscribers(requests)
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
                self.learn_subscriber(found, row.id_type, row.id_data, row.id, row.account_id)
        return found

    # -- credit control -----------------------------------------------------------------------------
    def settle_batch(self, conn: Connection, requests: Sequence[CreditRequest], now: float) -> list[Outcome]:
        """The batch as a unit of work on a SQLAlchemy connection (``GroupCommitter``); SQLite's way."""
        # 1. which accounts: by Subscription-Id for new sessions and events, by session otherwise
        subscribers = self._subscribers(conn, requests)
        unknown = self.unknown_sessions(requests)
        if unknown:
            owned = select(m.sessions.c.session_id, m.sessions.c.account_id)
            for row in conn.execute(owned.where(m.sessions.c.session_id.in_(set(unknown)))):
                self.learn_owner(row.session_id, row.account_id)
        session_ids = {req.session_id for req in requests if req.request_type != CcRequestType.EVENT}
        # 2. lock them; 3. read buckets, sessions and stored answers under the lock, since another process
        # may have changed them until we held it
        accounts = lock_accounts(conn, self.accounts_of(subscribers, session_ids))
        buckets = load_buckets(conn, accounts)
        sessions = load_sessions(conn, session_ids)
        stored = self._stored_answers(conn, requests)
        catalog = self._catalog_for(conn)
        book = Book(catalog=catalog, accounts=accounts, buckets=buckets, sessions=sessions, subscribers=subscribers)
        # 4. decide, in arrival order; 5. write
        outcomes, new_answers = self.decide(book, requests, stored, now)
        rows = [
            {"session_id": sid, "request_number": num, "result_code": code, "body": body, "created_at": now}
            for sid, num, code, body in new_answers
        ]
        execute_writes(conn, [*book_writes(book, now), Write(m.answers, rows)])
        if book.refused_accounts:
            mark_exhausted(conn, book.refused_accounts, now)
        return outcomes

    def decide(
        self,
        book: Book,
        requests: Sequence[CreditRequest],
        stored: dict[tuple[str, int], tuple[int, bytes]],
        now: float,
    ) -> tuple[list[Outcome], list[tuple[str, int, int, bytes]]]:
        """Step 4: the answer to each request, in arrival order, with the answers to store.

        ``stored`` holds the answers already given (looked up under the account locks): a request
        found there is a repeat and gets that answer again, whatever its T flag says.
        """
        outcomes: list[Outcome] = []
        new_answers: list[tuple[str, int, int, bytes]] = []
        handle = self.control.handle
        encode = self.encode
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
            answer = handle(book, req, now)
            body = encode(req, answer)
            code = answer.result_code
            stored[key] = (code, body)
            new_answers.append((req.session_id, req.request_number, code, body))
            outcomes.append(Outcome(body, code, answer=answer))
        owners = self._owners
        for sid in book.touched_sessions:
            owners[sid] = book.sessions[sid].account_id
        return outcomes, new_answers

    def _stored_answers(
        self, conn: Connection, requests: Sequence[CreditRequest]
    ) -> dict[tuple[str, int], tuple[int, bytes]]:
        """Answers already given to requests of this batch, by (Session-Id, CC-Request-Number)."""
        keys = list({(req.session_id, req.request_number) for req in requests})
        rows = conn.execute(
            select(m.answers.c.session_id, m.answers.c.request_number, m.answers.c.result_code, m.answers.c.body).where(
                tuple_(m.answers.c.session_id, m.answers.c.request_number).in_(keys)
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
                release_session(book, accounts[session.account_id], session, now, "expired", "Tcc expired")
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


Settle = Callable[[list[I]], Awaitable[list[R]]]


def committed(committer: GroupCommitter, work: Callable[[Connection, list[I]], list[R]]) -> Settle[I, R]:
    """A batch settled as one unit of work of ``committer`` (in its writer thread, resolved after COMMIT)."""

    def settle(items: list[I]) -> Awaitable[list[R]]:
        return committer.run(lambda conn: work(conn, items))

    return settle


class Batcher(Generic[I, R]):
    """Collects items from the event loop and settles them many to a transaction.

    ``writers`` are coroutines that settle a batch each, one transaction per call; while
    a batch is being settled the next one gathers.  ``per_writer`` is how many batches one
    writer may hold at once: 2 for a ``GroupCommitter`` (its thread then never waits for the
    loop), 1 for a writer that owns one connection.  With several writers their database
    round trips overlap.  If a batch fails, its items are tried again one by one, so one bad
    item fails alone; a database out of reach fails the whole batch at once.
    """

    def __init__(self, writers: Sequence[Settle[I, R]], max_batch: int = 512, per_writer: int = 1) -> None:
        self.writers = list(writers)
        self.max_batch = max_batch
        # One batch per writer when there are several: two batches merged into one transaction would
        # take their account locks in two rounds, and two such transactions could deadlock.
        self.per_writer = per_writer if len(self.writers) == 1 else 1
        self._busy = [0] * len(self.writers)
        self._waiting: list[tuple[I, asyncio.Future[R]]] = []
        self._kick_pending = False
        self.last_error: BaseException | None = None  # of the latest batch; None once one succeeds
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, item: I) -> asyncio.Future[R]:
        """The item's result, once the transaction that settled it committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._waiting.append((item, future))
        if not self._kick_pending:
            # Let every request that arrived in this turn of the loop join before a batch leaves.
            self._kick_pending = True
            loop.call_soon(self._kick)
        return future

    async def drain(self) -> None:
        """Wait until every batch given to a writer, and every item waiting, is settled."""
        while self._tasks or self._waiting:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            else:
                await asyncio.sleep(0)

    def _kick(self) -> None:
        self._kick_pending = False
        busy = self._busy
        while self._waiting:
            writer = min(range(len(busy)), key=busy.__getitem__)
            if busy[writer] >= self.per_writer:
                return
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
            busy[writer] += 1
            task = asyncio.ensure_future(self._settle(writer, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _settle(self, writer: int, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        settle = self.writers[writer]
        try:
            items = [item for item, _ in batch]
            try:
                results = await settle(items)
            except Exception as error:
                self.last_error = error
                if len(batch) == 1 or isinstance(error, DatabaseUnavailable):
                    for _, future in batch:
                        _fail(future, error)
                    return
                log.warning("a batch of %d failed (%s); settling its items one by one", len(batch), error)
                for item, future in batch:
                    try:
                        one = await settle([item])
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
            busy = self._busy
            busy[writer] -= 1
            self._kick()


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
