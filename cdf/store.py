"""The CDF's units of work on the database, and the writer that batches ACRs into them.

Everything an ACR changes happens in one transaction, committed before its ACA leaves:
the ACR log row (whose primary key makes a retransmission a duplicate, in any instance and
after any restart), the open record of the node's session, and an outbox row for every CDR
the ACR closed.  A batch of ACRs costs a handful of statements, whatever its size:

1. ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` into the ACR log: what comes back is new;
2. ``SELECT ... FOR UPDATE`` of the open records concerned (PostgreSQL: in key order, so that
   instances lock the same way round);
3. the pure assembly, in memory;
4. insert / update / delete of the records, one statement each;
5. one ``UPDATE ... RETURNING`` of this instance's local record sequence counter;
6. one insert of the outbox rows.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Connection, bindparam, delete, insert, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite

from cdf.acr import Acr
from cdf.assembly import Assembler, ClosedRecord, RecordState, build_cdr
from cdf.models import acr_log, lease, outbox, record, sequence
from charging.cdr import Cdr
from charging.db import DatabaseUnavailable, GroupCommitter

log = logging.getLogger("charging.cdf")

RecordKey = tuple[str, str]  # (Origin-Host, Session-Id)


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


class CdfStore:
    """Units of work (functions of a Connection) for the GroupCommitter's writer thread."""

    def __init__(self, assembler: Assembler, cdf_id: str) -> None:
        self.assembler = assembler
        self.cdf_id = cdf_id

    # -- ACRs -----------------------------------------------------------------------------------------------
    def write_acrs(self, conn: Connection, acrs: Sequence[Acr]) -> WriteResult:
        """Store a batch of ACRs: duplicates out, records updated, closed CDRs into the outbox."""
        verdicts: list[Verdict] = [Verdict.DUPLICATE] * len(acrs)
        first_of_key: dict[tuple[str, str, int], int] = {}
        for index, acr in enumerate(acrs):
            first_of_key.setdefault(acr.key, index)
        rows = [
            {
                "session_id": acr.session_id,
                "origin_host": acr.origin_host,
                "record_number": acr.record_number,
                "record_type": int(acr.record_type),
                "received_at": acr.received_at,
                "cdf_id": self.cdf_id,
            }
            for index, acr in enumerate(acrs)
            if first_of_key[acr.key] == index
        ]
        stmt = (
            _insert(conn, acr_log)
            .on_conflict_do_nothing()
            .returning(acr_log.c.session_id, acr_log.c.origin_host, acr_log.c.record_number)
        )
        inserted = {(r[0], r[1], r[2]) for r in conn.execute(stmt, rows)}
        fresh = [i for i, acr in enumerate(acrs) if first_of_key[acr.key] == i and acr.key in inserted]
        if not fresh:
            return WriteResult(verdicts)
        keys = sorted({(acrs[i].origin_host, acrs[i].session_id) for i in fresh})
        states = self._load(conn, keys)
        existed = set(states)
        closed: list[ClosedRecord] = []
        failed: list[Acr] = []
        for index in fresh:
            acr = acrs[index]
            key = (acr.origin_host, acr.session_id)
            try:
                outcome = self.assembler.apply(states.get(key), acr)
            except Exception:
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
            closed.extend(outcome.closed)
            verdicts[index] = Verdict.STORED
        if failed:
            conn.execute(
                delete(acr_log).where(
                    tuple_(acr_log.c.session_id, acr_log.c.origin_host, acr_log.c.record_number).in_(
                        [a.key for a in failed]
                    )
                )
            )
        cdrs = self._persist(conn, states, existed, closed, now=max(acrs[i].received_at for i in fresh))
        return WriteResult(verdicts, cdrs)

    # -- the clock ------------------------------------------------------------------------------------------
    def sweep(self, conn: Connection, now: float, limit: int) -> tuple[int, list[Cdr]]:
        """Close what the clock says is due by ``now``: silent sessions (incomplete) and over-long records.

        Returns how many due records it looked at (``limit`` means: call again) and the CDRs it closed.
        """
        stmt = select(record.c.origin_host, record.c.session_id, record.c.state).where(record.c.due_at <= now)
        stmt = stmt.order_by(record.c.due_at).limit(limit)
        if conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)  # another instance's sweeper takes the others
        states: dict[RecordKey, RecordState | None] = {
            (r[0], r[1]): RecordState.from_json(r[2]) for r in conn.execute(stmt)
        }
        existed = set(states)
        closed: list[ClosedRecord] = []
        for key, state in list(states.items()):
            assert state is not None
            outcome = self.assembler.on_timer(state, now)
            states[key] = outcome.state
            closed.extend(outcome.closed)
            for item in outcome.closed:
                log.info(
                    "record of %s closed by the CDF: %s",
                    key[0],
                    item.cause.value,
                    extra={"session_id": key[1], "icid": item.state.icid},
                )
        return len(existed), self._persist(conn, states, existed, closed, now=now)

    def purge(self, conn: Connection, before: float, *, marks: Sequence[str]) -> tuple[int, int]:
        """Delete ACR log rows older than ``before``, and CDRs as old that every sink in ``marks`` (outbox
        column names) has delivered; returns how many of each."""
        acrs = conn.execute(delete(acr_log).where(acr_log.c.received_at < before)).rowcount
        delivered: list[ColumnElement[bool]] = [outbox.c[name].is_not(None) for name in marks]
        cdrs = conn.execute(delete(outbox).where(outbox.c.created_at < before, *delivered)).rowcount
        return acrs, cdrs

    # -- shared -----------------------------------------------------------------------------------------------
    def _load(self, conn: Connection, keys: list[RecordKey]) -> dict[RecordKey, RecordState | None]:
        stmt = (
            select(record.c.origin_host, record.c.session_id, record.c.state)
            .where(tuple_(record.c.origin_host, record.c.session_id).in_(keys))
            .order_by(record.c.origin_host, record.c.session_id)
            .with_for_update()  # rendered on PostgreSQL only; SQLite holds the database lock already
        )
        return {(r[0], r[1]): RecordState.from_json(r[2]) for r in conn.execute(stmt)}

    def _persist(
        self,
        conn: Connection,
        states: dict[RecordKey, RecordState | None],
        existed: set[RecordKey],
        closed: list[ClosedRecord],
        now: float,
    ) -> list[Cdr]:
        gone = [key for key, state in states.items() if state is None and key in existed]
        if gone:
            conn.execute(delete(record).where(tuple_(record.c.origin_host, record.c.session_id).in_(gone)))
        new_rows: list[dict[str, Any]] = []
        changed_rows: list[dict[str, Any]] = []
        for key, state in states.items():
            if state is None:
                continue
            row = {
                "icid": state.icid,
                "state": state.to_json(),
                "opened_at": state.opened_at,
                "last_acr_at": state.last_acr_at,
                "due_at": self.assembler.due_at(state),
                "updated_by": self.cdf_id,
            }
            if key in existed:
                changed_rows.append({"b_host": key[0], "b_session": key[1], **row})
            else:
                new_rows.append({"origin_host": key[0], "session_id": key[1], "version": 1, **row})
        if new_rows:
            conn.execute(insert(record), new_rows)
        if changed_rows:
            conn.execute(
                update(record)
                .where(record.c.origin_host == bindparam("b_host"), record.c.session_id == bindparam("b_session"))
                .values(
                    icid=bindparam("icid"),
                    state=bindparam("state"),
                    opened_at=bindparam("opened_at"),
                    last_acr_at=bindparam("last_acr_at"),
                    due_at=bindparam("due_at"),
                    updated_by=bindparam("updated_by"),
                    version=record.c.version + 1,
                ),
                changed_rows,
            )
        if not closed:
            return []
        first = self._reserve_local_numbers(conn, len(closed))
        cdrs = [build_cdr(item, first + n, self.cdf_id) for n, item in enumerate(closed)]
        conn.execute(
            insert(outbox),
            [
                {
                    "cdr_id": cdr.cdr_id,
                    "partition_key": cdr.partition_key,
                    "icid": cdr.ims_charging_identifier,
                    "session_id": cdr.session_id,
                    "node_address": cdr.node_address,
                    "payload": cdr.to_json().decode(),
                    "created_at": now,
                }
                for cdr in cdrs
            ],
        )
        return cdrs

    def _reserve_local_numbers(self, conn: Connection, count: int) -> int:
        """The first of ``count`` consecutive local record sequence numbers of this instance (from 1, no gaps)."""
        stmt = (
            update(sequence)
            .where(sequence.c.cdf_id == self.cdf_id)
            .values(last_value=sequence.c.last_value + count)
            .returning(sequence.c.last_value)
        )
        last = conn.execute(stmt).scalar()
        if last is None:
            # The instance's first CDR: create its counter (another process of the same id may race us).
            conn.execute(_insert(conn, sequence).values(cdf_id=self.cdf_id, last_value=0).on_conflict_do_nothing())
            last = conn.execute(stmt).scalar_one()
        return int(last) - count + 1


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

        def unit(conn: Connection) -> WriteResult:
            nonlocal took
            if not took:  # the GroupCommitter may run a unit again, alone, after its batch failed
                taken.extend(self._take())
                took = True
            return self.store.write_acrs(conn, [w.acr for w in taken])

        try:
            result = await self.committer.run(unit)
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
